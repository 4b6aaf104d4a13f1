"""The compiled twin of ``parser.scan_python`` (same rows and counters, tested equal on arbitrary
bytes); imported only when numba is installed. CRC-32C is slicing-by-8 (compiled code cannot call
``google_crc32c``), with tables taken from ``google_crc32c`` and tested equal to it."""

from __future__ import annotations

import google_crc32c
import numpy as np
from numba import njit

from firmware_bridge.protocol import (
    CRC_BYTES,
    FLAG_AUTH,
    HEADER_BYTES,
    HEADER_V2_BYTES,
    INFO,
    KNOWN_FLAGS,
    MAX_MODEL_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_PAYLOAD_V2_BYTES,
    MAX_SAMPLE_RATE_HZ,
    STATUS,
    TAG_BYTES,
    VERSION,
    VERSION_2,
)

# counters, in this order, in the ``counts`` array
SKIPPED, BAD_CRC, BAD_HEADER, BAD_LENGTH, TRUNCATED = range(5)
N_COUNTS = 5
ROW_FIELDS = 14  # a row's fields: the parser module's docstring
_MAGIC0, _MAGIC1 = 0x4C, 0x57  # b"LW"
_STATUS_BYTES, _INFO_MIN, _INFO_MAX = STATUS.size, INFO.size, INFO.size + MAX_MODEL_BYTES
_INIT = 0xFFFFFFFF  # CRC-32C's init, equal to its xorout
# uint32 (8, 256): row k, column v is the register after byte v and k zero bytes, from zero
_TABLES = np.array(
    [
        [google_crc32c.extend(_INIT, bytes([v]) + bytes(k)) ^ _INIT for v in range(256)]
        for k in range(8)
    ],
    dtype=np.uint32,
)


@njit(cache=True, nogil=True)
def _u(buf: np.ndarray, at: int, width: int) -> np.uint64:
    value = np.uint64(0)
    for k in range(width):
        value |= np.uint64(buf[at + k]) << np.uint64(8 * k)
    return value


@njit(cache=True, nogil=True)
def crc32c(tables: np.ndarray, data: np.ndarray, start: int, stop: int) -> np.uint32:
    """CRC-32C of ``data[start:stop]`` (uint8), slicing-by-8 with ``tables`` (``_TABLES``)."""
    reg = np.uint32(_INIT)
    i = start
    while i + 8 <= stop:
        low = reg ^ np.uint32(_u(data, i, 4))
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
    return reg ^ np.uint32(_INIT)


@njit(cache=True, nogil=True)
def _header_problem(buf: np.ndarray, s: int) -> int:
    """0 ok, 1 bad header, 2 bad length (same order of checks as protocol.header_problem)."""
    version, ftype, flags, fmt = buf[s + 2], buf[s + 3], buf[s + 4], buf[s + 5]
    nbytes, count, rate = _u(buf, s + 6, 2), _u(buf, s + 14, 2), _u(buf, s + 28, 4)
    if (version != VERSION and version != VERSION_2) or ftype < 1 or ftype > 4:
        return 1
    if (flags & ~KNOWN_FLAGS) != 0 or (version == VERSION_2 and (flags & FLAG_AUTH) == 0):
        return 1
    if rate < 1 or rate > MAX_SAMPLE_RATE_HZ:
        return 1
    if ftype == 1:
        if fmt < 1 or fmt > 3:
            return 1
        width = 2 if fmt == 1 else (3 if fmt == 2 else 4)
        ok = count >= 1 and nbytes == count * width
    elif fmt != 0 or count != 0:
        return 1
    elif ftype == 2:
        ok = nbytes == 0
    elif ftype == 4:
        ok = nbytes == _STATUS_BYTES
    else:
        ok = _INFO_MIN <= nbytes <= _INFO_MAX
    limit = MAX_PAYLOAD_BYTES if version == VERSION else MAX_PAYLOAD_V2_BYTES
    return 0 if ok and nbytes <= limit else 2


