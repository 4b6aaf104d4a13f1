"""Log-mel front end: Hann-windowed STFT power weighted by triangular HTK mel filters
(scaling and layout: docs/frontend.md, "logmel")."""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from numba import njit

from edge.features.base import (
    COUNTDOWN,
    WRITE_POS,
    BoundKernel,
    StreamingFrontEnd,
    finish,
    normalise,
)
from edge.features.fft import FramesFft, frames_power
from edge.features.spec import FeatureSpec, n_frames
from lungwatch.config import InvalidValueError


def hz_to_mel(f_hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(f_hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def _mel_edges_hz(spec: FeatureSpec) -> np.ndarray:
    """The ``n_bands + 2`` triangle edges, equally spaced in mel from fmin to fmax."""
    return mel_to_hz(
        np.linspace(hz_to_mel(spec.fmin_hz), hz_to_mel(spec.fmax_hz), spec.n_bands + 2)
    )


@functools.lru_cache(maxsize=8)
def mel_filterbank(spec: FeatureSpec) -> np.ndarray:
    """(n_bands, n_fft // 2 + 1) triangular mel weights; every band has a nonzero weight."""
    edges_hz = _mel_edges_hz(spec)
    bins_hz = np.arange(spec.n_freqs) * spec.sample_rate_hz / spec.n_fft
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bins_hz[None, :] - lower) / (centre - lower)
    falling = (upper - bins_hz[None, :]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    empty = np.flatnonzero(weights.max(axis=1) <= 0.0)
    if empty.size:
        raise InvalidValueError(
            "n_fft",
            spec.n_fft,
            f"large enough that every mel band holds an FFT bin (band {empty[0]} "
            f"at {edges_hz[empty[0] + 1]:.1f} Hz is empty; raise n_fft or fmin_hz,"
            " or lower n_bands)",
        )
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=8)
def mel_centres_hz(spec: FeatureSpec) -> np.ndarray:
    """(n_bands,) read-only centre frequencies in Hz of :func:`mel_filterbank`'s triangles."""
    centres = _mel_edges_hz(spec)[1:-1]
    centres.setflags(write=False)
    return centres


@functools.lru_cache(maxsize=8)
def analysis_window(frame_samples: int) -> np.ndarray:
    """Periodic Hann window of ``frame_samples``, normalised to unit sum."""
    n = np.arange(frame_samples)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / frame_samples)
    window /= window.sum()
    window.setflags(write=False)
    return window


class SparseMel(NamedTuple):
    """Mel weights stored per band as a contiguous bin range: ``weights[b, lo[b]:hi[b]]``."""

    lo: np.ndarray
    hi: np.ndarray
    weights: np.ndarray


@functools.lru_cache(maxsize=8)
def sparse_mel(spec: FeatureSpec) -> SparseMel:
    dense = mel_filterbank(spec)
    nonzero = dense > 0.0
    lo = nonzero.argmax(axis=1).astype(np.int64)
    hi = (dense.shape[1] - nonzero[:, ::-1].argmax(axis=1)).astype(np.int64)
    return SparseMel(lo, hi, np.ascontiguousarray(dense))


