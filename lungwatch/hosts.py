"""Which hosts never leave this machine, one answer for ``edge.sinks``, ``wardview`` and
``firmware_bridge``; standard library only, so every package may import it."""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address; any other name may resolve to anything."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
