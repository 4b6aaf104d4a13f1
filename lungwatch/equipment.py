"""A device's IEEE EUI-64, as IHE PCD messages name equipment (MSH-3, OBX-18:
``...^<16 hex digits>^EUI-64``). A MAC becomes one by the IEEE's rule: FFFE between its
organisation's and its own three octets (docs/gateway.md, "Equipment")."""

from __future__ import annotations

import re
import uuid

_HEX = re.compile(r"[0-9A-F]+")
_MULTICAST_BIT = 1 << 40  # of a 48-bit node id: set where uuid.getnode() made one up


def eui64(text: str) -> str:
    """``text`` (an EUI-64 or a MAC, ``:``/``-`` allowed) as 16 upper-case hex digits."""
    digits = str(text).strip().upper().replace(":", "").replace("-", "")
    if not _HEX.fullmatch(digits) or len(digits) not in (12, 16):
        raise ValueError(f"{text!r} is not an EUI-64 (16 hex digits) or a MAC (12 hex digits)")
    if int(digits, 16) == 0:
        raise ValueError(f"{text!r} is all zeros, not an equipment's identifier")
    return digits[:6] + "FFFE" + digits[6:] if len(digits) == 12 else digits


def host_eui64() -> str:
    """This machine's EUI-64 from its MAC; "" where it has none (uuid.getnode() made one up)."""
    node = uuid.getnode()
    if node & _MULTICAST_BIT:
        return ""
    return eui64(f"{node:012X}")
