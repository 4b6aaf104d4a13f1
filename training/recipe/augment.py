"""Augmentation of a training batch, in place, with the run's random generator. Shapes: features
``(B, K, F, T)`` with ``T = (N + lookahead) * stride``; targets ``(B, O, N)``.

- **SpecAugment** (:func:`spec_augment`, Park et al., Interspeech 2019): masked bands and
  stretches set to the flush frame (the training mean: zero after the input normalisation).
- **Patch-Mix** (:func:`patch_mix`, after Bae et al., Interspeech 2023, here along time for a
  frame-level model): a stretch of each example, with its targets and weights, replaced by
  the same stretch of another example of the batch; the record-level target becomes the union.
- **Another stethoscope** (:func:`device_colour`): docs/training.md, "augment.device_prob".
"""

from __future__ import annotations

import numpy as np

from edge.features.bandnorm import SILENT_MARGIN
from training.data.recordings import Batch
from training.recipe.config import AugmentConfig

DB = np.log(10.0) / 10.0  # one decibel of power in natural-log units
EQ_KNOTS = 4  # the equalisation curve is linear between this many knots over the bands


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


def device_colour(
    x: np.ndarray,
    centres_hz: np.ndarray,
    floor: float,
    cfg: AugmentConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """``x`` (K, F, T) raw log band powers as another device might have recorded them (one draw
    per example); ``centres_hz`` (K, F) band centres, ``floor`` the front end's log floor.
    Returns a new array; ``x`` is unchanged."""
    k, f, _ = x.shape
    curve_db = np.full((k, f), rng.uniform(-cfg.device_gain_db, cfg.device_gain_db))
    knots = rng.uniform(-cfg.device_eq_db, cfg.device_eq_db, EQ_KNOTS)
    curve_db += np.interp(np.linspace(0, EQ_KNOTS - 1, f), np.arange(EQ_KNOTS), knots)[None, :]
    if rng.random() < 0.5:
        corner = rng.uniform(*cfg.device_lowpass_hz)
        slope = rng.uniform(12.0, 48.0)  # dB per octave above the corner
        curve_db -= slope * np.log2(np.maximum(centres_hz / corner, 1.0))
    # frames of digital silence (a gap of zeros) stay as they are: no device colours those
    sound = np.any(x > floor + SILENT_MARGIN, axis=(0, 1)).reshape(1, 1, -1)
    y = np.where(sound, x + (curve_db * DB)[:, :, None], x)
    if rng.random() < 0.5:
        level_db = rng.uniform(*cfg.device_noise_db)
        tilt_db = rng.uniform(-6.0, 6.0) * np.linspace(-1.0, 1.0, f)[None, :]
        mean_power = y.mean(axis=2)  # (K, F) log of the example's typical band power
        noise = mean_power.mean(axis=1, keepdims=True) + (level_db + tilt_db) * DB
        y = np.where(sound, np.logaddexp(y, noise[:, :, None]), y)
    return np.maximum(y, floor).astype(np.float32)
