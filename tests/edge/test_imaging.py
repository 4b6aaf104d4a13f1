"""The PNG writer: the file decodes back to the pixels written."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from wardview.imaging import PNG_SIGNATURE, colourise, write_png


def _decode(path: Path) -> np.ndarray:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    pos, chunks = len(PNG_SIGNATURE), {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, -1)
    assert (raw[:, 0] == 0).all()  # filter type "none" on every row
    return raw[:, 1:].reshape(height, width, 3)


def test_png_round_trip(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (17, 31, 3), dtype=np.uint8)
    path = write_png(tmp_path / "sub" / "x.png", rgb)
    np.testing.assert_array_equal(_decode(path), rgb)


def test_colourise_is_monotonic_in_brightness() -> None:
    rgb = colourise(np.linspace(0, 1, 200)[None, :]).astype(int)
    brightness = rgb[0].sum(axis=1)
    assert brightness[0] < 30
    assert brightness[-1] > 600
    assert (np.diff(brightness) >= -40).all()


def test_png_rejects_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\(h, w, 3\)"):
        write_png(tmp_path / "x.png", np.zeros((4, 4), np.uint8))
