"""CRC-32C's parameters and byte tables, shared by :mod:`firmware_bridge.crc32c` (the NumPy
version and the backend choice) and the numba kernels (``_crc32c_numba``, ``_scan_numba``)."""

from __future__ import annotations

import functools

import numpy as np

POLY_REFLECTED = 0x82F63B78
INIT = 0xFFFFFFFF
XOROUT = 0xFFFFFFFF
SLICES = 8  # numba backend: bytes per step (slicing-by-8)
BYTE_VALUES = 256


@functools.lru_cache(maxsize=1)
def byte_table() -> np.ndarray:
    """uint32 (256,): the register after feeding one byte value to a zero register."""
    register = np.arange(BYTE_VALUES, dtype=np.uint32)
    for _ in range(8):
        low_bit = register & np.uint32(1)
        register = (register >> np.uint32(1)) ^ (low_bit * np.uint32(POLY_REFLECTED))
    return register


@functools.lru_cache(maxsize=1)
def slicing_tables() -> np.ndarray:
    """uint32 (8, 256): row k is the effect of a byte followed by k zero bytes."""
    tables = np.empty((SLICES, BYTE_VALUES), dtype=np.uint32)
    tables[0] = byte_table()
    for k in range(1, SLICES):
        previous = tables[k - 1]
        tables[k] = (previous >> np.uint32(8)) ^ tables[0][previous & np.uint32(0xFF)]
    return tables
