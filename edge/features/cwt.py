"""Wavelet scalogram front end: complex Morlet CWT power, sampled several times per hop (the
wavelet, its normalisation, the evaluation points and the lookahead: docs/frontend.md, "cwt")."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from numba import njit
from scipy.signal import oaconvolve

from edge.features.base import (
    COUNTDOWN,
    WRITE_POS,
    BoundKernel,
    StreamingFrontEnd,
    finish,
    normalise,
)
from edge.features.spec import FeatureSpec, n_frames
from lungwatch.config import InvalidValueError

#: The Gaussian envelope is cut at this many standard deviations (``exp(-8) ~ 3.4e-4``).
TRUNCATION_SIGMAS = 4.0


class MorletBank(NamedTuple):
    """The designed wavelets and evaluation points, packed flat for the Numba kernel: band
    ``b``'s taps are ``kernel_*[kernel_start[b]:kernel_start[b + 1]]`` (``conj(psi_b)``,
    normalised), its points likewise by ``point_start``. ``point_base``: where a point's kernel
    starts in a buffer whose sample ``reach`` (samples needed each side) is the frame centre."""

    centres_hz: np.ndarray
    sigma_samples: np.ndarray
    half_width: np.ndarray
    kernel_start: np.ndarray
    kernel_re: np.ndarray
    kernel_im: np.ndarray
    point_start: np.ndarray
    point_offset: np.ndarray
    point_base: np.ndarray
    reach: int
    lookahead_samples: int
    span_samples: int


def morlet_centres_hz(spec: FeatureSpec) -> np.ndarray:
    """(n_bands,) geometric centre frequencies strictly inside ``(fmin_hz, fmax_hz)``."""
    if spec.fmin_hz <= 0.0:
        raise InvalidValueError("fmin_hz", spec.fmin_hz, "a number > 0 for kind 'cwt' (log-spaced)")
    return np.geomspace(spec.fmin_hz, spec.fmax_hz, spec.n_bands + 2)[1:-1]


def morlet_kernel(f_hz: float, spec: FeatureSpec) -> np.ndarray:
    """(2*K + 1,) complex128 normalised ``psi[k]``, ``k = -K..K``, built for ``k >= 0`` and
    mirrored, so the symmetry the streaming kernel folds on holds bit for bit."""
    fs = spec.sample_rate_hz
    sigma_samples = spec.morlet_w0 * fs / (2.0 * np.pi * f_hz)
    half = math.ceil(TRUNCATION_SIGMAS * sigma_samples)
    k = np.arange(half + 1, dtype=np.float64)
    g = np.exp(-0.5 * (k / sigma_samples) ** 2)
    norm = 0.5 * (g[0] + 2.0 * g[1:].sum())  # sum(g) over -K..K, halved
    right = g * np.exp(2j * np.pi * f_hz * k / fs) / norm
    return np.concatenate([np.conj(right[:0:-1]), right])


def evaluation_offsets(sigma_samples: float, hop_samples: int) -> np.ndarray:
    """(P,) int64 offsets from the frame centre where one band's power is sampled."""
    stride = int(np.clip(np.rint(sigma_samples), 1, hop_samples))
    spacing = max(d for d in range(1, stride + 1) if hop_samples % d == 0)
    count = hop_samples // spacing
    return np.arange(count, dtype=np.int64) * spacing - (count - 1) * spacing // 2


