"""Augmentation of a training batch, in place, with the run's random generator.

- **SpecAugment** (:func:`spec_augment`, Park et al., Interspeech 2019): masked bands and
  stretches set to the flush frame.
- **Patch-Mix** (:func:`patch_mix`, after Bae et al., Interspeech 2023, here along time for a
  frame-level model): a stretch of each example, with its targets and weights, replaced by
  the same stretch of another example of the batch."""

from __future__ import annotations

import numpy as np

from training.data.recordings import Batch
from training.recipe.config import AugmentConfig


def spec_augment(
    x: np.ndarray, flush: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
) -> None:
    b, _k, f, t = x.shape
    for i in range(b):
        for _ in range(cfg.freq_masks):
            w = int(rng.integers(0, cfg.freq_width + 1))
            s = int(rng.integers(0, f - w + 1))
            x[i, :, s : s + w, :] = flush[:, s : s + w, None]
        for _ in range(cfg.time_masks):
            w = int(rng.integers(0, cfg.time_width + 1))
            s = int(rng.integers(0, max(1, t - w)))
            x[i, :, :, s : s + w] = flush[:, :, None]


def patch_mix(batch: Batch, stride: int, max_frames: int, rng: np.random.Generator) -> None:
    b = batch.features.shape[0]
    perm = rng.permutation(b)
    n = batch.n_frames
    x0, y0, w0 = batch.features.copy(), batch.targets.copy(), batch.weights.copy()
    for i in range(b):
        j = perm[i]
        if j == i:
            continue
        length = min(int(rng.integers(max_frames // 4, max_frames + 1)), n)
        a = int(rng.integers(0, n - length + 1))
        lo, hi = a * stride, (a + length) * stride
        batch.features[i, :, :, lo:hi] = x0[j, :, :, lo:hi]
        batch.targets[i, :, a : a + length] = y0[j, :, a : a + length]
        batch.weights[i, :, a : a + length] = w0[j, :, a : a + length]