@njit(cache=True, nogil=True)
def _candidate(
    buf: np.ndarray,
    start: int,
    end: int,
    final: bool,
    tables: np.ndarray,
    row: np.ndarray,
    counts: np.ndarray,
) -> int:
    """Bytes to consume at a magic: 0 wait, 1 not a frame (counted), -1 bad CRC, else the frame
    size (``row`` filled)."""
    if end - start < HEADER_BYTES:
        if not final:
            return 0
        counts[TRUNCATED] += 1
        return 1
    problem = _header_problem(buf, start)
    if problem != 0:
        counts[BAD_HEADER if problem == 1 else BAD_LENGTH] += 1
        return 1
    nbytes, flags, version = int(_u(buf, start + 6, 2)), buf[start + 4], buf[start + 2]
    header_bytes = HEADER_BYTES if version == VERSION else HEADER_V2_BYTES
    crc_at = start + header_bytes + nbytes + (TAG_BYTES if flags & FLAG_AUTH else 0)
    if end - crc_at < CRC_BYTES:
        if not final:
            return 0
        counts[TRUNCATED] += 1
        return 1
    if crc32c(tables, buf, start, crc_at) != np.uint32(_u(buf, crc_at, 4)):
        counts[BAD_CRC] += 1
        return -1
    size = crc_at + CRC_BYTES - start
    row[0], row[1], row[2], row[3], row[4] = start, size, buf[start + 3], flags, buf[start + 5]
    row[5], row[6], row[7] = nbytes, _u(buf, start + 8, 4), _u(buf, start + 12, 2)
    row[8], row[10] = _u(buf, start + 14, 2), _u(buf, start + 20, 8)
    row[11], row[12] = _u(buf, start + 28, 4), version
    if version == VERSION:
        row[9], row[13] = _u(buf, start + 16, 4), 0
    else:  # the sequence slot holds the session; the 64-bit counter follows the v1 fields
        row[9], row[13] = _u(buf, start + HEADER_BYTES, 8), _u(buf, start + 16, 4)
    return size


@njit(cache=True, nogil=True)
def _scan(
    buf: np.ndarray,
    end: int,
    final: bool,
    tables: np.ndarray,
    rows: np.ndarray,
    bad_ids: np.ndarray,
    counts: np.ndarray,
) -> tuple[int, int, int]:
    pos, n_rows, n_bad = 0, 0, 0
    while True:
        start = pos
        while start + 1 < end and not (buf[start] == _MAGIC0 and buf[start + 1] == _MAGIC1):
            start += 1
        if start + 1 >= end:  # no magic: keep a trailing first magic byte unless final
            keep = 1 if (not final and start < end and buf[end - 1] == _MAGIC0) else 0
            counts[SKIPPED] += end - keep - pos
            return n_rows, n_bad, end - keep
        counts[SKIPPED] += start - pos
        size = _candidate(buf, start, end, final, tables, rows[n_rows], counts)
        if size == 0:
            return n_rows, n_bad, start
        if size < 0:  # bad CRC: remember the claimed device, skip one byte
            if n_bad < bad_ids.size:
                bad_ids[n_bad] = _u(buf, start + 8, 4)
                n_bad += 1
            size = 1
        if size == 1:
            counts[SKIPPED] += 1
        else:
            n_rows += 1
        pos = start + size


def scan_numba(
    buf: np.ndarray, final: bool, rows: np.ndarray, bad_ids: np.ndarray, counts: np.ndarray
) -> tuple[int, int, int]:
    """(frames found, bad-CRC device ids written, bytes consumed) for ``buf`` (uint8); rows
    (uint64, (>= len(buf) // 36 + 1, 14)) are filled in place, counts (int64, (5,)) added to."""
    n_rows, n_bad, pos = _scan(buf, buf.size, final, _TABLES, rows, bad_ids, counts)
    return int(n_rows), int(n_bad), int(pos)
