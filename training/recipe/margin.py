"""The quality-adaptive margin of the frame-level model (``loss.quality_margin`` of a run).

QLung (Kim et al., arXiv:2606.11915) widens a cosine head's angular margin where signal quality
(spectral entropy, RMS) is poor. SedNet's frame heads are sigmoids on a 1x1 convolution, so here
the margin is additive on the adventitious class logits (LDAM's form, Cao et al., NeurIPS 2019),
two-sided for a binary output, and training-only (the exported model does not change)::

    z'[c, j] = z[c, j] - m_j * (2 * y[c, j] - 1)        (a positive must clear +m, a negative -m)
    m_j = base * (1 + gain * (1 - q_j))

``q_j`` is measured on the model's own input (first feature kind, log power per band): each
front-end frame's level ``E = log sum_f exp(x_f)`` and normalised spectral entropy
``H = -sum_f p_f log p_f / log F`` (``p = softmax(x)``), standardised against the training
frames, give ``q = sigmoid((E - mu_E) / sd_E) * sigmoid((mu_H - H) / sd_H)`` (quiet, flat frames
low, loud peaked ones high), averaged over output frame ``j``'s ``stride`` input frames. Relative
to SPRSound because the absolute score (``edge.bed.quality.quality_score``) is >= 0.995 on 99 %
of SPRSound's 2-s windows and would not adapt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import expit, logsumexp, softmax

from lungwatch.config import check


def level_and_entropy(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``E``, ``H`` (module doc) of natural-log powers ``(..., F, T)``; both ``(..., T)``."""
    x = np.asarray(features, dtype=np.float64)
    check(x.ndim >= 2 and x.shape[-2] >= 2, "features", x.shape, "(..., F >= 2 bands, T)")
    p = softmax(x, axis=-2)
    entropy = -(p * np.log(np.maximum(p, 1e-300))).sum(axis=-2) / np.log(x.shape[-2])
    return logsumexp(x, axis=-2), np.clip(entropy, 0.0, 1.0)


@dataclass(frozen=True)
class QualityReference:
    level_mean: float
    level_std: float
    entropy_mean: float
    entropy_std: float

    @classmethod
    def fit(cls, features: Sequence[np.ndarray], kind: int = 0) -> QualityReference:
        """From recordings' features ``(K, F, T)`` (feature kind ``kind``)."""
        check(len(features) > 0, "features", len(features), "at least one recording")
        levels, entropies = zip(*(level_and_entropy(f[kind]) for f in features), strict=True)
        e, h = np.concatenate(levels), np.concatenate(entropies)
        return cls(float(e.mean()), float(max(e.std(), 1e-6)),
                   float(h.mean()), float(max(h.std(), 1e-6)))  # fmt: skip

    def quality(self, features: np.ndarray) -> np.ndarray:
        level, entropy = level_and_entropy(features)
        q_level = expit((level - self.level_mean) / self.level_std)
        q_entropy = expit((self.entropy_mean - entropy) / self.entropy_std)
        return q_level * q_entropy


def frame_margins(
    features: np.ndarray,
    reference: QualityReference,
    stride: int,
    n_frames: int,
    base: float,
    gain: float,
    kind: int = 0,
) -> np.ndarray:
    """Margins ``(B, n_frames)`` of features ``(B, K, F, T)``; look-ahead frames are not scored."""
    check(base >= 0.0, "quality_margin", base, "a number >= 0")
    check(gain >= 0.0, "quality_margin_gain", gain, "a number >= 0")
    b, t = features.shape[0], features.shape[-1]
    check(t >= n_frames * stride, "features", features.shape,
          f"at least n_frames * stride = {n_frames * stride} frames")  # fmt: skip
    q = reference.quality(features[:, kind, :, : n_frames * stride])
    q = q.reshape(b, n_frames, stride).mean(axis=2)
    return (base * (1.0 + gain * (1.0 - q))).astype(np.float32)


def apply_margin(
    logits: torch.Tensor, targets: torch.Tensor, margins: torch.Tensor, n_classes: int
) -> torch.Tensor:
    sign = 2.0 * targets[:, :n_classes] - 1.0
    moved = logits[:, :n_classes] - margins[:, None, :].to(logits) * sign
    return torch.cat([moved, logits[:, n_classes:]], dim=1)
