"""Which hosts never leave this machine: one answer for the broker rule (``edge.sinks``), the
ward view's bind address (``wardview``) and the stethoscope bridge's listeners
(``firmware_bridge``). Standard library only, so every package may import it."""

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