def logmel(x: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    count = n_frames(spec, x.shape[0])
    if count == 0:
        return np.zeros((0, spec.n_bands), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(x, spec.frame_samples)[:: spec.hop_samples]
    spectrum = np.fft.rfft(frames[:count] * analysis_window(spec.frame_samples), n=spec.n_fft)
    power = spectrum.real**2 + spectrum.imag**2
    return normalise(power @ mel_filterbank(spec).T, spec)


@njit(cache=True)
def _logmel_push(
    x,
    out,
    ring,
    counters,
    hop,
    window,
    frames,
    fft_args,
    power,
    mel_lo,
    mel_hi,
    mel_w,
    use_log,
    log_offset,
    out2,
    mel2_lo,
    mel2_hi,
    mel2_w,
    use_log2,
    log_offset2,
):
    """``out2``: the second filterbank's bands from the same power spectra. Every sample is
    written twice into ``ring`` (2 * frame_samples,), so the last frame is always contiguous."""
    frame_len = window.shape[0]
    pos = counters[WRITE_POS]
    countdown = counters[COUNTDOWN]
    n_out = 0
    for i in range(x.shape[0]):
        ring[pos] = x[i]
        ring[pos + frame_len] = x[i]
        pos += 1
        if pos == frame_len:
            pos = 0
        countdown -= 1
        if countdown == 0:
            countdown = hop
            for k in range(frame_len):
                frames[n_out, k] = ring[pos + k] * window[k]
            n_out += 1
    counters[WRITE_POS] = pos
    counters[COUNTDOWN] = countdown
    if n_out == 0:
        return 0
    frames_power(frames, n_out, fft_args, power)
    for f in range(n_out):
        for b in range(mel_lo.shape[0]):
            acc = 0.0
            for k in range(mel_lo[b], mel_hi[b]):
                acc += mel_w[b, k] * power[f, k]
            out[f, b] = finish(acc, use_log, log_offset)
        for b in range(mel2_lo.shape[0]):
            acc = 0.0
            for k in range(mel2_lo[b], mel2_hi[b]):
                acc += mel2_w[b, k] * power[f, k]
            out2[f, b] = finish(acc, use_log2, log_offset2)
    return n_out


class _Scratch(NamedTuple):
    """Per-frame work arrays of the log-mel kernel: written and read within one kernel call,
    never carried from one call to the next (the ring and the counters are the state)."""

    frames: np.ndarray  # (capacity, n_fft) windowed frames; the tail past frame_samples stays 0
    power: np.ndarray  # (capacity, n_fft // 2 + 1)
    fft: FramesFft


@functools.cache
def shared_scratch(n_fft: int, frame_samples: int, capacity: int) -> _Scratch:
    """Work arrays for ``capacity`` frames, one set per size (``frame_samples`` too: the tail
    past it stays 0) shared by every stream, so a ward touches one cache-resident set of FFT
    buffers. Safe: a kernel call holds the GIL (no ``nogil``) and carries nothing over."""
    return _Scratch(
        np.zeros((capacity, n_fft), dtype=np.float64),
        np.zeros((capacity, n_fft // 2 + 1), dtype=np.float64),
        FramesFft(n_fft, capacity),
    )


_NO_BANK = SparseMel(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 1)))


def _lowest(bank: SparseMel, n_bands: int | None) -> SparseMel:
    if n_bands is None:
        return bank
    if not 1 <= n_bands <= bank.lo.shape[0]:
        raise InvalidValueError("second_bands", n_bands, f"in [1, {bank.lo.shape[0]}]")
    return SparseMel(bank.lo[:n_bands], bank.hi[:n_bands], bank.weights[:n_bands])


def fits_second_bank(spec: FeatureSpec, second: FeatureSpec) -> bool:
    """Whether ``second``'s bands can be a second filterbank of ``spec``'s stream."""
    framing = ("kind", "sample_rate_hz", "frame_samples", "hop_samples", "n_fft")
    same = all(getattr(spec, key) == getattr(second, key) for key in framing)
    return spec.kind == "logmel" and same and second.band_norm_s <= 0


class LogMelStream(StreamingFrontEnd):
    """``second``: a second log-mel spec (:func:`fits_second_bank`) computed from the same power
    spectrum, read as :attr:`second_frames` or through :class:`SecondBank`; ``second_bands``:
    only its lowest that many bands (None: all)."""

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        second: FeatureSpec | None = None,
        second_bands: int | None = None,
        **kwargs: int,
    ):
        if second is not None and not fits_second_bank(spec, second):
            raise InvalidValueError(
                "second", second, "log-mel over the same frames and FFT, without band_norm_s"
            )
        self._ring = np.zeros(2 * spec.frame_samples, dtype=np.float64)
        self._window = analysis_window(spec.frame_samples)
        self._mel = sparse_mel(spec)
        self.second = second
        self._mel2 = _NO_BANK if second is None else _lowest(sparse_mel(second), second_bands)
        super().__init__(spec, **kwargs)

    @property
    def second_frames(self) -> np.ndarray:
        """The second bank's frames of the last push: a view valid until the next push."""
        return self._out2[: self._n_last]

    def push(self, samples: np.ndarray) -> np.ndarray:
        frames = super().push(samples)
        self._n_last = frames.shape[0]
        return frames

    def _allocate(self, capacity: int) -> None:
        spec = self.spec
        self._frames, self._power, self._fft = shared_scratch(
            spec.n_fft, spec.frame_samples, capacity
        )
        self._out2 = np.empty((capacity, self._mel2.lo.shape[0]), dtype=np.float32)
        super()._allocate(capacity)

    def _bind_kernel(self) -> BoundKernel:
        spec = self.spec
        return BoundKernel(
            _logmel_push,
            self._out,
            self._ring,
            self._counters,
            spec.hop_samples,
            self._window,
            self._frames,
            self._fft.as_args(),
            self._power,
            self._mel.lo,
            self._mel.hi,
            self._mel.weights,
            spec.normalisation == "log",
            spec.log_offset,
            self._out2,
            self._mel2.lo,
            self._mel2.hi,
            self._mel2.weights,
            self.second is not None and self.second.normalisation == "log",
            spec.log_offset if self.second is None else self.second.log_offset,
        )

    def _reset_state(self) -> None:
        self._n_last = 0
        self._ring[:] = 0.0


class SecondBank:
    """A :class:`LogMelStream`'s second filterbank as a front end of its own: its ``push``
    must follow the owner's push of the same samples (checked by count)."""

    def __init__(self, owner: LogMelStream) -> None:
        if owner.second is None:
            raise ValueError("the stream has no second filterbank")
        self.owner, self.spec = owner, owner.second
        self.frames_emitted = 0
        self.samples_seen = 0

    @property
    def lookahead_samples(self) -> int:
        return 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        self.samples_seen += samples.shape[0]
        if self.samples_seen != self.owner.samples_seen:
            raise RuntimeError(
                f"second bank pushed out of step: {self.samples_seen} samples, its stream "
                f"{self.owner.samples_seen}"
            )
        frames = self.owner.second_frames
        self.frames_emitted += frames.shape[0]
        return frames

    def reset(self) -> None:
        self.frames_emitted = 0
        self.samples_seen = 0
