"""SedNet: a frame-level, streaming sound-event-detection network for lung sounds. Shapes: ``B``
batch, ``K`` spectrogram kinds, ``F`` bands, ``T`` front-end frames (10 ms at the default
FeatureSpec), ``C`` channels, ``N = T / stride`` network frames, ``O`` outputs.

Data flow, input ``x`` of shape (B, K, F, T) (log features straight from the front end)::

    normalise per kind and band (buffers input_mean / input_std (K, F))     (B, K, F, T)
    per kind k: stem conv over `stride` frames (kernel = stride = s)        (B, C, N)  K times
    learned linear combination of the K stems (softmax weights), ReLU        (B, C, N)
    Inception-residual blocks: parallel causal dilated 1-D convolutions
      of several kernel widths, concatenated, 1x1 projection, residual       (B, C, N)
    [multi-head attention over a bounded past of `attention_frames`]         (B, C, N)
    output head: 1x1 conv -> logits, sigmoid outside                          (B, O, N)

Every operation only looks back: output frame ``j`` depends on input frames ``< (j + 1) * s``
and is trained to describe network frame ``j - lookahead_frames``. The layers' caches (zeros
before a stream starts, as the whole-recording pass pads) form one flat ``state`` of
:attr:`SedNet.state_size` floats, so one call or chunks with the state carried give the same
outputs. The streaming ONNX form (:class:`StreamingSed`): docs/export.md."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field, NonNegativeInt, PositiveInt
from torch import nn

from lungwatch.config import Settings, check

NORM_EPS = 1e-5
MASKED = -1e4  # attention logit of a key outside the window (exp underflows to 0 in fp32)


@dataclass(frozen=True)
class SedConfig(Settings):
    n_kinds: PositiveInt = 1
    n_bands: int = 64
    n_outputs: int = 7
    stride: PositiveInt = 4  # front-end frames per network frame (40 ms at a 10 ms hop)
    channels: Annotated[int, Field(ge=8)] = 96
    dilations: tuple[int, ...] = (1, 2, 4, 8, 1, 2, 4, 8)  # one Inception-residual block each
    kernel_widths: tuple[int, ...] = (3, 5)  # parallel paths of each block
    lookahead_frames: NonNegativeInt = 8  # network frames of delay (8 x 40 ms = 0.32 s)
    attention_heads: int = 0  # 0: no attention layer
    attention_frames: int = 64  # the bounded past each frame attends to (network frames)

    def __post_init__(self) -> None:
        channels, paths = self.channels, len(self.kernel_widths)
        check(
            channels % paths == 0, "channels", channels, f"a multiple of len(kernel_widths)={paths}"
        )
        check(all(w >= 1 for w in self.kernel_widths), "kernel_widths", self.kernel_widths, ">= 1")
        check(all(d >= 1 for d in self.dilations), "dilations", self.dilations, "integers >= 1")
        if self.attention_heads:
            check(
                self.channels % self.attention_heads == 0,
                "attention_heads",
                self.attention_heads,
                f"a divisor of channels={self.channels}",
            )
            check(self.attention_frames >= 1, "attention_frames", self.attention_frames, ">= 1")


class CausalBlock(nn.Module):
    def __init__(self, channels: int, dilation: int, widths: Sequence[int]) -> None:
        super().__init__()
        width = channels // len(widths)
        self.offsets = [(max(widths) - w) * dilation for w in widths]
        self.context = (max(widths) - 1) * dilation
        self.paths = nn.ModuleList(
            nn.Sequential(
                nn.Conv1d(channels, width, w, dilation=dilation, bias=False),
                nn.BatchNorm1d(width, eps=NORM_EPS),
                nn.ReLU(),
            )
            for w in widths
        )
        self.project = nn.Sequential(
            nn.Conv1d(width * len(widths), channels, 1, bias=False),
            nn.BatchNorm1d(channels, eps=NORM_EPS),
        )
        self.act = nn.ReLU()
        self.cache_shape = (channels, self.context)

    def forward(self, x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, N), cache (B, C, context) -> y (B, C, N), new cache (B, C, context)."""
        full = torch.cat([cache, x], dim=2)
        paths = [path(full[:, :, o:]) for path, o in zip(self.paths, self.offsets, strict=True)]
        y = self.act(x + self.project(torch.cat(paths, dim=1)))
        # a constant negative start keeps every shape static in the exported graph
        cache = full[:, :, -self.context :] if self.context else full[:, :, :0]
        return y, cache


