"""What one training step optimises: augmentation of a batch and the configured loss.

Keeps the train loop free of method switches: :class:`Objective` owns the augmentations
(SpecAugment, mixup, Patch-Mix) and the losses (cross-entropy, multi-objective, QLung
angular margin, Patch-Mix contrastive) selected by the run config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edge.labels import NORMAL
from training.augment import mixup, patch_mix, soft_targets, spec_augment
from training.config import RunConfig
from training.losses import (
    MultiObjectiveLoss,
    PatchMixContrastiveLoss,
    QualityAdaptiveMarginLoss,
    class_weights,
)


@dataclass
class Batch:
    """One augmented batch. x: (B, branches, bands, frames); targets: (B, C) soft labels;
    y_a/y_b/lam: the two label sources and own-share of each sample (Patch-Mix), or None."""

    x: torch.Tensor
    y: torch.Tensor
    quality: torch.Tensor
    targets: torch.Tensor
    y_b: torch.Tensor | None = None
    lam: torch.Tensor | None = None


class Objective:
    """Augment and score batches for a run; ``counts`` are training-class counts."""

    def __init__(self, run: RunConfig, counts: list[int]) -> None:
        self.run = run
        self.n_classes = len(run.data.classes)
        weights = class_weights(counts, power=run.loss.class_weight_power)
        normal = run.data.classes.index(NORMAL) if NORMAL in run.data.classes else 0
        cfg = run.loss
        self.main = self._main_loss(run, weights, normal, counts)
        self.contrastive = (
            PatchMixContrastiveLoss(cfg.contrastive_temperature)
            if cfg.contrastive_weight > 0
            else None
        )

    @staticmethod
    def _main_loss(
        run: RunConfig, weights: torch.Tensor, normal: int, counts: list[int]
    ) -> torch.nn.Module:
        cfg = run.loss
        if cfg.kind == "qlung":
            return QualityAdaptiveMarginLoss(
                run.model.cosine_scale,
                cfg.base_margin,
                cfg.quality_gain,
                counts,
                cfg.imbalance_gain,
            )
        binary_weight = cfg.binary_weight if cfg.kind == "multi_objective" else 0.0
        return MultiObjectiveLoss(normal, 1.0, binary_weight, weights, cfg.label_smoothing)

    def augment(
        self, x: torch.Tensor, y: torch.Tensor, quality: torch.Tensor, generator: torch.Generator
    ) -> Batch:
        aug = self.run.augment
        if aug.spec_augment:
            x = spec_augment(
                x, generator, aug.time_masks, aug.time_width, aug.freq_masks, aug.freq_width
            )
        draw = torch.rand((), generator=generator).item()
        if aug.patch_mix and draw < aug.patch_mix_prob:
            mixed = patch_mix(x, y, generator, aug.patch_bands, aug.patch_frames, 0.5)
            targets = soft_targets(mixed.y_a, mixed.y_b, mixed.lam, self.n_classes)
            return Batch(mixed.x, y, quality, targets, mixed.y_b, mixed.lam)
        targets = F.one_hot(y, self.n_classes).float()
        if aug.mixup_alpha > 0:
            x, targets = mixup(x, targets, generator, aug.mixup_alpha)
        return Batch(x, y, quality, targets)

    def loss(
        self, outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch: Batch
    ) -> torch.Tensor:
        logits, binary_logits, embedding = outputs
        if isinstance(self.main, QualityAdaptiveMarginLoss):
            value = self.main(logits, batch.y, batch.quality)
        else:
            value = self.main(logits, binary_logits, batch.targets)
        if self.contrastive is not None:
            y_b = batch.y if batch.y_b is None else batch.y_b
            lam = torch.ones_like(batch.quality) if batch.lam is None else batch.lam
            value = value + self.run.loss.contrastive_weight * self.contrastive(
                embedding, batch.y, y_b, lam
            )
        return value
