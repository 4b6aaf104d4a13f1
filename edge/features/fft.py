"""Real FFT power spectra inside Numba kernels, allocating nothing per call.

:func:`frames_power` uses DUCC0 through rocket-fft's low-level ``r2c`` where installed, else
the built-in radix-2 :func:`rfft_power` (a complex FFT of half the size and the split step).
Numba's on-disk cache keys a kernel by its source file, not by the backend: after installing
or removing rocket-fft, clear ``__pycache__`` (or set ``NUMBA_CACHE_DIR``)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from numba import njit

try:
    from rocket_fft.lowlevel import r2c as _r2c
except ImportError:  # no rocket-fft wheel with the low-level API on this platform
    _r2c = None

FFT_BACKEND = "rocket-fft r2c (DUCC0)" if _r2c is not None else "built-in radix-2"


class FftPlan(NamedTuple):
    """Tables for an ``n_fft``-point real FFT: bit reversal, butterfly and split twiddles."""

    bitrev: np.ndarray
    tw_re: np.ndarray
    tw_im: np.ndarray
    sp_re: np.ndarray
    sp_im: np.ndarray


@functools.lru_cache(maxsize=16)
def make_plan(n_fft: int) -> FftPlan:
    if n_fft < 4 or n_fft & (n_fft - 1):
        raise ValueError(f"n_fft must be a power of two >= 4, got {n_fft}")
    m = n_fft // 2
    bits = m.bit_length() - 1
    idx = np.arange(m)
    bitrev = np.zeros(m, dtype=np.int64)
    for b in range(bits):
        bitrev |= ((idx >> b) & 1) << (bits - 1 - b)
    k = np.arange(m // 2)
    s = np.arange(m + 1)
    plan = FftPlan(
        bitrev=bitrev,
        tw_re=np.cos(-2 * np.pi * k / m),
        tw_im=np.sin(-2 * np.pi * k / m),
        sp_re=np.cos(-2 * np.pi * s / n_fft),
        sp_im=np.sin(-2 * np.pi * s / n_fft),
    )
    for table in plan:
        table.setflags(write=False)
    return plan


@njit(cache=True)
def rfft_power(frame, bitrev, tw_re, tw_im, sp_re, sp_im, work_re, work_im, power):
    """``power[k] = |rfft(frame)[k]|**2`` for ``k in 0..n_fft/2``."""
    m = bitrev.shape[0]
    for i in range(m):
        j = bitrev[i]
        work_re[j] = frame[2 * i]
        work_im[j] = frame[2 * i + 1]
    half = 1
    while half < m:
        step = m // (2 * half)
        for start in range(0, m, 2 * half):
            for k in range(half):
                wr = tw_re[k * step]
                wi = tw_im[k * step]
                a = start + k
                b = a + half
                tr = work_re[b] * wr - work_im[b] * wi
                ti = work_re[b] * wi + work_im[b] * wr
                work_re[b] = work_re[a] - tr
                work_im[b] = work_im[a] - ti
                work_re[a] += tr
                work_im[a] += ti
        half *= 2
    # Split the half-size complex spectrum Z into the real spectrum X.
    z0 = work_re[0]
    z1 = work_im[0]
    power[0] = (z0 + z1) * (z0 + z1)
    power[m] = (z0 - z1) * (z0 - z1)
    for k in range(1, m):
        ar = work_re[k]
        ai = work_im[k]
        br = work_re[m - k]
        bi = -work_im[m - k]
        er = 0.5 * (ar + br)  # even part
        ei = 0.5 * (ai + bi)
        orr = 0.5 * (ai - bi)  # odd part: (a - b) / 2j
        oi = -0.5 * (ar - br)
        xr = er + sp_re[k] * orr - sp_im[k] * oi
        xi = ei + sp_re[k] * oi + sp_im[k] * orr
        power[k] = xr * xr + xi * xi


class FramesFft:
    """Scratch arrays and tables for :func:`frames_power` (pass :meth:`as_args` to a kernel),
    for at most ``capacity`` frames a call."""

    def __init__(self, n_fft: int, capacity: int):
        self.n_fft = n_fft
        self.plan = make_plan(n_fft)
        self.work_re = np.zeros(n_fft // 2, dtype=np.float64)
        self.work_im = np.zeros(n_fft // 2, dtype=np.float64)
        self.allocate(capacity)

    def allocate(self, capacity: int) -> None:
        self.spectra = np.zeros((capacity, self.n_fft // 2 + 1), dtype=np.complex128)

    def as_args(self) -> tuple[np.ndarray, ...]:
        if _r2c is not None:
            return (self.spectra,)
        return (*self.plan, self.work_re, self.work_im)


if _r2c is not None:
    _r2c_impl = _r2c
    _ROW_AXIS = np.ones(1, dtype=np.int64)

    @njit(cache=True)
    def frames_power(frames, n, fft_args, power):
        """``power[f] = |rfft(frames[f])|**2`` for ``f < n`` (one batched DUCC0 call)."""
        spectra = fft_args[0]
        _r2c_impl(frames[:n], spectra[:n], _ROW_AXIS, True, 1.0, 1)
        for f in range(n):
            for k in range(power.shape[1]):
                z = spectra[f, k]
                power[f, k] = z.real * z.real + z.imag * z.imag

else:

    @njit(cache=True)
    def frames_power(frames, n, fft_args, power):
        """``power[f] = |rfft(frames[f])|**2`` for ``f < n`` (built-in FFT, frame by frame)."""
        bitrev, tw_re, tw_im, sp_re, sp_im, work_re, work_im = fft_args
        for f in range(n):
            rfft_power(frames[f], bitrev, tw_re, tw_im, sp_re, sp_im, work_re, work_im, power[f])
