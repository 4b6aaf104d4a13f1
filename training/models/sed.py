"""SedNet: a frame-level, streaming sound-event-detection network for lung sounds.

Shapes: ``B`` batch, ``K`` spectrogram kinds, ``F`` bands, ``T`` front-end frames (10 ms at
the default FeatureSpec), ``C`` channels, ``N = T / stride`` network frames, ``O`` outputs.

Data flow, input ``x`` of shape (B, K, F, T) (log features straight from the front end)::

    normalise per kind and band (buffers input_mean / input_std (K, F))     (B, K, F, T)
    [per kind: band contrast, the input and the input less each band's
      causal moving mean over `contrast_frames`, stacked along the bands]    (B, K, 2F, T)
    per kind k: stem conv over `stride` frames (kernel = stride = s)        (B, C, N)  K times
    learned linear combination of the K stems (softmax weights), ReLU        (B, C, N)
    Inception-residual blocks: parallel causal dilated 1-D convolutions
      of several kernel widths, concatenated, 1x1 projection, residual       (B, C, N)
    [multi-head attention over a bounded past of `attention_frames`]         (B, C, N)
    output head: 1x1 conv -> logits, sigmoid outside                          (B, O, N)

Causality and look-ahead: every operation only looks back, so output frame ``j`` depends on
input frames ``< (j + 1) * s``. The model is trained so that output ``j`` describes network
frame ``j - lookahead_frames``: a fixed delay of ``lookahead_frames * s`` front-end frames is
the model's bounded look-ahead. Each layer that looks back keeps its last inputs in a cache;
before a stream starts every cache holds zeros (the whole-recording pass pads the same
zeros). All caches of one stream form one flat ``state`` vector of :attr:`SedNet.state_size`
floats (the band contrasts' caches first, one per kind, then the spectral stems' when they
span frames, one per kind, then the blocks' in order), so a
whole recording in one call, or the same recording in chunks with the state carried between
calls, gives the same outputs (``tests/training/test_sed_model.py``).

Streaming ONNX form (:class:`StreamingSed`): ``features (B, K, F, n*s)`` and ``state (B, S)``
-> ``probs (B, O, n)`` and ``state_out (B, S)``. Only standard ops with static sizes except
batch and time: Conv, BatchNorm (folded), Relu, Concat, Slice, Reshape, MatMul, Softmax,
Sigmoid, Range/comparisons for the attention mask (``export/opcheck.py`` checks them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from edge.config import check

NORM_EPS = 1e-5
MASKED = -1e4  # attention logit of a key outside the window (exp underflows to 0 in fp32)


@dataclass(frozen=True)
class SedConfig:
    """Sizes of a SedNet. ``n_kinds``, ``n_bands`` and ``n_outputs`` come from the run."""

    n_kinds: int = 1
    n_bands: int = 64
    n_outputs: int = 7
    stride: int = 4  # front-end frames per network frame (40 ms at a 10 ms hop)
    channels: int = 96
    dilations: tuple[int, ...] = (1, 2, 4, 8, 1, 2, 4, 8)  # one Inception-residual block each
    kernel_widths: tuple[int, ...] = (3, 5)  # parallel paths of each block
    lookahead_frames: int = 8  # network frames of delay (8 x 40 ms = 0.32 s)
    attention_heads: int = 0  # 0: no attention layer
    attention_frames: int = 64  # the bounded past each frame attends to (network frames)
    record_outputs: int = 0  # > 0: a record-level head for the multi-objective loss
    # > 0: a spectral stem first (2-D convolutions along frequency only, shared across bands,
    # then max-pooled by `freq_pool`): local spectral shapes wherever they lie; no time
    # context, so it carries no state
    freq_channels: int = 0
    freq_pool: int = 4
    # with freq_channels > 0: False, the spectral stem replaces the plain one at the front-end
    # rate; True, it reads each network frame's `stride` front-end frames averaged (stride
    # times cheaper: tonal sounds last longer than a network frame) and is added to the plain
    # stem, which keeps the full time resolution for transients such as crackles
    freq_at_network_rate: bool = False
    # with freq_at_network_rate: the spectral stem's two convolutions also span this many
    # network frames (causal; 1: frequency only). A tone that holds its pitch over frames (a
    # wheeze) then shows as a line in time; each convolution's last `freq_time_frames - 1`
    # input frames per kind are carried in the state
    freq_time_frames: int = 1
    # > 0: each band's causal moving mean over this many front-end frames is subtracted from a
    # copy of the input, which joins the plain stem beside the input itself (a band contrast:
    # stationary background and the channel's colouring removed, transients kept); carried
    # in the state as the last `contrast_frames - 1` input frames per kind
    contrast_frames: int = 0
    # > 0: in training, each block drops whole channels of its concatenated paths with this
    # probability (spatial dropout; nothing at inference, so the export is unchanged)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check(self.n_kinds >= 1, "n_kinds", self.n_kinds, "an integer >= 1")
        check(self.stride >= 1, "stride", self.stride, "an integer >= 1")
        check(self.channels >= 8, "channels", self.channels, "an integer >= 8")
        check(
            self.channels % len(self.kernel_widths) == 0,
            "channels",
            self.channels,
            f"a multiple of len(kernel_widths)={len(self.kernel_widths)}",
        )
        check(all(w >= 1 for w in self.kernel_widths), "kernel_widths", self.kernel_widths, ">= 1")
        check(all(d >= 1 for d in self.dilations), "dilations", self.dilations, "integers >= 1")
        check(self.lookahead_frames >= 0, "lookahead_frames", self.lookahead_frames, ">= 0")
        check(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a number in [0, 1)")
        check(self.freq_time_frames >= 1, "freq_time_frames", self.freq_time_frames, ">= 1")
        check(self.freq_time_frames == 1 or (self.freq_channels > 0 and self.freq_at_network_rate),
              "freq_time_frames", self.freq_time_frames,
              "1 unless freq_channels > 0 and freq_at_network_rate is true")  # fmt: skip
        check(self.contrast_frames == 0 or self.contrast_frames >= 2, "contrast_frames",
              self.contrast_frames, "0 (off) or an integer >= 2")  # fmt: skip
        check(not (self.contrast_frames and self.freq_channels), "contrast_frames",
              self.contrast_frames, "0 with a spectral stem (freq_channels > 0)")  # fmt: skip
        if self.attention_heads:
            check(
                self.channels % self.attention_heads == 0,
                "attention_heads",
                self.attention_heads,
                f"a divisor of channels={self.channels}",
            )
            check(self.attention_frames >= 1, "attention_frames", self.attention_frames, ">= 1")

    @property
    def receptive_frames(self) -> int:
        """Network frames of past context of the convolutions (attention adds its window)."""
        return 1 + sum((max(self.kernel_widths) - 1) * d for d in self.dilations)


class CausalBlock(nn.Module):
    """Inception-residual block over time: parallel causal dilated convolutions.

    Each path ``w`` is a Conv1d of kernel ``w`` and dilation ``d`` (C -> C / n_paths), batch
    norm and ReLU; the concatenated paths are projected by a 1x1 conv + batch norm and added to
    the input, then ReLU. The cache holds the last ``(max(w) - 1) * d`` input frames.
    (B, C, N) -> (B, C, N).
    """

    def __init__(
        self, channels: int, dilation: int, widths: Sequence[int], dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.drop = nn.Dropout1d(dropout)
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
        y = self.act(x + self.project(self.drop(torch.cat(paths, dim=1))))
        # a constant negative start keeps every shape static in the exported graph
        cache = full[:, :, -self.context :] if self.context else full[:, :, :0]
        return y, cache


class BoundedAttention(nn.Module):
    """Multi-head self-attention of each frame over itself and the ``window - 1`` frames before.

    The cache holds the keys and values of the last ``window`` frames (zeros before the
    stream starts, which take part like any key: the same in every chunking). Residual and
    a layer norm over channels per frame. (B, C, N) -> (B, C, N).
    """

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


class SpectralStem(nn.Module):
    """Two 2-D convolutions along frequency (kernel 5 bands x ``freq_time_frames`` frames,
    causal in time; shared across bands) with batch norm and ReLU, max-pooled by
    ``freq_pool`` along frequency, then one convolution over all pooled bands and ``stride``
    frames (stride ``stride``) to the channels. (B, F, T) -> (B, C, T/s). With
    ``freq_time_frames`` > 1 (at the network rate only) each convolution keeps its last
    ``freq_time_frames - 1`` input frames in a cache of :attr:`cache_shape`."""

    def __init__(self, config: SedConfig) -> None:
        super().__init__()
        f, k, span = config.freq_channels, 5, config.freq_time_frames
        bands = config.n_bands // config.freq_pool
        pooled = config.freq_at_network_rate
        self.time_pool = (
            nn.AvgPool2d((1, config.stride), stride=(1, config.stride)) if pooled else None
        )
        last = (1, 1) if pooled else (1, config.stride)
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, f, (k, span), padding=(k // 2, 0), bias=False) for c_in in (1, f)
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(f, eps=NORM_EPS) for _ in range(2))
        self.act = nn.ReLU()
        self.out = nn.Sequential(
            nn.MaxPool2d((config.freq_pool, 1)),
            nn.Conv2d(f, config.channels, (bands, last[1]), stride=last),
            nn.BatchNorm2d(config.channels, eps=NORM_EPS),
        )
        self.n_bands, self.channels, self.context = config.n_bands, f, span - 1
        self.cache_shape = ((1 + f) * config.n_bands, self.context)

    def forward(
        self, x: torch.Tensor, cache: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, F, T) [, cache (B, (1 + f) F, context)] -> (B, C, T/s), new cache."""
        h = x.unsqueeze(1)
        if self.time_pool is not None:
            h = self.time_pool(h)
        caches = []
        if self.context:
            assert cache is not None
            b, n_bands = x.shape[0], self.n_bands
            c = cache.reshape(b, 1 + self.channels, n_bands, self.context)
            caches = [c[:, :1], c[:, 1:]]
        new = []
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            if self.context:
                h = torch.cat([caches[i], h], dim=3)
                new.append(h[:, :, :, -self.context :])
            h = self.act(norm(conv(h)))
        y = self.out(h).squeeze(2)
        if not self.context:
            return y, None
        return y, torch.cat(new, dim=1).reshape(x.shape[0], *self.cache_shape)


