"""Shared by the front-end tests: feed a stream in chunks, as a device would, a test signal
(a tone in noise) to feed, and log-band frames with a gap for the normalisation kernels."""

from __future__ import annotations

import numpy as np

from edge.features import FeatureSpec, StreamingFrontEnd
from edge.features.base import silence_value

#: (frames, bands) the normalisation kernels are checked at: one frame, a few, a bed's minutes
KERNEL_SIZES = [(1, 1), (5, 3), (400, 24), (1500, 64)]


def push_in_chunks(stream: StreamingFrontEnd, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Push ``x`` in chunks whose sizes cycle through ``sizes`` (0 allowed); return every
    frame produced, copied, as one (n_frames, n_bands) array."""
    if sum(sizes) <= 0:
        raise ValueError(f"chunk sizes must add up to more than 0, got {sizes}")
    frames, start, i = [], 0, 0
    while start < x.shape[0]:
        size = sizes[i % len(sizes)]
        frames.append(stream.push(x[start : start + size]).copy())
        start, i = start + size, i + 1
    return np.concatenate(frames) if frames else np.zeros((0, stream.n_bands), np.float32)


def tone_in_noise(n: int, seed: int = 0) -> np.ndarray:
    """``n`` samples at 8 kHz: noise, with a 300 Hz tone over its middle sixth."""
    rng = np.random.default_rng(seed)
    x = 0.05 * rng.standard_normal(n)
    x[n // 3 : n // 2] += 0.2 * np.sin(2 * np.pi * 300 * np.arange(n // 2 - n // 3) / 8000)
    return x


def frames_with_a_gap(
    spec: FeatureSpec, n_frames: int, n_bands: int
) -> tuple[np.ndarray, FeatureSpec]:
    """Random log-band frames (seeded by ``n_frames``) with three frames of digital silence in
    the middle, and ``spec`` with ``n_bands`` bands."""
    rng = np.random.default_rng(n_frames)
    frames = rng.normal(-8.0, 2.0, (n_frames, n_bands)).astype(np.float32)
    frames[n_frames // 2 : n_frames // 2 + 3] = silence_value(spec)  # a gap of zeros
    return frames, spec.replace(n_bands=n_bands)
