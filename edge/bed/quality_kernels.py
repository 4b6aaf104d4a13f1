"""Numba kernels behind :func:`edge.bed.quality.measure`: level, clipping and Welch entropy.

The same numbers as ``measure_reference`` without SciPy's per-call cost. The Welch estimate is
``scipy.signal.welch(x, window="hann", nperseg=n, noverlap=n // 2, detrend="constant",
scaling="spectrum")`` restricted to a band, without its constant factor (it cancels in the
normalised entropy). The FFT is :func:`edge.features.fft.frames_power`, so the frame length must be
a power of two. Scratch arrays: a :class:`WelchWork` per thread and settings."""

from __future__ import annotations

import threading

import numpy as np
import scipy.fft
from numba import njit
from scipy.signal import get_window

from edge.features.fft import FramesFft, frames_power


class WelchWork:
    """Tables and scratch of the Welch kernels for one frame length and rate; ``lo, hi``: the
    band's bins on ``welch``'s bin frequencies (``(0, 0)`` when none lies there)."""

    def __init__(
        self,
        n_per_frame: int,
        rate_hz: float,
        fmin_hz: float,
        overlap_fraction: float,
        fmax_hz: float = np.inf,
    ) -> None:
        self.window = np.asarray(get_window("hann", n_per_frame), dtype=np.float64)
        self.step = n_per_frame - int(overlap_fraction * n_per_frame)
        freqs_hz = scipy.fft.rfftfreq(n_per_frame, 1.0 / rate_hz)
        inside = np.flatnonzero((freqs_hz >= fmin_hz) & (freqs_hz <= fmax_hz))
        self.lo, self.hi = (int(inside[0]), int(inside[-1]) + 1) if inside.size else (0, 0)
        self.fft = FramesFft(n_per_frame, capacity=1)
        self.frames = np.zeros((1, n_per_frame), dtype=np.float64)
        self.power = np.zeros((1, n_per_frame // 2 + 1), dtype=np.float64)

    def ensure(self, n_frames: int) -> None:
        if n_frames > self.frames.shape[0]:
            self.fft.allocate(n_frames)
            self.frames = np.zeros((n_frames, self.frames.shape[1]), dtype=np.float64)
            self.power = np.zeros((n_frames, self.power.shape[1]), dtype=np.float64)


_PER_THREAD = threading.local()  # .table: {(n, rate_hz, fmin_hz, overlap, fmax_hz): WelchWork}


def welch_work(
    n_per_frame: int,
    rate_hz: float,
    fmin_hz: float,
    overlap_fraction: float,
    fmax_hz: float = np.inf,
) -> WelchWork:
    table = getattr(_PER_THREAD, "table", None)
    if table is None:
        table = _PER_THREAD.table = {}
    key = (n_per_frame, rate_hz, fmin_hz, overlap_fraction, fmax_hz)
    work = table.get(key)
    if work is None:
        work = table[key] = WelchWork(n_per_frame, rate_hz, fmin_hz, overlap_fraction, fmax_hz)
    return work


@njit(cache=True)
def level_sums(x, threshold):
    """``(sum of x**2, count of |x| >= threshold, all finite)`` of ``x`` (n,), in float64."""
    sum_squares = 0.0
    clipped = 0
    for i in range(x.shape[0]):
        value = np.float64(x[i])
        if not np.isfinite(value):
            return 0.0, 0, False
        sum_squares += value * value
        if abs(value) >= threshold:
            clipped += 1
    return sum_squares, clipped, True


@njit(cache=True)
def welch_frames(x, window, step, n_frames, frames):
    n = window.shape[0]
    for f in range(n_frames):
        start = f * step
        mean = 0.0
        for i in range(n):
            mean += np.float64(x[start + i])
        mean /= n
        for i in range(n):
            frames[f, i] = (np.float64(x[start + i]) - mean) * window[i]


@njit(cache=True)
def band_entropy(power, n_frames, lo, hi):
    """Normalised entropy over bins ``[lo, hi)`` (hi - lo >= 2) of the one-sided spectrum
    whose frames are ``power[:n_frames]`` ``|rfft|**2`` rows; 0 if the band holds no power.
    Overwrites ``power[0, lo:hi]`` with the band's (unscaled) Welch power."""
    last = power.shape[1] - 1
    total = 0.0
    for k in range(lo, hi):
        acc = 0.0
        for f in range(n_frames):
            acc += power[f, k]
        if 0 < k < last:
            acc *= 2.0
        power[0, k] = acc
        total += acc
    if total <= 0.0:
        return 0.0
    entropy = 0.0
    for k in range(lo, hi):
        if power[0, k] > 0.0:
            p = power[0, k] / total
            entropy -= p * np.log(p)
    return min(1.0, max(0.0, entropy / np.log(hi - lo)))


@njit(cache=True)
def hop_measures(x, threshold, window, step, n_frames, lo, hi, frames, fft_args, power):
    """``(sum of squares, clipped count, spectral entropy, all finite)`` of ``x`` (n,): the
    kernels above in one call (``fft_args``: ``FramesFft.as_args()``)."""
    sum_squares, clipped, finite = level_sums(x, threshold)
    if not finite:
        return 0.0, 0, 0.0, False
    welch_frames(x, window, step, n_frames, frames)
    frames_power(frames, n_frames, fft_args, power)
    return sum_squares, clipped, band_entropy(power, n_frames, lo, hi), True
