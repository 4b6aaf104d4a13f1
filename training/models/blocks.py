"""Building blocks of the lung-sound networks; every one exports to standard ONNX (opset 17).

Shapes use ``B`` batch, ``C`` channels, ``F`` frequency bins, ``T`` time steps, ``D`` embedding
size, ``K`` branches (one per spectrogram kind). Only ReLU, softmax, batch/layer norm, conv,
matmul and reshapes with static sizes besides the batch are used, so the graph stays friendly
to INT8 quantization and TensorRT. Nothing here branches on tensor values.
"""

from __future__ import annotations

import math

import torch
from torch import nn

INCEPTION_PATHS = 4  # 1x1, 3x3, 5x5 (two 3x3), 1x7 (long in time: wheezes are long tones)
LONG_TIME_KERNEL = 7
NORM_EPS = 1e-6
POSITION_INIT_STD = 0.02


def conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel: int | tuple[int, int],
    stride: int = 1,
) -> nn.Sequential:
    """Conv2d ("same" padding for odd kernels), BatchNorm2d, ReLU.

    (B, C_in, F, T) -> (B, C_out, F', T'), with F', T' = F, T for stride 1, else ceil-halved.
    """
    kernel_hw = (kernel, kernel) if isinstance(kernel, int) else kernel
    padding = (kernel_hw[0] // 2, kernel_hw[1] // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_hw, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def downsampled(size: int, times: int) -> int:
    """Length after ``times`` stride-2 convolutions with kernel 3, padding 1 (ceil halving)."""
    for _ in range(times):
        size = (size + 1) // 2
    return size


class InceptionResidualBlock(nn.Module):
    """Parallel convolutions of different receptive fields, projected back and added to the input.

    Paths (each ``C // 4`` channels after a 1x1 reduction): 1x1, 3x3, 5x5 (as two 3x3) and
    1x7 along time. Their concatenation is projected by a 1x1 conv + batch norm and added to the
    input (identity residual), then ReLU. Shape preserving: (B, C, F, T) -> (B, C, F, T).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < INCEPTION_PATHS or channels % INCEPTION_PATHS:
            raise ValueError(f"channels must be a positive multiple of 4, got {channels}")
        width = channels // INCEPTION_PATHS
        self.path1 = conv_bn_relu(channels, width, 1)
        self.path3 = nn.Sequential(conv_bn_relu(channels, width, 1), conv_bn_relu(width, width, 3))
        self.path5 = nn.Sequential(
            conv_bn_relu(channels, width, 1),
            conv_bn_relu(width, width, 3),
            conv_bn_relu(width, width, 3),
        )
        self.path_time = nn.Sequential(
            conv_bn_relu(channels, width, 1), conv_bn_relu(width, width, (1, LONG_TIME_KERNEL))
        )
        self.project = nn.Sequential(
            nn.Conv2d(width * INCEPTION_PATHS, channels, 1, bias=False), nn.BatchNorm2d(channels)
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, F, T) -> (B, C, F, T)."""
        paths = [self.path1(x), self.path3(x), self.path5(x), self.path_time(x)]
        return self.act(x + self.project(torch.cat(paths, dim=1)))


class Backbone(nn.Module):
    """A stride-2 stem, then per stage a stride-2 transition (not in stage 0) and residual blocks.

    (B, 1, F, T) -> (B, channels[-1], F', T') with ``F' = downsampled(F, len(channels))`` and
    the same for ``T``.
    """

    def __init__(self, channels: tuple[int, ...], blocks_per_stage: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu(1, channels[0], 3, stride=2)]
        previous = channels[0]
        for stage, width in enumerate(channels):
            if stage > 0:
                layers.append(conv_bn_relu(previous, width, 3, stride=2))
            layers.extend(InceptionResidualBlock(width) for _ in range(blocks_per_stage))
            previous = width
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, F, T) -> (B, C, F', T')."""
        return self.layers(x)


class SpatioTemporalFocus(nn.Module):
    """Attention over frequency, then over time, that reweights a feature map before pooling.

    Frequency: a 1x1 conv scores each (bin, step); softmax over the bins gives weights with mean 1
    per time step. Time: a conv over the frequency-averaged map scores each step; softmax over
    time, again scaled to mean 1. (B, C, F, T) -> (B, C, F, T).
    """

    def __init__(self, channels: int, n_freq: int, n_time: int) -> None:
        super().__init__()
        self.freq_score = nn.Conv2d(channels, 1, kernel_size=1)
        self.time_score = nn.Conv1d(channels, 1, kernel_size=3, padding=1)
        self.n_freq = n_freq
        self.n_time = n_time

    def weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frequency weights (B, 1, F, T) and time weights (B, 1, 1, T), each of mean 1."""
        freq_w = torch.softmax(self.freq_score(x), dim=2) * self.n_freq
        time_logits = self.time_score((x * freq_w).mean(dim=2))  # (B, 1, T)
        time_w = torch.softmax(time_logits, dim=2).unsqueeze(2) * self.n_time
        return freq_w, time_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, F, T) -> (B, C, F, T)."""
        freq_w, time_w = self.weights(x)
        return x * freq_w * time_w


class BranchEncoder(nn.Module):
    """One spectrogram kind: backbone, optional focusing, (C x F') -> D projection per step.

    Flattening channels with frequency keeps *where* in the spectrum a pattern lies (crackle and
    wheeze bands differ), which mean-pooling over frequency would lose.
    (B, 1, F, T) -> (B, D, T').
    """

    def __init__(
        self,
        channels: tuple[int, ...],
        blocks_per_stage: int,
        out_freq: int,
        out_time: int,
        embed_dim: int,
        focusing: bool,
    ) -> None:
        super().__init__()
        self.backbone = Backbone(channels, blocks_per_stage)
        self.focus = SpatioTemporalFocus(channels[-1], out_freq, out_time) if focusing else None
        self.flat_features = channels[-1] * out_freq
        self.out_time = out_time
        self.project = nn.Sequential(
            nn.Conv1d(self.flat_features, embed_dim, kernel_size=1, bias=False),
            nn.BatchNorm1d(embed_dim),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, F, T) -> (B, D, T')."""
        h = self.backbone(x)
        if self.focus is not None:
            h = self.focus(h)
        return self.project(h.reshape(-1, self.flat_features, self.out_time))


class BranchCombination(nn.Module):
    """Learned linear combination of branch sequences with softmax-normalised weights.

    (B, K, T, D) -> (B, T, D); the output size does not depend on K (no concatenation).
    """

    def __init__(self, n_branches: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_branches))

    def weights(self) -> torch.Tensor:
        """(K,) non-negative weights summing to 1."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        """(B, K, T, D) -> (B, T, D)."""
        return (stacked * self.weights().view(1, -1, 1, 1)).sum(dim=1)


class TemporalSelfAttention(nn.Module):
    """Post-norm multi-head self-attention over time with a residual connection.

    Written with explicit matmuls and static reshapes (rather than ``nn.MultiheadAttention``,
    whose legacy ONNX export traces Python booleans and adds Shape/Mod/Cast nodes).
    (B, T, D) -> (B, T, D).
    """

    def __init__(self, dim: int, heads: int, seq_len: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding size {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.seq_len = seq_len
        self.dim = dim
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D)."""
        qkv = self.qkv(x).reshape(-1, self.seq_len, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, Dh)
        attn = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale, dim=-1)
        mixed = torch.matmul(self.dropout(attn), v).transpose(1, 2)  # (B, T, H, Dh)
        mixed = mixed.reshape(-1, self.seq_len, self.dim)
        return self.norm(x + self.dropout(self.out(mixed)))


class AttentivePooling(nn.Module):
    """Softmax-weighted average over time of a sequence. (B, T, D) -> (B, D)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, D)."""
        weights = torch.softmax(self.score(x), dim=1)  # (B, T, 1)
        return (x * weights).sum(dim=1)


class CosineHead(nn.Module):
    """Cosine classifier: ``logits = scale * cos(feature, class weight)``, so |logits| <= scale.

    (B, D) -> (B, n_classes). :meth:`cosine` gives the raw cosines for margin losses.
    """

    def __init__(self, dim: int, n_classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale = scale

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, n_classes) in [-1, 1]."""
        features = x / x.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)
        weight = self.weight / self.weight.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)
        return torch.matmul(features, weight.t())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, n_classes)."""
        return self.scale * self.cosine(x)
