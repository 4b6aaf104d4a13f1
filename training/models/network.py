"""LungNet: Inception-residual branches, learned branch combination, attention over time.

Data flow, for input ``x`` of shape (B, K, F, T) (K spectrogram kinds, F bands, T frames, log
features straight from the front end)::

    normalise with the buffers input_mean / input_std (K, F)        (B, K, F, T)
    per branch k: Backbone -> [SpatioTemporalFocus] -> project      (B, D, T')   K times
    learned linear combination of the K branches (softmax weights)  (B, T', D)
    + learned position embedding, multi-head self-attention         (B, T', D)   encode_sequence
    attentive pooling over time                                     (B, D)       embedding
    classifier head (linear or cosine) / binary head                (B, n_classes) / (B, 2)

Two architectures of the same family, chosen by ``ModelConfig.arch``; an empty ``channels``
and ``blocks_per_stage = 0`` take the arch's defaults:

- ``edge``: channels (32, 64, 128), one block per stage. About 0.38 M parameters at 64 bands x
  200 frames, 8 classes, for INT8 on the device.
- ``multibranch``: channels (32, 64, 128), two blocks per stage; meant for ``n_branches = 3``
  (log-mel, Gammatone, CWT): about 1.28 M parameters with three branches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from edge.config import check
from training.models.blocks import (
    INCEPTION_PATHS,
    POSITION_INIT_STD,
    AttentivePooling,
    BranchCombination,
    BranchEncoder,
    CosineHead,
    TemporalSelfAttention,
    downsampled,
)

Arch = Literal["multibranch", "edge"]
Head = Literal["linear", "cosine"]

ARCH_CHANNELS: dict[str, tuple[int, ...]] = {
    "edge": (32, 64, 128),
    "multibranch": (32, 64, 128),
}
ARCH_BLOCKS_PER_STAGE: dict[str, int] = {"edge": 1, "multibranch": 2}
MIN_INPUT_SIZE = 4  # bands and frames
N_BINARY = 2  # normal vs adventitious
INPUT_NDIM = 4

ArrayLike = torch.Tensor | np.ndarray | Sequence[Sequence[float]]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a :class:`LungNet`; plain values, loadable with ``edge.config``.

    arch:             ``edge`` (compact, INT8 target) or ``multibranch`` (the larger model).
    n_branches:       one backbone per spectrogram kind in the input (K).
    n_bands:          frequency bands per kind (F); static in the exported graph.
    n_frames:         frames per window (T); static in the exported graph.
    n_classes:        fine-grained classes of the classifier head.
    channels:         backbone width per stage (each a multiple of 4); each stage halves F and T.
                      Empty means the arch default (see the module docstring).
    blocks_per_stage: Inception-residual blocks per stage; 0 means the arch default.
    embed_dim:        embedding size D of the time sequence and of the pooled embedding.
    attention_heads:  heads of the self-attention over time (must divide embed_dim).
    focusing:         spatio-temporal focusing (attention over frequency, then over time)
                      on each branch's feature map before the projection.
    head:             ``linear`` or ``cosine`` (normalised features and class weights).
    cosine_scale:     logits = cosine_scale * cos for the cosine head.
    dropout:          dropout in the attention and before the heads.
    """

    arch: Arch = "edge"
    n_branches: int = 1
    n_bands: int = 64
    n_frames: int = 200
    n_classes: int = 8
    channels: tuple[int, ...] = ()
    blocks_per_stage: int = 0
    embed_dim: int = 128
    attention_heads: int = 4
    focusing: bool = False
    head: Head = "linear"
    cosine_scale: float = 30.0
    dropout: float = 0.1

    def __post_init__(self) -> None:
        check(self.arch in ARCH_CHANNELS, "arch", self.arch, f"one of {sorted(ARCH_CHANNELS)}")
        if not self.channels:
            object.__setattr__(self, "channels", ARCH_CHANNELS[self.arch])
        if self.blocks_per_stage == 0:
            object.__setattr__(self, "blocks_per_stage", ARCH_BLOCKS_PER_STAGE[self.arch])
        self._check_sizes()
        self._check_layers()

    def _check_sizes(self) -> None:
        check(self.n_branches >= 1, "n_branches", self.n_branches, "an integer >= 1")
        for key in ("n_bands", "n_frames"):
            value = getattr(self, key)
            check(value >= MIN_INPUT_SIZE, key, value, f"an integer >= {MIN_INPUT_SIZE}")
        check(self.n_classes >= 2, "n_classes", self.n_classes, "an integer >= 2")

    def _check_layers(self) -> None:
        ok = all(c >= INCEPTION_PATHS and c % INCEPTION_PATHS == 0 for c in self.channels)
        check(ok, "channels", self.channels, "positive multiples of 4")
        blocks_ok = self.blocks_per_stage >= 1
        check(blocks_ok, "blocks_per_stage", self.blocks_per_stage, "an integer >= 0 (0: default)")
        check(self.embed_dim >= 1, "embed_dim", self.embed_dim, "an integer >= 1")
        heads_ok = self.attention_heads >= 1 and self.embed_dim % self.attention_heads == 0
        check(heads_ok, "attention_heads", self.attention_heads, "a divisor of embed_dim")
        check(self.head in ("linear", "cosine"), "head", self.head, "one of 'linear', 'cosine'")
        check(self.cosine_scale > 0, "cosine_scale", self.cosine_scale, "a number > 0")
        check(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "in [0, 1)")

    @property
    def out_bands(self) -> int:
        """Frequency bins F' after the backbone."""
        return downsampled(self.n_bands, len(self.channels))

    @property
    def out_frames(self) -> int:
        """Time steps T' of :meth:`LungNet.encode_sequence`."""
        return downsampled(self.n_frames, len(self.channels))

    @property
    def frames_per_step(self) -> int:
        """Input frames per encoder time step (the stride of the backbone in time)."""
        return 2 ** len(self.channels)


