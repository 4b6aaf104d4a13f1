"""Spectrogram augmentation on batches: SpecAugment, mixup and Patch-Mix.

Every function works on a batch ``x`` of shape ``(B, n_branches, n_bands, n_frames)`` (one
branch per front-end kind: log-mel, gammatone, CWT, all of the same size), returns new
tensors (the input is never modified) and takes an explicit :class:`torch.Generator`, so the
same generator state gives the same result. Random numbers are drawn on the generator's
device and moved to ``x``'s. What one sample receives (a mask, a partner, a patch) is the same
in every branch: the branches describe the same sound at the same times.

Methods:

- SpecAugment (Park et al., Interspeech 2019): ``time_masks`` stripes of ``w ~ U{0..time_width}``
  whole frames and ``freq_masks`` stripes of ``w ~ U{0..freq_width}`` bands, each starting
  uniformly where it fits, filled with a constant.
- mixup (Zhang et al., ICLR 2018): ``x_i' = lam_i x_i + (1 - lam_i) x_p(i)`` and the same for the
  soft targets, ``lam_i ~ Beta(alpha, alpha)`` per sample, ``p`` a random permutation.
- Patch-Mix (Bae et al., "Patch-Mix Contrastive Learning with Audio Spectrogram Transformer on
  Respiratory Sound Classification", Interspeech 2023, arXiv:2305.14032): the (bands x frames)
  plane is cut into a grid of ``patch_bands x patch_frames`` patches; each sample gets a
  partner from a random permutation, and a random ``round(mix_prob * n_patches)`` of its
  patches are replaced by the partner's patches at the same grid positions. The label ratio
  is ``lam_i`` = the fraction of the sample's own time-frequency cells kept (equal to the
  fraction of own patches when the grid divides the spectrogram; edge patches that overhang
  it count by their area). A sample drawn as its own partner keeps everything (``lam = 1``).
  Differences from the authors' code (``models/ast.py``, which mixes AST patch *embeddings*
  with one mask and one ``lam ~ Beta`` per batch): here patches are mixed on the input
  spectrogram (so any backbone can use it), the fraction is the ``mix_prob`` hyperparameter,
  and each sample gets its own random subset of patches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.functional import one_hot

BATCH_NDIM = 4  # (B, n_branches, n_bands, n_frames)
BAND_DIM = 2
FRAME_DIM = 3
SEED_UPPER = 2**62  # numpy seeds drawn from the torch generator lie in [0, SEED_UPPER)


@dataclass(frozen=True)
class PatchMixResult:
    """Output of :func:`patch_mix`.

    Attributes:
        x: mixed batch, same shape and dtype as the input.
        y_a: shape ``(B,)``, int64, each sample's own label.
        y_b: shape ``(B,)``, int64, its partner's label.
        lam: shape ``(B,)``, float32, fraction of the sample's own cells kept, in [0, 1].
        partner: shape ``(B,)``, int64, index of each sample's partner in the batch.
    """

    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: torch.Tensor
    partner: torch.Tensor


def spec_augment(
    x: torch.Tensor,
    generator: torch.Generator,
    time_masks: int = 2,
    time_width: int = 20,
    freq_masks: int = 2,
    freq_width: int = 8,
    fill: float | None = None,
) -> torch.Tensor:
    """SpecAugment time and frequency masking (no time warping).

    Args:
        x: shape ``(B, n_branches, n_bands, n_frames)``, floating point.
        generator: source of every random draw.
        time_masks, freq_masks: number of stripes per sample (>= 0).
        time_width, freq_width: largest stripe width in frames / bands (>= 0; capped at the
            axis length). Each stripe's width is uniform in ``{0, ..., width}``.
        fill: value written into the stripes; None: the mean of each sample's branch.

    Returns:
        Masked copy of ``x``; the same stripes in every branch of a sample.
    """
    _check_batch(x)
    for name, count in (
        ("time_masks", time_masks),
        ("time_width", time_width),
        ("freq_masks", freq_masks),
        ("freq_width", freq_width),
    ):
        _check_count(name, count)
    batch, _, n_bands, n_frames = x.shape
    frames = _stripes(batch, n_frames, time_masks, time_width, generator)
    bands = _stripes(batch, n_bands, freq_masks, freq_width, generator)
    mask = (frames[:, None, None, :] | bands[:, None, :, None]).to(x.device)
    if fill is None:
        value = x.mean(dim=(BAND_DIM, FRAME_DIM), keepdim=True)
    else:
        value = torch.tensor(float(fill), dtype=x.dtype, device=x.device)
    return torch.where(mask, value, x)


def mixup(
    x: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """mixup with one ``lam_i ~ Beta(alpha, alpha)`` per sample and a random partner.

    Args:
        x: shape ``(B, n_branches, n_bands, n_frames)``, floating point.
        targets: shape ``(B, C)``, soft targets (rows sum to 1).
        generator: source of every random draw (the Beta draws use a NumPy generator
            seeded from it).
        alpha: Beta concentration, > 0 (small alpha: lam near 0 or 1).

    Returns:
        ``(x_mixed, targets_mixed)``: ``lam_i * own + (1 - lam_i) * partner's`` for both.
    """
    _check_batch(x)
    batch = x.shape[0]
    if targets.ndim != 2 or targets.shape[0] != batch or not targets.is_floating_point():
        raise ValueError(
            f"targets must be a floating (B={batch}, C) tensor, got {tuple(targets.shape)} "
            f"{targets.dtype}"
        )
    if not (math.isfinite(alpha) and alpha > 0.0):
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    partner = torch.randperm(batch, generator=generator, device=generator.device).to(x.device)
    seed = int(torch.randint(0, SEED_UPPER, (1,), generator=generator, device=generator.device))
    lam_np = np.random.default_rng(seed).beta(alpha, alpha, size=batch)
    lam = torch.as_tensor(lam_np, dtype=x.dtype, device=x.device)
    lam_x = lam.view(batch, 1, 1, 1)
    lam_t = lam.to(targets.dtype).view(batch, 1).to(targets.device)
    mixed_x = lam_x * x + (1.0 - lam_x) * x[partner]
    mixed_t = lam_t * targets + (1.0 - lam_t) * targets[partner.to(targets.device)]
    return mixed_x, mixed_t


def patch_mix(
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator,
    patch_bands: int,
    patch_frames: int,
    mix_prob: float,
) -> PatchMixResult:
    """Patch-Mix: replace a random ``mix_prob`` of each sample's patches by its partner's.

    Args:
        x: shape ``(B, n_branches, n_bands, n_frames)``.
        y: shape ``(B,)``, integer class labels.
        generator: source of every random draw.
        patch_bands, patch_frames: patch size in bands and frames (>= 1).
        mix_prob: fraction of the patch grid taken from the partner, in [0, 1]; the number
            of patches is ``floor(mix_prob * n_patches + 0.5)``.

    Returns:
        :class:`PatchMixResult`; train with ``soft_targets(y_a, y_b, lam, C)`` or
        ``lam * CE(y_a) + (1 - lam) * CE(y_b)``.
    """
    _check_batch(x)
    batch, _, n_bands, n_frames = x.shape
    _check_labels(y, batch)
    _check_count("patch_bands", patch_bands, minimum=1)
    _check_count("patch_frames", patch_frames, minimum=1)
    if not (math.isfinite(mix_prob) and 0.0 <= mix_prob <= 1.0):
        raise ValueError(f"mix_prob must be a number in [0, 1], got {mix_prob!r}")
    grid = (math.ceil(n_bands / patch_bands), math.ceil(n_frames / patch_frames))
    n_mixed = math.floor(mix_prob * grid[0] * grid[1] + 0.5)
    partner = torch.randperm(batch, generator=generator, device=generator.device)
    patches = _random_patches(batch, grid, n_mixed, generator)
    cells = patches.repeat_interleave(patch_bands, dim=1).repeat_interleave(patch_frames, dim=2)
    cells = cells[:, :n_bands, :n_frames]
    cells = cells & (partner != torch.arange(batch, device=partner.device)).view(batch, 1, 1)
    lam = 1.0 - cells.float().mean(dim=(1, 2))
    partner = partner.to(x.device)
    mixed = torch.where(cells.to(x.device)[:, None], x[partner], x)
    y_a = y.to(torch.int64)
    return PatchMixResult(mixed, y_a, y_a[partner.to(y.device)], lam.to(x.device), partner)


def soft_targets(
    y_a: torch.Tensor, y_b: torch.Tensor, lam: torch.Tensor, n_classes: int
) -> torch.Tensor:
    """``lam * onehot(y_a) + (1 - lam) * onehot(y_b)``, shape ``(B, n_classes)``, float32."""
    _check_count("n_classes", n_classes, minimum=1)
    if y_a.ndim != 1:
        raise ValueError(f"y_a must have shape (B,), got {tuple(y_a.shape)}")
    batch = y_a.shape[0]
    _check_labels(y_a, batch, n_classes, name="y_a")
    _check_labels(y_b, batch, n_classes, name="y_b")
    if lam.shape != (batch,) or not bool(torch.all((lam >= 0.0) & (lam <= 1.0))):
        raise ValueError(f"lam must have shape ({batch},) and values in [0, 1], got {lam}")
    own = one_hot(y_a.to(torch.int64), n_classes).float()
    other = one_hot(y_b.to(torch.int64), n_classes).float()
    weight = lam.float().view(batch, 1).to(own.device)
    return weight * own + (1.0 - weight) * other.to(own.device)


def _stripes(
    batch: int, length: int, n_stripes: int, max_width: int, generator: torch.Generator
) -> torch.Tensor:
    """Boolean ``(batch, length)``: True inside any of ``n_stripes`` random stripes per row."""
    device = generator.device
    widths = torch.randint(
        0, min(max_width, length) + 1, (batch, n_stripes), generator=generator, device=device
    )
    fraction = torch.rand((batch, n_stripes), generator=generator, device=device)
    starts = (fraction * (length - widths + 1)).long()  # uniform in [0, length - width]
    position = torch.arange(length, device=device)
    inside = (position >= starts[..., None]) & (position < (starts + widths)[..., None])
    return inside.any(dim=1)


def _random_patches(
    batch: int, grid: tuple[int, int], n_mixed: int, generator: torch.Generator
) -> torch.Tensor:
    """Boolean ``(batch, *grid)`` with exactly ``n_mixed`` True patches per sample."""
    n_patches = grid[0] * grid[1]
    scores = torch.rand((batch, n_patches), generator=generator, device=generator.device)
    chosen = scores.argsort(dim=1)[:, :n_mixed]
    patches = torch.zeros((batch, n_patches), dtype=torch.bool, device=generator.device)
    patches.scatter_(1, chosen, True)
    return patches.view(batch, *grid)


def _check_batch(x: torch.Tensor) -> None:
    """Raise ValueError unless ``x`` is a floating (B, n_branches, n_bands, n_frames) tensor."""
    if not isinstance(x, torch.Tensor) or x.ndim != BATCH_NDIM or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"x must be a floating tensor of shape (B, n_branches, n_bands, n_frames), got {shape}"
        )
    if x.shape[0] == 0:
        raise ValueError("x holds an empty batch (B = 0)")


def _check_labels(
    y: torch.Tensor, batch: int, n_classes: int | None = None, name: str = "y"
) -> None:
    """Raise ValueError unless ``y`` is an integer ``(batch,)`` tensor in ``[0, n_classes)``."""
    if y.ndim != 1 or y.shape[0] != batch or y.is_floating_point() or y.is_complex():
        raise ValueError(
            f"{name} must be an integer tensor of shape ({batch},), got {tuple(y.shape)} {y.dtype}"
        )
    if y.numel() == 0:
        return
    if int(y.min()) < 0 or (n_classes is not None and int(y.max()) >= n_classes):
        allowed = f"[0, {n_classes})" if n_classes is not None else ">= 0"
        raise ValueError(f"{name} must hold class indices {allowed}, got {y.tolist()}")


def _check_count(name: str, value: int, minimum: int = 0) -> None:
    """Raise ValueError unless ``value`` is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
