"""Errors of the firmware bridge. The decoder never raises on bad input (it counts); these are
for callers asking for something impossible: a bad URL, a port that cannot be opened, a frame
that cannot be encoded. ``edge`` wraps them in its own errors."""

from __future__ import annotations


class BridgeError(Exception):
    """Base class of every error the firmware bridge raises on purpose."""


class ProtocolError(BridgeError, ValueError):
    """A frame cannot be encoded as asked (the message names the field and the value)."""


class UrlError(BridgeError, ValueError):
    """A link URL is malformed or names an unknown transport or option."""


class TransportError(BridgeError, OSError):
    """A transport cannot be opened (the message names the URL and the reason)."""


class SettingError(BridgeError, ValueError):
    """A receiver or emulator setting is out of range (the message names it)."""
