"""CRC-32C: the check value, and the numba and NumPy versions against the bitwise definition."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import crc32c as c
from firmware_bridge.crc32c_tables import slicing_tables


def test_check_value_of_every_implementation() -> None:
    data = b"123456789"
    assert c.crc32c_bitwise(data) == c.CHECK_VALUE == 0xE3069283
    assert c.crc32c_numpy(data) == c.CHECK_VALUE
    assert c.crc32c(data) == c.CHECK_VALUE


def test_known_vectors_from_rfc_3720() -> None:
    # iSCSI (RFC 3720, B.4): 32 bytes of zeros, of 0xFF, and an incrementing sequence
    assert c.crc32c(bytes(32)) == 0x8A9136AA
    assert c.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert c.crc32c(bytes(range(32))) == 0x46DD794E


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=5000), st.integers(0, 5000))
def test_fast_versions_equal_the_definition(data: bytes, cut: int) -> None:
    expected = c.crc32c_bitwise(data)
    assert c.crc32c_numpy(data) == expected
    assert c.crc32c(data) == expected
    head, tail = data[:cut], data[cut:]
    assert c.crc32c(tail, c.crc32c(head)) == expected
    assert c.crc32c_numpy(tail, c.crc32c_numpy(head)) == expected


@pytest.mark.parametrize("backend", ["numpy", "auto"])
@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 548, c.BLOCK_BYTES, c.BLOCK_BYTES + 3])
def test_range_function_on_a_slice(backend: str, size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size + 10, dtype=np.uint8)
    crc = c.range_function(backend)
    assert crc(data, 5, 5 + size) == c.crc32c_bitwise(data[5 : 5 + size].tobytes())


def test_slicing_tables_extend_the_byte_table() -> None:
    tables = slicing_tables()
    for value in (0, 1, 0x80, 0xFF):
        assert int(tables[1][value]) == c.crc32c_bitwise(bytes([value, 0]), 0xFFFFFFFF) ^ 0xFFFFFFFF
