"""Training losses: weighted soft cross-entropy, multi-objective, Patch-Mix contrastive, QLung.

Shapes: ``B`` samples, ``C`` classes, ``D`` embedding size. Soft targets are ``(B, C)`` rows
of non-negative numbers summing to 1 (one-hot, mixed, or smoothed labels).

Formulations (``log p = log_softmax(logits)``):

- **Weighted soft CE** (:func:`soft_cross_entropy`): ``sum_ic w_c t_ic (-log p_ic) /
  sum_ic w_c t_ic``. With one-hot targets it equals ``F.cross_entropy(logits, y, weight=w)``
  (PyTorch's weighted mean); without weights it is the batch mean.
- **Multi-objective** (:class:`MultiObjectiveLoss`; the fine-grained + normal-vs-adventitious
  heads of the BioCAS 2022/2023 SPRSound challenge winners): ``fine_weight * softCE_w(logits,
  t~) + binary_weight * softCE(binary_logits, b~)``, with ``b = [t_normal, 1 - t_normal]``
  (column order of ``edge.labels.BINARY_LABELS``) and ``~`` label smoothing
  ``(1 - eps) t + eps / n_columns`` applied to each head's targets.
- **Patch-Mix contrastive** (:class:`PatchMixContrastiveLoss`), after Bae et al., "Patch-Mix
  Contrastive Learning with Audio Spectrogram Transformer on Respiratory Sound
  Classification", Interspeech 2023 (arXiv:2305.14032, ``method/patchmix_cl.py``). Anchors
  ``z_i`` (mixed samples) and candidates ``c_j`` are L2-normalised;
  ``log p_ij = z_i.c_j / tau - logsumexp_{k in K(i)} z_i.c_k / tau``. With ``P_a(i)`` and
  ``P_b(i)`` the candidates that are positives for ``y_a_i`` and for ``y_b_i``::

      L_i = -[ lam_i  * mean_{j in P_a(i)} log p_ij + (1 - lam_i) * mean_{j in P_b(i)} log p_ij ]
            / (lam_i [P_a(i) non-empty] + (1 - lam_i) [P_b(i) non-empty])

  and the loss is the mean of ``L_i`` over anchors with at least one positive (0 if none).
  ``positives="instance"`` is the authors' published loss: candidates are the clean
  embeddings of the batch (``reference``), ``P_a(i) = {i}``, ``P_b(i) = {partner(i)}``.
  ``positives="class"`` (default) extends it to every sample of the same class, in the
  supervised-contrastive way (Khosla et al., NeurIPS 2020, L_out): ``P_a(i) = {j in K(i):
  y_j = y_a_i}``, ``P_b(i) = {j in K(i): y_j = y_b_i}``, where candidate ``j``'s label is its
  own ``y_a_j``. ``K(i)`` is every reference embedding, or, without ``reference``, the other
  mixed embeddings ``j != i`` (a mixed candidate then counts under its own label). With
  ``lam = 1`` (or ``y_b = y_a``) it is exactly SupCon's L_out.
- **Quality-adaptive angular margin** (:class:`QualityAdaptiveMarginLoss`), in the spirit of
  QLung (Kim et al., arXiv:2606.11915), with the additive angular margin of ArcFace (Deng et
  al., CVPR 2019) and a log-scaled LDAM-like class margin (Cao et al., NeurIPS 2019)::

      m_i = base_margin * (1 + quality_gain * (1 - q_i)) + imbalance_gain * ln(n_max / n_{y_i})
      loss = CE(s * [cos(theta_j) for j != y_i, cos(theta_{y_i} + m_i)], y_i)

  The loss takes the classifier's logits ``s * cos(theta)`` (``s`` must match its scale; a
  larger ``|logits| / s`` is an error) and hard labels.

  ``m_i`` is capped at MAX_MARGIN_RAD; ``cos(theta + m)`` is evaluated as ``c cos m -
  sqrt(max(1 - c^2, SIN_SQUARED_FLOOR)) sin m`` (finite gradients at ``c = +-1``) and, past
  ``theta + m > pi`` where it would stop decreasing, as ``c - m sin m`` (ArcFace's fallback).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn.functional import cross_entropy, log_softmax, normalize

from edge.labels import BINARY_LABELS, NORMAL

BINARY_NORMAL_INDEX = BINARY_LABELS.index(NORMAL)  # column of "Normal" in the binary head
N_BINARY = len(BINARY_LABELS)
TARGET_SUM_TOLERANCE = 1e-3  # soft-target rows must sum to 1 within this
MAX_MARGIN_RAD = math.pi / 2  # larger margins are capped (cos(theta + m) stays meaningful)
SIN_SQUARED_FLOOR = 1e-6  # sin(theta) >= 1e-3 inside the margin formula
COSINE_TOLERANCE = 1e-3  # |logits| / scale may exceed 1 by this much (rounding) before an error
PositiveMode = Literal["class", "instance"]


def class_weights(
    counts: Sequence[float] | np.ndarray | torch.Tensor, power: float = 1.0
) -> torch.Tensor:
    """Inverse-frequency class weights ``count_c ** -power``, mean 1 over present classes.

    Args:
        counts: shape ``(C,)``, training examples per class (>= 0, at least one > 0).
        power: 0 gives all ones, 1 plain inverse frequency, 0.5 its square root.

    Returns:
        float32 tensor ``(C,)``. A class with zero examples gets weight 0 (it contributes
        nothing and does not dilute the others); the present classes' weights average 1.
    """
    c = _as_counts(counts, "counts")
    _require_non_negative(power=power)
    present = c > 0
    if not bool(present.any()):
        raise ValueError(f"counts must hold at least one positive count, got {c.tolist()}")
    weights = torch.zeros_like(c)
    weights[present] = c[present] ** -power
    weights[present] /= weights[present].mean()
    return weights.float()


def soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted soft cross-entropy (module docstring), a scalar.

    Args:
        logits: ``(B, C)``. targets: ``(B, C)`` soft targets. weights: ``(C,)`` or None.
    """
    _check_soft_targets(logits, targets)
    log_p = log_softmax(logits, dim=1)
    mass = targets if weights is None else targets * weights.to(targets)
    total = mass.sum()
    return -(mass * log_p).sum() / total.clamp_min(torch.finfo(total.dtype).tiny)