@functools.lru_cache(maxsize=8)
def morlet_bank(spec: FeatureSpec) -> MorletBank:
    """Design (once per spec) the kernels and evaluation points; arrays are read-only."""
    centres = morlet_centres_hz(spec)
    kernels = [np.conj(morlet_kernel(float(f), spec)) for f in centres]
    sigma = spec.morlet_w0 * spec.sample_rate_hz / (2.0 * np.pi * centres)
    half = np.array([(len(kc) - 1) // 2 for kc in kernels], dtype=np.int64)
    offsets = [evaluation_offsets(float(s), spec.hop_samples) for s in sigma]
    reach = int(max(h + np.abs(o).max() for h, o in zip(half, offsets, strict=True)))
    after_centre = spec.frame_samples - spec.frame_samples // 2
    lookahead = max(0, reach - after_centre + 1)
    packed = np.concatenate(kernels)
    bank = MorletBank(
        centres_hz=centres,
        sigma_samples=sigma,
        half_width=half,
        kernel_start=_starts([len(kc) for kc in kernels]),
        kernel_re=np.ascontiguousarray(packed.real),
        kernel_im=np.ascontiguousarray(packed.imag),
        point_start=_starts([len(o) for o in offsets]),
        point_offset=np.concatenate(offsets),
        point_base=np.concatenate([reach + o - h for h, o in zip(half, offsets, strict=True)]),
        reach=reach,
        lookahead_samples=lookahead,
        span_samples=after_centre + lookahead + reach,
    )
    for array in bank:
        if isinstance(array, np.ndarray):
            array.setflags(write=False)
    return bank


def _starts(lengths: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def cwt(x: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Batch form, by overlap-add convolution (independent of the streaming kernel)."""
    x = np.asarray(x, dtype=np.float64)
    bank = morlet_bank(spec)
    count = n_frames(spec, x.shape[0], bank.lookahead_samples)
    if count == 0:
        return np.zeros((0, spec.n_bands), dtype=np.float32)
    used = (count - 1) * spec.hop_samples + spec.frame_samples + bank.lookahead_samples
    padded = np.concatenate([np.zeros(bank.reach), x[:used]])[None, :]
    centres = np.arange(count) * spec.hop_samples + spec.frame_samples // 2
    power = np.empty((count, spec.n_bands), dtype=np.float64)
    for b in range(spec.n_bands):
        power[:, b] = _band_power(padded, centres, bank, b)
    return normalise(power, spec)


def _band_power(padded: np.ndarray, centres: np.ndarray, bank: MorletBank, b: int) -> np.ndarray:
    """(n_frames,) mean ``|c_b|**2`` over band ``b``'s points; ``padded`` is (1, n) float64."""
    taps = slice(bank.kernel_start[b], bank.kernel_start[b + 1])
    kernel = np.stack([bank.kernel_re[taps], bank.kernel_im[taps]])[:, ::-1]
    # valid[:, i] = sum_j padded[i + j] * conj(psi)[j]  ->  c_b at sample i + K_b - reach
    valid = oaconvolve(padded, kernel, mode="valid", axes=1)
    points = bank.point_base[bank.point_start[b] : bank.point_start[b + 1]]
    gathered = valid[:, centres[:, None] + points[None, :]]
    return np.mean(gathered[0] ** 2 + gathered[1] ** 2, axis=1)


def kernel_args(bank: MorletBank) -> tuple[np.ndarray, ...]:
    """The bank's arrays in the order the Numba kernels unpack them."""
    return (
        bank.kernel_start,
        bank.half_width,
        bank.kernel_re,
        bank.kernel_im,
        bank.point_start,
        bank.point_base,
    )


@njit(cache=True)
def _frame_powers(lin, bank_args, use_log, log_offset, out_row):
    """Band powers of one frame from ``lin`` (its span, centre at ``reach``) into ``out_row``,
    folding the kernel's symmetry (half the multiplies; strict IEEE order, no fast-math)."""
    kernel_start, half_width, kernel_re, kernel_im, point_start, point_base = bank_args
    for b in range(half_width.shape[0]):
        half = half_width[b]
        mid = kernel_start[b] + half
        acc = 0.0
        for p in range(point_start[b], point_start[b + 1]):
            c = point_base[p] + half
            re = lin[c] * kernel_re[mid]
            im = 0.0
            for j in range(1, half + 1):
                ahead = lin[c + j]
                behind = lin[c - j]
                re += (ahead + behind) * kernel_re[mid + j]
                im += (ahead - behind) * kernel_im[mid + j]
            acc += re * re + im * im
        out_row[b] = finish(acc / (point_start[b + 1] - point_start[b]), use_log, log_offset)


@njit(cache=True)
def _cwt_push(x, out, ring, lin, counters, hop, bank_args, use_log, log_offset):
    ring_len = ring.shape[0]
    pos = counters[WRITE_POS]
    countdown = counters[COUNTDOWN]
    n_out = 0
    for i in range(x.shape[0]):
        ring[pos] = x[i]
        pos += 1
        if pos == ring_len:
            pos = 0
        countdown -= 1
        if countdown > 0:
            continue
        countdown = hop
        # The oldest sample (the frame's first needed one) sits at ``pos``: unroll once.
        first = ring_len - pos
        for k in range(first):
            lin[k] = ring[pos + k]
        for k in range(pos):
            lin[first + k] = ring[k]
        _frame_powers(lin, bank_args, use_log, log_offset, out[n_out])
        n_out += 1
    counters[WRITE_POS] = pos
    counters[COUNTDOWN] = countdown
    return n_out


class CwtStream(StreamingFrontEnd):
    """Streaming Morlet scalogram over a ring of the last ``span_samples`` samples (its zero
    initial content stands for the samples before the stream start)."""

    def __init__(self, spec: FeatureSpec, **kwargs: int):
        self._bank = morlet_bank(spec)
        self._ring = np.zeros(self._bank.span_samples, dtype=np.float64)
        self._lin = np.zeros(self._bank.span_samples, dtype=np.float64)
        super().__init__(spec, **kwargs)

    @property
    def lookahead_samples(self) -> int:
        return self._bank.lookahead_samples

    def _reset_state(self) -> None:
        self._ring[:] = 0.0
        self._lin[:] = 0.0

    def _bind_kernel(self) -> BoundKernel:
        return BoundKernel(
            _cwt_push,
            self._out,
            self._ring,
            self._lin,
            self._counters,
            self.spec.hop_samples,
            kernel_args(self._bank),
            self.spec.normalisation == "log",
            self.spec.log_offset,
        )