class LungNet(nn.Module):
    """The network; see the module docstring for the data flow and :class:`ModelConfig`.

    ``forward(x)`` with ``x`` (B, K, F, T) float32 log features returns
    ``(logits (B, n_classes), binary_logits (B, 2), embedding (B, D))``.
    """

    input_mean: torch.Tensor
    input_std: torch.Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("input_mean", torch.zeros(cfg.n_branches, cfg.n_bands))
        self.register_buffer("input_std", torch.ones(cfg.n_branches, cfg.n_bands))
        self.branches = nn.ModuleList(
            BranchEncoder(
                cfg.channels,
                cfg.blocks_per_stage,
                cfg.out_bands,
                cfg.out_frames,
                cfg.embed_dim,
                cfg.focusing,
            )
            for _ in range(cfg.n_branches)
        )
        self.combine = BranchCombination(cfg.n_branches)
        self.position = nn.Parameter(torch.zeros(1, cfg.out_frames, cfg.embed_dim))
        nn.init.trunc_normal_(self.position, std=POSITION_INIT_STD)
        self.attention = TemporalSelfAttention(
            cfg.embed_dim, cfg.attention_heads, cfg.out_frames, cfg.dropout
        )
        self.pool = AttentivePooling(cfg.embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier: nn.Module = (
            CosineHead(cfg.embed_dim, cfg.n_classes, cfg.cosine_scale)
            if cfg.head == "cosine"
            else nn.Linear(cfg.embed_dim, cfg.n_classes)
        )
        self.binary = nn.Linear(cfg.embed_dim, N_BINARY)

    def set_input_stats(self, mean: ArrayLike, std: ArrayLike) -> None:
        """Store per-(branch, band) statistics, each (K, F), used as ``(x - mean) / std``."""
        shape = (self.cfg.n_branches, self.cfg.n_bands)
        mean_t = torch.as_tensor(np.asarray(mean), dtype=torch.float32)
        std_t = torch.as_tensor(np.asarray(std), dtype=torch.float32)
        for name, value in (("mean", mean_t), ("std", std_t)):
            if tuple(value.shape) != shape:
                raise ValueError(f"input {name} must have shape {shape}, got {tuple(value.shape)}")
            if not torch.isfinite(value).all():
                raise ValueError(f"input {name} must be finite")
        if (std_t <= 0).any():
            raise ValueError("input std must be > 0 everywhere")
        self.input_mean.copy_(mean_t)
        self.input_std.copy_(std_t)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, F, T) raw log features -> (B, K, F, T) normalised per branch and band."""
        self._check_input(x)
        return (x - self.input_mean.unsqueeze(-1)) / self.input_std.unsqueeze(-1)

    def encode_sequence(self, x: torch.Tensor, *, normalised: bool = False) -> torch.Tensor:
        """(B, K, F, T) -> (B, T', D): branches, combination, position, self-attention.

        With ``normalised=True`` the input is taken as already normalised (used by the masked
        autoencoder, which masks in the normalised domain).
        """
        z = x if normalised else self.normalise(x)
        sequences = [
            branch(z[:, k : k + 1]).transpose(1, 2) for k, branch in enumerate(self.branches)
        ]
        combined = self.combine(torch.stack(sequences, dim=1))
        return self.attention(combined + self.position)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, K, F, T) -> logits (B, n_classes), binary_logits (B, 2), embedding (B, D)."""
        embedding = self.pool(self.encode_sequence(x))
        features = self.dropout(embedding)
        return self.classifier(features), self.binary(features), embedding

    def _check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing():  # ONNX export: shapes are fixed by the example input
            return
        expected = (self.cfg.n_branches, self.cfg.n_bands, self.cfg.n_frames)
        if x.dim() != INPUT_NDIM or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"input must have shape (batch, {', '.join(map(str, expected))}) "
                f"(branches, bands, frames), got {tuple(x.shape)}"
            )


def build_model(cfg: ModelConfig) -> LungNet:
    """A freshly initialised :class:`LungNet` for ``cfg``."""
    return LungNet(cfg)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameter values (buffers such as input stats excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
