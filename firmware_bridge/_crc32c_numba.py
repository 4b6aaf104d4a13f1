"""The numba CRC-32C kernel (imported only when numba is installed; see crc32c.py)."""

from __future__ import annotations

import numpy as np
from numba import njit

from firmware_bridge.crc32c_tables import slicing_tables

_TABLES = slicing_tables()
_INIT = 0xFFFFFFFF  # equal to XOROUT


@njit(cache=True, nogil=True)
def _crc_slices(tables: np.ndarray, data: np.ndarray, start: int, stop: int, register: int) -> int:
    """Raw register (no init/xorout) after feeding data[start:stop], slicing-by-8."""
    reg = np.uint32(register)
    i = start
    while i + 8 <= stop:
        low = reg ^ (
            np.uint32(data[i])
            | (np.uint32(data[i + 1]) << 8)
            | (np.uint32(data[i + 2]) << 16)
            | (np.uint32(data[i + 3]) << 24)
        )
        reg = (
            tables[7, low & 0xFF]
            ^ tables[6, (low >> 8) & 0xFF]
            ^ tables[5, (low >> 16) & 0xFF]
            ^ tables[4, low >> 24]
            ^ tables[3, data[i + 4]]
            ^ tables[2, data[i + 5]]
            ^ tables[1, data[i + 6]]
            ^ tables[0, data[i + 7]]
        )
        i += 8
    while i < stop:
        reg = (reg >> 8) ^ tables[0, (reg ^ data[i]) & 0xFF]
        i += 1
    return reg


def crc32c_range(data: np.ndarray, start: int, stop: int, register: int) -> int:
    """Raw register after ``data[start:stop]`` (uint8 array), starting from ``register``."""
    return int(_crc_slices(_TABLES, data, start, stop, register))


def crc32c_slice(data: np.ndarray, start: int, stop: int) -> int:
    """CRC-32C of ``data[start:stop]`` (uint8 array): init and xorout applied."""
    return int(_crc_slices(_TABLES, data, start, stop, _INIT)) ^ _INIT
