"""CRC-32C (Castagnoli), as used by iSCSI, ext4 and this wire protocol.

Parameters (Rocksoft model): width 32, poly 0x1EDC6F41 (reflected 0x82F63B78),
init 0xFFFFFFFF, refin true, refout true, xorout 0xFFFFFFFF, check("123456789") 0xE3069283.

Two implementations give the same numbers:

- ``numba``: a slicing-by-8 kernel, compiled on first use (numba is imported lazily; the
  lungwatch distribution depends on it, ``firmware_bridge`` alone does not);
- ``numpy``: position tables. CRC is linear over GF(2), so the CRC register after a block is
  the XOR over its bytes of ``POSITION_TABLE[distance to the block's end, byte]``; one gather
  and one XOR-reduction per block, no Python loop over bytes.

:func:`crc32c` picks numba when it can be imported, else numpy (:data:`BACKEND` says which).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from firmware_bridge.crc32c_tables import BYTE_VALUES, POLY_REFLECTED, XOROUT, byte_table

CHECK_VALUE = 0xE3069283  # crc32c(b"123456789")
BLOCK_BYTES = 2048  # numpy backend: position-table rows (2048 x 256 x 4 B = 2 MiB)


def crc32c_bitwise(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """The definition, one bit at a time (the reference the fast versions are tested against).

    ``crc`` is a previous result to continue from (0 to start)."""
    register = crc ^ XOROUT
    for byte in bytes(data):
        register ^= byte
        for _ in range(8):
            register = (register >> 1) ^ (POLY_REFLECTED if register & 1 else 0)
    return register ^ XOROUT


@functools.lru_cache(maxsize=1)
def _position_table() -> tuple[np.ndarray, np.ndarray]:
    """(table, distances): table[d, v] is byte v followed by d zero bytes; distances is
    BLOCK_BYTES-1 .. 0 so that ``distances[-n:]`` gives each of n bytes its distance."""
    table = np.empty((BLOCK_BYTES, BYTE_VALUES), dtype=np.uint32)
    table[0] = byte_table()
    for d in range(1, BLOCK_BYTES):
        previous = table[d - 1]
        table[d] = (previous >> np.uint32(8)) ^ table[0][previous & np.uint32(0xFF)]
    return table, np.arange(BLOCK_BYTES - 1, -1, -1, dtype=np.intp)


def crc32c_numpy(data: bytes | bytearray | memoryview | np.ndarray, crc: int = 0) -> int:
    """CRC-32C with NumPy position tables (see the module docstring)."""
    table, distances = _position_table()
    view = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    register = crc ^ XOROUT
    for start in range(0, view.size, BLOCK_BYTES):
        block = view[start : start + BLOCK_BYTES]
        n = block.size
        head = min(n, 4)
        # the register enters the block as if XORed into its first (up to) 4 bytes
        head_bytes = block[:head] ^ np.frombuffer(register.to_bytes(4, "little")[:head], np.uint8)
        dist = distances[BLOCK_BYTES - n :]
        raw = int(np.bitwise_xor.reduce(table[dist[head:], block[head:]])) if n > head else 0
        raw ^= int(np.bitwise_xor.reduce(table[dist[:head], head_bytes]))
        register = raw ^ (register >> (8 * n) if n < 4 else 0)
    return register ^ XOROUT


def _numba_kernel() -> Callable[[np.ndarray, int, int, int], int]:
    """Compile (or load from cache) the slicing-by-8 kernel; raises ImportError without numba."""
    from firmware_bridge import _crc32c_numba

    for warm_up in (np.zeros(1, np.uint8), np.frombuffer(b"\0", np.uint8)):  # load both
        _crc32c_numba.crc32c_range(warm_up, 0, 1, 0)  # variants now, not on the first frame
    return _crc32c_numba.crc32c_range


@functools.lru_cache(maxsize=1)
def _select_backend() -> tuple[str, Callable[[np.ndarray, int, int, int], int] | None]:
    try:
        return "numba", _numba_kernel()
    except ImportError:
        return "numpy", None


def backend() -> str:
    """``"numba"`` or ``"numpy"``: the implementation :func:`crc32c` uses."""
    return _select_backend()[0]


def range_function(name: str = "auto") -> Callable[[np.ndarray, int, int], int]:
    """``f(data, start, stop)``: CRC-32C of the uint8 array slice ``data[start:stop]`` with
    backend ``name`` (``"auto"``: :func:`backend`); the decoder calls it once per frame."""
    if name == "numpy" or (name == "auto" and backend() == "numpy"):
        return lambda data, start, stop: crc32c_numpy(data[start:stop])
    from firmware_bridge._crc32c_numba import crc32c_slice

    return crc32c_slice


def crc32c(data: bytes | bytearray | memoryview | np.ndarray, crc: int = 0) -> int:
    """CRC-32C of ``data`` (continue from a previous result by passing it as ``crc``)."""
    kernel = _select_backend()[1]
    if kernel is None:
        return crc32c_numpy(data, crc)
    view = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    return int(kernel(view, 0, view.size, crc ^ XOROUT)) ^ XOROUT
