"""The training objective: a frame loss and a phase loss beside it (a multi-objective loss).

- **Frame loss** (:func:`frame_loss`): binary cross-entropy of every output of every frame
  against its target, weighted by the frame's target weight (:mod:`training.data.targets`:
  frames outside every annotated phase count ``unannotated_weight``), the mean over the
  weights; optionally with the quality-adaptive margin on the class outputs
  (:mod:`training.recipe.margin`).
- **Phase loss** (:func:`phase_loss`): the device's detector judges a breath phase by the mean
  of a class's probability over it, so each annotated phase's mean class probabilities are
  scored against the phase's labels too (Breath and Poor Quality are not in it).

Shapes: ``B`` examples, ``O`` outputs, ``N`` output frames, ``C`` adventitious classes.
"""

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
    """Weighted BCE of ``logits`` (B, O, N) against the batch's targets, the mean over the
    weights; ``margins`` (B, N): the quality-adaptive margin on the class outputs."""
    weights = torch.from_numpy(batch.weights)
    targets = torch.from_numpy(batch.targets)
    if margins is not None:
        logits = apply_margin(logits, targets, torch.from_numpy(margins), BREATH_INDEX)
    # pos_weight of ones is the plain BCE, computed the way the shipped model was trained (its
    # weighted form rounds differently): make train-sed rebuilds models/sed bit for bit
    ones = torch.ones(logits.shape[1])[None, :, None]
    per_frame = F.binary_cross_entropy_with_logits(
        logits, targets, reduction="none", pos_weight=ones
    )
    return (per_frame * weights).sum() / weights.sum().clamp_min(1.0)


def phase_segments(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """Segment ids (B * N,), -1 outside, of the batch's annotated phases: maximal runs of real
    frames with the Breath target on and one class-target vector; and each segment's class
    targets (S, C)."""
    classes = batch.targets[:, :BREATH_INDEX]  # (B, C, N)
    inside = (batch.targets[:, BREATH_INDEX] > 0.5) & (batch.mask > 0)  # (B, N)
    starts = inside.copy()  # a phase starts where inside begins or the class vector changes
    starts[:, 1:] &= ~inside[:, :-1] | (classes[:, :, 1:] != classes[:, :, :-1]).any(axis=1)
    ids = np.where(inside, np.cumsum(starts.reshape(-1)).reshape(inside.shape) - 1, -1)
    rows, frames = np.nonzero(starts)  # row-major: the order of the ids
    return ids.reshape(-1), classes[rows, :, frames].astype(np.float32)


def phase_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """BCE of each annotated phase's mean class probability against its labels (mean over
    phases; 0 when the batch has none)."""
    ids, labels = phase_segments(batch)
    if labels.shape[0] == 0:
        return logits.sum() * 0.0
    n_classes = labels.shape[1]
    probs = torch.sigmoid(logits[:, :n_classes]).permute(0, 2, 1).reshape(-1, n_classes)
    keep = torch.from_numpy(ids >= 0)
    index = torch.from_numpy(ids[ids >= 0])
    sums = torch.zeros(labels.shape[0], n_classes).index_add(0, index, probs[keep])
    counts = torch.zeros(labels.shape[0]).index_add(0, index, torch.ones(index.shape[0]))
    pooled = (sums / counts[:, None]).clamp(1e-6, 1 - 1e-6)
    return F.binary_cross_entropy(pooled, torch.from_numpy(labels))