class BoundedAttention(nn.Module):
    """Each frame attends to itself and the ``window - 1`` frames before, cached as keys and
    values; the zeros before a stream starts take part like any key."""

    def __init__(self, channels: int, heads: int, window: int) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.head_dim = channels // heads
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.out = nn.Conv1d(channels, channels, 1)
        self.norm = nn.LayerNorm(channels, eps=NORM_EPS)
        self.cache_shape = (2 * channels, window)

    def forward(self, x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, N), cache (B, 2C, window) -> y (B, C, N), new cache (B, 2C, window)."""
        b, c, n = x.shape
        q, k, v = self.qkv(x).split(c, dim=1)
        keys = torch.cat([cache[:, :c], k], dim=2)  # (B, C, W + N)
        values = torch.cat([cache[:, c:], v], dim=2)
        h, d = self.heads, self.head_dim
        qh = q.reshape(b, h, d, n).transpose(2, 3)  # (B, h, N, d)
        kh = keys.reshape(b, h, d, -1)  # (B, h, d, W + N)
        vh = values.reshape(b, h, d, -1).transpose(2, 3)  # (B, h, W + N, d)
        scores = torch.matmul(qh, kh) / math.sqrt(d)  # (B, h, N, W + N)
        i = torch.arange(n, device=x.device).unsqueeze(1)
        j = torch.arange(keys.shape[2], device=x.device).unsqueeze(0)
        allowed = (j > i) & (j <= i + self.window)  # key j holds frame j - W; query i frame i
        scores = torch.where(allowed, scores, torch.full_like(scores, MASKED))
        attended = torch.matmul(torch.softmax(scores, dim=-1), vh)  # (B, h, N, d)
        attended = attended.transpose(2, 3).reshape(b, c, n)
        y = self.norm((x + self.out(attended)).transpose(1, 2)).transpose(1, 2)
        new_cache = torch.cat([keys, values], dim=1)
        return y, new_cache[:, :, -self.window :]


def _stem(config: SedConfig) -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(config.n_bands, config.channels, config.stride, stride=config.stride, bias=False),
        nn.BatchNorm1d(config.channels, eps=NORM_EPS),
    )


class SedNet(nn.Module):
    input_mean: torch.Tensor
    input_std: torch.Tensor

    def __init__(self, config: SedConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        self.register_buffer("input_mean", torch.zeros(config.n_kinds, config.n_bands))
        self.register_buffer("input_std", torch.ones(config.n_kinds, config.n_bands))
        self.stems = nn.ModuleList(_stem(config) for _ in range(config.n_kinds))
        self.kind_logits = nn.Parameter(torch.zeros(config.n_kinds))
        self.act = nn.ReLU()
        layers: list[CausalBlock | BoundedAttention] = [
            CausalBlock(c, d, config.kernel_widths) for d in config.dilations
        ]
        if config.attention_heads:
            layers.append(BoundedAttention(c, config.attention_heads, config.attention_frames))
        self.layers = nn.ModuleList(layers)
        self.head = nn.Conv1d(c, config.n_outputs, 1)
        self._shapes: list[tuple[int, int]] = [m.cache_shape for m in layers]

    @property
    def state_size(self) -> int:
        """Floats of carried context per stream."""
        return sum(ch * t for ch, t in self._shapes)

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.state_size, device=self.input_mean.device)

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-kind, per-band input statistics (K, F) of the training set."""
        self.input_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.input_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(NORM_EPS))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean[None, :, :, None]) / self.input_std[None, :, :, None]

    def embed(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, K, F, n*s), state (B, S) -> frame embeddings (B, C, n), new state (B, S)."""
        x = self.normalise(x)
        weights = torch.softmax(self.kind_logits, dim=0)
        caches, offset = [], 0  # the state cut into the layers' caches, in order
        for ch, t in self._shapes:
            caches.append(state[:, offset : offset + ch * t].reshape(-1, ch, t))
            offset += ch * t
        h = self.act(sum(weights[k] * stem(x[:, k]) for k, stem in enumerate(self.stems)))
        for i, layer in enumerate(self.layers):
            h, caches[i] = layer(h, caches[i])
        flat = [c.reshape(-1, ch * t) for c, (ch, t) in zip(caches, self._shapes, strict=True)]
        return h, torch.cat(flat, dim=1)

    def forward(
        self, x: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, K, F, n*s) [, state (B, S)] -> logits (B, O, n), new state (B, S)."""
        if state is None:
            state = self.initial_state(x.shape[0])
        h, new_state = self.embed(x, state)
        return self.head(h), new_state

    def forward_train(self, x: torch.Tensor, n_frames: int) -> torch.Tensor:
        """Recordings that start a stream: x (B, K, F, (n_frames + lookahead) * s), the last
        ``lookahead * s`` frames real audio or flush padding -> aligned logits (B, O, n_frames)."""
        h, _ = self.embed(x, self.initial_state(x.shape[0]))
        lookahead = self.config.lookahead_frames
        return self.head(h[:, :, lookahead : lookahead + n_frames])


class StreamingSed(nn.Module):
    """The exported form: (features, state) -> (probs, state_out), sigmoid applied."""

    def __init__(self, model: SedNet) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, features: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits, new_state = self.model(features, state)
        return torch.sigmoid(logits), new_state


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
