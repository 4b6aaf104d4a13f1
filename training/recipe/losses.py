"""The training objective (shapes as in :mod:`training.models.sed`; ``C``: adventitious classes).

- **Frame loss**: BCE of every output of every frame, weighted by the frame's target weight
  (:mod:`training.data.targets`), optionally with the quality-adaptive margin
  (:mod:`training.recipe.margin`).
- **Phase loss**: the device's detector judges a breath phase by the mean of a class's
  probability over it, so each annotated phase's mean class probabilities are scored against
  the phase's labels too.
- **Distillation**: BCE against a teacher's soft outputs (:mod:`training.cv.teacher`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from training.data.recordings import Batch
from training.data.targets import BREATH_INDEX
from training.recipe.margin import apply_margin


def frame_loss(
    logits: torch.Tensor, batch: Batch, margins: np.ndarray | None = None
) -> torch.Tensor:
    """``logits`` (B, O, N); ``margins`` (B, N): the quality-adaptive margin on class outputs."""
    device = logits.device
    weights = torch.from_numpy(batch.weights).to(device)
    targets = torch.from_numpy(batch.targets).to(device)
    if margins is not None:
        margin = torch.from_numpy(margins).to(device)
        logits = apply_margin(logits, targets, margin, BREATH_INDEX)
    # pos_weight of ones is the plain BCE, computed the way the shipped model was trained (its
    # weighted form rounds differently): make train-sed rebuilds models/sed bit for bit
    ones = torch.ones(logits.shape[1], device=device)[None, :, None]
    per_frame = F.binary_cross_entropy_with_logits(
        logits, targets, reduction="none", pos_weight=ones
    )
    return (per_frame * weights).sum() / weights.sum().clamp_min(1.0)


def phase_segments(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """Segment ids (B * N,), -1 outside, of the annotated phases (maximal runs of real frames
    with the Breath target on and one class-target vector), and each one's class targets (S, C)."""
    classes = batch.targets[:, :BREATH_INDEX]  # (B, C, N)
    inside = (batch.targets[:, BREATH_INDEX] > 0.5) & (batch.mask > 0)  # (B, N)
    starts = inside.copy()  # a phase starts where inside begins or the class vector changes
    starts[:, 1:] &= ~inside[:, :-1] | (classes[:, :, 1:] != classes[:, :, :-1]).any(axis=1)
    ids = np.where(inside, np.cumsum(starts.reshape(-1)).reshape(inside.shape) - 1, -1)
    rows, frames = np.nonzero(starts)  # row-major: the order of the ids
    return ids.reshape(-1), classes[rows, :, frames].astype(np.float32)


def mean_phases(probs: torch.Tensor, index: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Mean (S, C) per segment of ``probs`` (M, C), whose frames' segments are ``index`` (M,)."""
    sums = probs.new_zeros(n_segments, probs.shape[1]).index_add(0, index, probs)
    counts = probs.new_zeros(n_segments).index_add(0, index, probs.new_ones(index.shape[0]))
    return sums / counts[:, None]


def phase_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    ids, labels = phase_segments(batch)
    if labels.shape[0] == 0:
        return logits.sum() * 0.0
    n_classes = labels.shape[1]
    probs = torch.sigmoid(logits)[:, :n_classes].permute(0, 2, 1).reshape(-1, n_classes)
    device = logits.device
    keep = torch.from_numpy(ids >= 0).to(device)
    index = torch.from_numpy(ids[ids >= 0]).to(device)
    pooled = mean_phases(probs[keep], index, labels.shape[0])
    return F.binary_cross_entropy(pooled.clamp(1e-6, 1 - 1e-6), torch.from_numpy(labels).to(device))


def distill_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    if batch.soft is None:
        return logits.sum() * 0.0
    device = logits.device
    soft = torch.from_numpy(batch.soft).to(device)
    known = torch.from_numpy(batch.soft_mask).to(device)[:, None, :].expand_as(logits)
    per_frame = F.binary_cross_entropy_with_logits(logits, soft, reduction="none")
    return (per_frame * known).sum() / known.sum().clamp_min(1.0)
