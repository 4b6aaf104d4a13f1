"""CRC-32C: google-crc32c is the Castagnoli CRC, in C; the numba scanner's kernel equals it."""

from __future__ import annotations

import google_crc32c
import numpy as np

from firmware_bridge._scan_numba import _TABLES, crc32c


def test_the_package_is_crc32c_in_c() -> None:
    assert google_crc32c.implementation == "c"  # its pure-Python fallback is far too slow
    assert google_crc32c.value(b"123456789") == 0xE3069283  # the check value
    # iSCSI (RFC 3720, B.4): 32 bytes of zeros, of 0xFF, and an incrementing sequence
    assert google_crc32c.value(bytes(32)) == 0x8A9136AA
    assert google_crc32c.value(b"\xff" * 32) == 0x62A8AB43
    assert google_crc32c.value(bytes(range(32))) == 0x46DD794E


def test_numba_kernel_equals_the_package() -> None:
    rng = np.random.default_rng(32)
    data = rng.integers(0, 256, 4096 + 16, dtype=np.uint8)
    sizes = [*range(0, 40), *rng.integers(0, 4097, 300).tolist(), 4095, 4096]
    for size in sizes:
        start = int(rng.integers(0, 16))  # slices that start anywhere, not only at 0
        expected = google_crc32c.value(data[start : start + size].tobytes())
        assert int(crc32c(_TABLES, data, start, start + size)) == expected, (start, size)
