"""Shared by the front-end tests: feed a stream in chunks, as a device would."""

from __future__ import annotations

import numpy as np

from edge.features import StreamingFrontEnd


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