class MultiObjectiveLoss(nn.Module):
    """Fine-grained soft CE plus normal-vs-adventitious CE (formula in the module docstring).

    Args:
        normal_index: column of the Normal class in the fine-grained targets.
        fine_weight, binary_weight: weights of the two terms (>= 0, not both 0).
        class_weights: ``(C,)`` weights of the fine-grained term (e.g. :func:`class_weights`).
        label_smoothing: ``eps`` in [0, 1).
    """

    def __init__(
        self,
        normal_index: int,
        fine_weight: float = 1.0,
        binary_weight: float = 0.5,
        class_weights: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(normal_index, bool) or not isinstance(normal_index, int) or normal_index < 0:
            raise ValueError(f"normal_index must be an integer >= 0, got {normal_index!r}")
        _require_non_negative(fine_weight=fine_weight, binary_weight=binary_weight)
        if fine_weight == 0.0 and binary_weight == 0.0:
            raise ValueError("fine_weight and binary_weight are both 0: nothing to learn")
        if not (math.isfinite(label_smoothing) and 0.0 <= label_smoothing < 1.0):
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.normal_index = normal_index
        self.fine_weight = float(fine_weight)
        self.binary_weight = float(binary_weight)
        self.label_smoothing = float(label_smoothing)
        self.class_weights: torch.Tensor | None
        self.register_buffer("class_weights", _checked_weights(class_weights))

    def forward(
        self, logits: torch.Tensor, binary_logits: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """The weighted sum, a scalar. logits ``(B, C)``, binary_logits ``(B, 2)``,
        targets ``(B, C)`` soft."""
        fine, binary = self.parts(logits, binary_logits, targets)
        return self.fine_weight * fine + self.binary_weight * binary

    def parts(
        self, logits: torch.Tensor, binary_logits: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fine_ce, binary_ce)`` before weighting (for logging)."""
        n_classes = logits.shape[-1]
        if not 0 <= self.normal_index < n_classes:
            raise ValueError(f"normal_index {self.normal_index} is outside C={n_classes} classes")
        if self.class_weights is not None and self.class_weights.shape[0] != n_classes:
            raise ValueError(
                f"class_weights has {self.class_weights.shape[0]} entries, logits {n_classes}"
            )
        if binary_logits.ndim != 2 or binary_logits.shape[1] != N_BINARY:
            raise ValueError(f"binary_logits must be (B, 2), got {tuple(binary_logits.shape)}")
        _check_soft_targets(logits, targets)
        normal = targets[:, self.normal_index]
        columns = [normal, 1.0 - normal] if BINARY_NORMAL_INDEX == 0 else [1.0 - normal, normal]
        binary_targets = torch.stack(columns, dim=1)
        fine = soft_cross_entropy(logits, self._smooth(targets), self.class_weights)
        binary = soft_cross_entropy(binary_logits, self._smooth(binary_targets))
        return fine, binary

    def _smooth(self, targets: torch.Tensor) -> torch.Tensor:
        eps = self.label_smoothing
        return targets if eps == 0.0 else (1.0 - eps) * targets + eps / targets.shape[1]


class PatchMixContrastiveLoss(nn.Module):
    """Supervised contrastive loss with Patch-Mix labels (formula in the module docstring).

    Args:
        temperature: ``tau`` > 0.
        positives: ``"class"`` (same-label candidates) or ``"instance"`` (the authors' own
            and partner clean views; needs ``reference`` and ``partner``).
    """

    def __init__(self, temperature: float = 0.07, positives: PositiveMode = "class") -> None:
        super().__init__()
        _require_positive(temperature=temperature)
        if positives not in ("class", "instance"):
            raise ValueError(f"positives must be 'class' or 'instance', got {positives!r}")
        self.temperature = float(temperature)
        self.positives = positives

    def forward(
        self,
        embeddings: torch.Tensor,
        y_a: torch.Tensor,
        y_b: torch.Tensor,
        lam: torch.Tensor,
        reference: torch.Tensor | None = None,
        partner: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar loss.

        Args:
            embeddings: ``(B, D)`` anchors (normalised here).
            y_a, y_b: ``(B,)`` labels of each anchor and of its Patch-Mix partner.
            lam: ``(B,)`` share of ``y_a`` in [0, 1].
            reference: ``(B, D)`` clean (unmixed) embeddings of the same samples, or None.
            partner: ``(B,)`` partner indices (``positives="instance"`` only).
        """
        batch = _check_contrastive_inputs(embeddings, y_a, y_b, lam, reference)
        if reference is None and batch < 2:
            return embeddings.sum() * 0.0  # no candidate besides itself
        anchors = normalize(embeddings, dim=1)
        candidates = anchors if reference is None else normalize(reference, dim=1)
        valid = torch.ones(batch, batch, dtype=torch.bool, device=embeddings.device)
        if reference is None:
            valid.fill_diagonal_(False)
        logits = (anchors @ candidates.T / self.temperature).masked_fill(~valid, -math.inf)
        log_p = (logits - torch.logsumexp(logits, dim=1, keepdim=True)).masked_fill(~valid, 0.0)
        pos_a, pos_b = self._positive_masks(y_a, y_b, reference is not None, partner, valid)
        lam = lam.to(log_p).view(batch, 1)
        weights = _share(pos_a, lam) + _share(pos_b, 1.0 - lam)
        total = weights.sum(dim=1)
        has_positive = total > 0
        if not bool(has_positive.any()):
            return embeddings.sum() * 0.0
        per_anchor = -(weights * log_p).sum(dim=1)[has_positive] / total[has_positive]
        return per_anchor.mean()

    def _positive_masks(
        self,
        y_a: torch.Tensor,
        y_b: torch.Tensor,
        has_reference: bool,
        partner: torch.Tensor | None,
        valid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean ``(B, B)`` masks of the positives for ``y_a`` and for ``y_b``."""
        batch = y_a.shape[0]
        if self.positives == "class":
            own = y_a.view(1, batch)
            return (y_a.view(batch, 1) == own) & valid, (y_b.view(batch, 1) == own) & valid
        if not has_reference or partner is None or partner.shape != (batch,):
            raise ValueError("positives='instance' needs reference (B, D) and partner (B,)")
        eye = torch.eye(batch, dtype=torch.bool, device=valid.device)
        return eye, eye[partner.to(valid.device).long()]


class QualityAdaptiveMarginLoss(nn.Module):
    """Cosine-classifier CE with a per-sample additive angular margin (module docstring).

    Args:
        scale: ``s`` > 0, the classifier's logit scale (its logits are ``s * cos(theta)``).
        base_margin: margin in radians at quality 1 (>= 0).
        quality_gain: extra margin fraction per unit of quality lost (>= 0).
        class_counts: ``(C,)`` training examples per class (a zero count counts as one), or
            None for no class margin.
        imbalance_gain: radians per e-fold of ``n_max / n_c`` (>= 0; > 0 needs counts).
    """

    def __init__(
        self,
        scale: float,
        base_margin: float = 0.2,
        quality_gain: float = 1.0,
        class_counts: Sequence[float] | np.ndarray | torch.Tensor | None = None,
        imbalance_gain: float = 0.0,
    ) -> None:
        super().__init__()
        _require_positive(scale=scale)
        _require_non_negative(
            base_margin=base_margin, quality_gain=quality_gain, imbalance_gain=imbalance_gain
        )
        if imbalance_gain > 0.0 and class_counts is None:
            raise ValueError("imbalance_gain > 0 needs class_counts")
        self.scale = float(scale)
        self.base_margin = float(base_margin)
        self.quality_gain = float(quality_gain)
        self.imbalance_gain = float(imbalance_gain)
        self.log_imbalance: torch.Tensor | None
        self.register_buffer("log_imbalance", _log_imbalance(class_counts))

    def margins(self, targets: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        """Per-sample margins ``m_i`` in radians, ``(B,)``; quality ``(B,)`` in [0, 1]."""
        if quality.shape != targets.shape or targets.ndim != 1:
            raise ValueError(
                f"targets and quality must both be (B,), got {tuple(targets.shape)} and "
                f"{tuple(quality.shape)}"
            )
        if not bool(torch.all(torch.isfinite(quality) & (quality >= 0) & (quality <= 1))):
            raise ValueError(f"quality must lie in [0, 1], got {quality.tolist()}")
        margin = self.base_margin * (1.0 + self.quality_gain * (1.0 - quality.float()))
        if self.log_imbalance is not None:
            class_margin = self.log_imbalance[targets.to(self.log_imbalance.device).long()]
            margin = margin + self.imbalance_gain * class_margin.to(margin.device)
        return margin.clamp(max=MAX_MARGIN_RAD)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, quality: torch.Tensor
    ) -> torch.Tensor:
        """Scalar loss.

        Args:
            logits: ``(B, C)``, ``scale * cos(theta)`` from a cosine classifier with the same
                ``scale`` (|logits| <= scale).
            targets: ``(B,)`` class indices. quality: ``(B,)`` in [0, 1], 1 = good.
        """
        cosine = self._cosine(logits, targets)
        margin = self.margins(targets, quality).to(cosine)
        target_cos = cosine.gather(1, targets.view(-1, 1).long()).squeeze(1)
        phi = cos_plus_margin(target_cos, margin)
        margined = cosine.scatter(1, targets.view(-1, 1).long(), phi.view(-1, 1))
        return cross_entropy(self.scale * margined, targets.long())

    def _cosine(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``logits / scale`` clamped to [-1, 1], after checking shapes, labels and range."""
        if logits.ndim != 2 or targets.shape != (logits.shape[0],):
            raise ValueError(
                f"logits must be (B, C) and targets (B,), got {tuple(logits.shape)} and "
                f"{tuple(targets.shape)}"
            )
        n_classes = logits.shape[1]
        if self.log_imbalance is not None and self.log_imbalance.shape[0] != n_classes:
            raise ValueError(f"class_counts has {self.log_imbalance.shape[0]}, logits {n_classes}")
        if targets.numel() and not 0 <= int(targets.min()) <= int(targets.max()) < n_classes:
            raise ValueError(f"targets must be in [0, {n_classes}), got {targets.tolist()}")
        cosine = logits / self.scale
        largest = float(cosine.detach().abs().max()) if cosine.numel() else 0.0
        if largest > 1.0 + COSINE_TOLERANCE:
            raise ValueError(
                f"|logits| / scale reaches {largest:.4g} > 1: the logits must come from a "
                f"cosine classifier with scale {self.scale:g}"
            )
        return cosine.clamp(-1.0, 1.0)


def cos_plus_margin(cosine: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """``cos(theta + m)`` from ``cos(theta)`` (module docstring); never above ``cosine``.

    Args:
        cosine: ``(B,)`` in [-1, 1]. margin: ``(B,)`` in [0, pi/2].
    """
    sine = torch.sqrt((1.0 - cosine * cosine).clamp_min(SIN_SQUARED_FLOOR))
    shifted = cosine * torch.cos(margin) - sine * torch.sin(margin)
    past_pi = cosine <= torch.cos(math.pi - margin)
    return torch.where(past_pi, cosine - margin * torch.sin(margin), shifted)


def _require_positive(**values: float) -> None:
    """Raise ValueError naming the first value that is not a finite number > 0."""
    for name, value in values.items():
        if not (math.isfinite(value) and value > 0.0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def _require_non_negative(**values: float) -> None:
    """Raise ValueError naming the first value that is not a finite number >= 0."""
    for name, value in values.items():
        if not (math.isfinite(value) and value >= 0.0):
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")


def _share(positives: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
    """``share_i / |P(i)|`` on each anchor's positives, ``(B, B)`` (0 where none)."""
    count = positives.sum(dim=1, keepdim=True).clamp_min(1)
    return positives.to(share) * share / count


def _check_soft_targets(logits: torch.Tensor, targets: torch.Tensor) -> None:
    """Raise ValueError unless targets are ``(B, C)`` like logits, >= 0, rows summing to 1."""
    if logits.ndim != 2 or targets.shape != logits.shape:
        raise ValueError(
            f"logits and targets must both be (B, C), got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if not targets.is_floating_point():
        raise ValueError(f"targets must be soft (floating point), got {targets.dtype}")
    row_sums = targets.sum(dim=1)
    ok = torch.all(targets >= 0) and torch.all((row_sums - 1).abs() <= TARGET_SUM_TOLERANCE)
    if not bool(ok):
        raise ValueError(f"targets must be >= 0 with rows summing to 1, got sums {row_sums}")


def _check_contrastive_inputs(
    embeddings: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    lam: torch.Tensor,
    reference: torch.Tensor | None,
) -> int:
    """Raise ValueError on inconsistent shapes or lam outside [0, 1]; return B."""
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (B, D), got {tuple(embeddings.shape)}")
    batch = embeddings.shape[0]
    for name, tensor in (("y_a", y_a), ("y_b", y_b), ("lam", lam)):
        if tensor.shape != (batch,):
            raise ValueError(f"{name} must be ({batch},), got {tuple(tensor.shape)}")
    if not bool(torch.all((lam >= 0) & (lam <= 1))):
        raise ValueError(f"lam must lie in [0, 1], got {lam.tolist()}")
    if reference is not None and reference.shape != embeddings.shape:
        raise ValueError(
            f"reference must match embeddings {tuple(embeddings.shape)}, got "
            f"{tuple(reference.shape)}"
        )
    return batch


def _checked_weights(weights: torch.Tensor | None) -> torch.Tensor | None:
    """Class weights as a float tensor ``(C,)``, or None; ValueError if not finite and >= 0."""
    if weights is None:
        return None
    w = torch.as_tensor(weights, dtype=torch.float32)
    if w.ndim != 1 or not bool(torch.all(torch.isfinite(w) & (w >= 0))):
        raise ValueError(f"class_weights must be a 1-D tensor of numbers >= 0, got {w.tolist()}")
    return w


def _as_counts(counts: Sequence[float] | np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """Counts as float64 ``(C,)``; ValueError unless 1-D, non-empty, finite and >= 0."""
    c = torch.as_tensor(counts, dtype=torch.float64)
    if c.ndim != 1 or c.numel() == 0 or not bool(torch.all(torch.isfinite(c) & (c >= 0))):
        raise ValueError(
            f"{name} must be a non-empty 1-D sequence of finite counts >= 0, got {c.tolist()}"
        )
    return c


def _log_imbalance(
    counts: Sequence[float] | np.ndarray | torch.Tensor | None,
) -> torch.Tensor | None:
    """``ln(n_max / n_c)`` per class, ``(C,)``, with zero counts treated as one; or None."""
    if counts is None:
        return None
    c = _as_counts(counts, "class_counts").clamp_min(1.0)
    return torch.log(c.max() / c).float()
