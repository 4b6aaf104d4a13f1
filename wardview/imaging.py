"""Minimal PNG output for spectrogram pictures on devices without matplotlib.

Only what the demo and reports need: an RGB image from a (height, width, 3) uint8 array,
and a colour map for feature matrices. Standard library (zlib) plus NumPy.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Perceptually ordered dark-to-bright ramp (black, purple, orange, pale yellow) as RGB stops.
_RAMP = np.array(
    [[0, 0, 4], [80, 18, 123], [182, 54, 121], [251, 136, 97], [252, 253, 191]], dtype=np.float64
)


def colourise(values: np.ndarray, low_pct: float = 2.0, high_pct: float = 99.5) -> np.ndarray:
    """Map a 2-D array to RGB uint8 (h, w, 3), clipping at the given percentiles."""
    lo, hi = np.percentile(values, [low_pct, high_pct])
    scaled = np.clip((values - lo) / max(hi - lo, 1e-12), 0.0, 1.0) * (len(_RAMP) - 1)
    index = np.minimum(scaled.astype(np.int64), len(_RAMP) - 2)
    frac = (scaled - index)[..., None]
    rgb = _RAMP[index] * (1.0 - frac) + _RAMP[index + 1] * frac
    return rgb.round().astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An (height, width, 3) uint8 array as the bytes of an 8-bit RGB PNG."""
    image = np.ascontiguousarray(rgb, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"png: expected a non-empty (h, w, 3) array, got {image.shape}")
    height, width, _ = image.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8), image.reshape(height, -1)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
    return PNG_SIGNATURE + body + _chunk(b"IEND", b"")


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an (height, width, 3) uint8 array as an 8-bit RGB PNG; returns the path."""
    data = png_bytes(rgb)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