class BandContrast(nn.Module):
    """Input and input less its causal per-band moving mean, stacked along the bands.

    (B, F, T), cache (B, F, L - 1) -> (B, 2F, T), new cache; the mean is a depthwise Conv1d
    with fixed weights 1 / L (a buffer, not trained)."""

    kernel: torch.Tensor

    def __init__(self, n_bands: int, frames: int) -> None:
        super().__init__()
        self.n_bands, self.context = n_bands, frames - 1
        self.register_buffer("kernel", torch.full((n_bands, 1, frames), 1.0 / frames))
        self.cache_shape = (n_bands, self.context)

    def forward(self, x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, F, T), cache (B, F, L - 1) -> (B, 2F, T), new cache (B, F, L - 1)."""
        full = torch.cat([cache, x], dim=2)
        mean = nn.functional.conv1d(full, self.kernel, groups=self.n_bands)
        return torch.cat([x, x - mean], dim=1), full[:, :, -self.context :]


class DualStem(nn.Module):
    """The plain stem plus the spectral stem at the network rate, summed."""

    def __init__(self, config: SedConfig) -> None:
        super().__init__()
        self.plain = _plain_stem(config)
        self.spectral = SpectralStem(config)

    def forward(
        self, x: torch.Tensor, cache: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        spectral, cache = self.spectral(x, cache)
        return self.plain(x) + spectral, cache

    @property
    def cache_shape(self) -> tuple[int, int]:
        return self.spectral.cache_shape


def _plain_stem(config: SedConfig) -> nn.Module:
    """One convolution over all bands and ``stride`` frames (stride ``stride``)."""
    bands = config.n_bands * (2 if config.contrast_frames else 1)
    return nn.Sequential(
        nn.Conv1d(bands, config.channels, config.stride, stride=config.stride, bias=False),
        nn.BatchNorm1d(config.channels, eps=NORM_EPS),
    )


def _stem(config: SedConfig) -> nn.Module:
    if not config.freq_channels:
        return _plain_stem(config)
    return DualStem(config) if config.freq_at_network_rate else SpectralStem(config)


class SedNet(nn.Module):
    """Frame-level multi-label detector (see the module doc)."""

    input_mean: torch.Tensor
    input_std: torch.Tensor
    record_head: nn.Linear | None

    def __init__(self, config: SedConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        self.register_buffer("input_mean", torch.zeros(config.n_kinds, config.n_bands))
        self.register_buffer("input_std", torch.ones(config.n_kinds, config.n_bands))
        self.stems = nn.ModuleList(_stem(config) for _ in range(config.n_kinds))
        self.contrasts = nn.ModuleList(
            BandContrast(config.n_bands, config.contrast_frames)
            for _ in range(config.n_kinds if config.contrast_frames else 0)
        )
        self.kind_logits = nn.Parameter(torch.zeros(config.n_kinds))
        self.act = nn.ReLU()
        layers: list[nn.Module] = [
            CausalBlock(c, d, config.kernel_widths, config.dropout) for d in config.dilations
        ]
        if config.attention_heads:
            layers.append(BoundedAttention(c, config.attention_heads, config.attention_frames))
        self.layers = nn.ModuleList(layers)
        self.head = nn.Conv1d(c, config.n_outputs, 1)
        self.record_head = (
            nn.Linear(2 * c, config.record_outputs) if config.record_outputs > 0 else None
        )
        # the state: the contrasts' caches (one per kind) first, then the spectral stems'
        # (one per kind, when they span frames), then the layers'
        self._stem_caches = config.freq_time_frames > 1
        stateful = [*self.contrasts, *(self.stems if self._stem_caches else []), *self.layers]
        self._shapes: list[tuple[int, int]] = [layer.cache_shape for layer in stateful]

    @property
    def state_size(self) -> int:
        """Floats of carried context per stream."""
        return sum(ch * t for ch, t in self._shapes)

    def initial_state(self, batch: int) -> torch.Tensor:
        """The state before a stream starts: (batch, state_size) zeros."""
        return torch.zeros(batch, self.state_size, device=self.input_mean.device)

    def kind_weights(self) -> torch.Tensor:
        """The learned linear combination of the kinds' stems, (K,) summing to 1."""
        return torch.softmax(self.kind_logits, dim=0)

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-kind, per-band input statistics (K, F) of the training set."""
        self.input_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.input_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(NORM_EPS))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Raw features (B, K, F, T) -> standardised with the training statistics."""
        return (x - self.input_mean[None, :, :, None]) / self.input_std[None, :, :, None]

    def embed(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, K, F, n*s), state (B, S) -> frame embeddings (B, C, n), new state (B, S)."""
        x = self.normalise(x)
        weights = self.kind_weights()
        caches, offset = [], 0  # the state cut into its caches, in the order of _shapes
        for ch, t in self._shapes:
            caches.append(state[:, offset : offset + ch * t].reshape(-1, ch, t))
            offset += ch * t
        inputs = [x[:, k] for k in range(len(self.stems))]
        for k, contrast in enumerate(self.contrasts):
            inputs[k], caches[k] = contrast(inputs[k], caches[k])
        first = len(self.contrasts)  # the stems' caches, if any, follow the contrasts'
        stemmed = []
        for k, stem in enumerate(self.stems):
            if isinstance(stem, nn.Sequential):  # the plain stem
                stemmed.append(stem(inputs[k]))
                continue
            y, cache = stem(inputs[k], caches[first + k] if self._stem_caches else None)
            if self._stem_caches:
                caches[first + k] = cache
            stemmed.append(y)
        h = self.act(sum(weights[k] * y for k, y in enumerate(stemmed)))
        first += len(self.stems) if self._stem_caches else 0
        for i, layer in enumerate(self.layers, start=first):
            h, caches[i] = layer(h, caches[i])
        flat = [c.reshape(-1, ch * t) for c, (ch, t) in zip(caches, self._shapes, strict=True)]
        return h, torch.cat(flat, dim=1)

    def forward(
        self, x: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, K, F, n*s) [, state (B, S)] -> logits (B, O, n), new state (B, S).

        Output ``j`` describes network frame ``j - lookahead_frames`` of the stream."""
        if state is None:
            state = self.initial_state(x.shape[0])
        h, new_state = self.embed(x, state)
        return self.head(h), new_state

    def forward_train(
        self, x: torch.Tensor, n_frames: int, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Training view of recordings that start a stream (state zero at their first frame).

        x (B, K, F, (n_frames + lookahead) * s), the last ``lookahead * s`` frames being real
        audio or the flush padding -> frame logits aligned with the recording (B, O, n_frames)
        and record logits (B, R) pooled over ``mask`` (B, n_frames) (None: no record head)."""
        h, _ = self.embed(x, self.initial_state(x.shape[0]))
        lookahead = self.config.lookahead_frames
        aligned = h[:, :, lookahead : lookahead + n_frames]
        frame_logits = self.head(aligned)
        if self.record_head is None:
            return frame_logits, None
        if mask is None:
            mask = torch.ones(aligned.shape[0], n_frames, device=x.device)
        weights = mask[:, None, :]
        mean = (aligned * weights).sum(dim=2) / weights.sum(dim=2).clamp_min(1.0)
        peak = torch.where(weights > 0, aligned, torch.full_like(aligned, -1e4)).amax(dim=2)
        return frame_logits, self.record_head(torch.cat([mean, peak], dim=1))


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


def count_parameters(model: nn.Module, *, exported: bool = True) -> int:
    """Trainable parameters (without the training-only record head when ``exported``)."""
    head = getattr(model, "record_head", None)
    skip = {id(p) for p in head.parameters()} if exported and head is not None else set()
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in skip)
