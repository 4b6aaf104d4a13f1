"""Gammatone front end: band energies of an ERB-spaced 4th-order gammatone filterbank.

Slaney's filters (``scipy.signal.gammatone(cf, "iir")``) factored in closed form into second-
order sections, each unity gain at its centre: the expanded (b, a) form holds a 4-fold pole
pair, so rounded coefficients (and root finding on them) fix the response only to ~1e-3 at
low ``cf / fs``. Centres, band power and the references: docs/frontend.md, "gammatone"."""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.signal
from numba import njit

from edge.features.base import (
    COUNTDOWN,
    WRITE_POS,
    BoundKernel,
    StreamingFrontEnd,
    as_signal,
    finish,
    normalise,
)
from edge.features.spec import FeatureSpec, n_frames
from lungwatch.config import check

#: Glasberg & Moore (1990) ERB-rate scale: ``ERB_RATE_SCALE * log10(1 + ERB_RATE_SLOPE * f)``.
ERB_RATE_SCALE = 21.4
ERB_RATE_SLOPE = 0.00437  # per Hz

#: Second-order sections per band (a 4th-order gammatone: one pole pair of multiplicity 4).
N_SECTIONS = 4
#: Columns of one section, SciPy's layout: ``b0, b1, b2, a0, a1, a2``.
SOS_COLUMNS = 6
#: Slaney's zero offsets: the zeros sit at ``r * (cos(theta) - c * sin(theta))``.
SLANEY_ZERO_OFFSETS = (
    math.sqrt(2.0) + 1.0,
    -(math.sqrt(2.0) + 1.0),
    math.sqrt(2.0) - 1.0,
    -(math.sqrt(2.0) - 1.0),
)
#: Index of ``a[8] = r**8`` and ``a[1] = -8 r cos(theta)`` in SciPy's denominator.
_A_R8, _A_COS = 8, 1

_B0, _B1, _B2, _A1, _A2 = range(5)
_N_COEFS = 5
#: Filter states below this magnitude are set to 0 at each block end: on silence they would
#: decay into float64 subnormals and stay there (slow on CPUs that trap them). 1e-150 is far
#: below any float32 sample's contribution, so no output changes.
STATE_FLUSH_BELOW = 1e-150
#: The kernel runs bands in lanes padded to a multiple of this, so LLVM's vectorised band loop
#: never falls back to a scalar remainder.
SIMD_LANE_BLOCK = 32


def hz_to_erb_rate(f_hz: np.ndarray | float) -> np.ndarray:
    return ERB_RATE_SCALE * np.log10(1.0 + ERB_RATE_SLOPE * np.asarray(f_hz, dtype=np.float64))


def erb_rate_to_hz(erb_rate: np.ndarray | float) -> np.ndarray:
    e = np.asarray(erb_rate, dtype=np.float64)
    return (10.0 ** (e / ERB_RATE_SCALE) - 1.0) / ERB_RATE_SLOPE


@functools.lru_cache(maxsize=8)
def erb_centres_hz(spec: FeatureSpec) -> np.ndarray:
    """(n_bands,) read-only centre frequencies in Hz, increasing, strictly in (fmin, fmax)."""
    points = np.linspace(
        hz_to_erb_rate(spec.fmin_hz), hz_to_erb_rate(spec.fmax_hz), spec.n_bands + 2
    )
    centres = erb_rate_to_hz(points[1:-1])
    centres.setflags(write=False)
    return centres


def _design_band(cf_hz: float, sample_rate_hz: int) -> np.ndarray:
    """Poles from SciPy's denominator, zeros from Slaney's closed form (no root finding)."""
    _, a = scipy.signal.gammatone(cf_hz, "iir", fs=sample_rate_hz)
    r = float(a[_A_R8]) ** (1.0 / 8.0)
    cos_theta = -float(a[_A_COS]) / (8.0 * r)
    sin_theta = math.sqrt(max(0.0, 1.0 - cos_theta * cos_theta))
    sections = np.zeros((N_SECTIONS, SOS_COLUMNS))
    sections[:, 0] = 1.0
    sections[:, 1] = [-r * (cos_theta - c * sin_theta) for c in SLANEY_ZERO_OFFSETS]
    sections[:, 3:] = [1.0, -2.0 * r * cos_theta, r * r]
    z_inv = np.exp(-2j * np.pi * cf_hz / sample_rate_hz) ** np.arange(3)
    gain_at_cf = np.abs(sections[:, :3] @ z_inv) / np.abs(sections[:, 3:] @ z_inv)
    sections[:, :3] /= gain_at_cf[:, None]
    return sections


@functools.lru_cache(maxsize=8)
def gammatone_sos(spec: FeatureSpec) -> np.ndarray:
    """(n_bands, N_SECTIONS, 6) read-only float64 second-order sections, SciPy's layout."""
    sos = np.stack([_design_band(float(cf), spec.sample_rate_hz) for cf in erb_centres_hz(spec)])
    sos.setflags(write=False)
    return sos


def _require_gammatone(spec: FeatureSpec) -> None:
    check(spec.kind == "gammatone", "kind", spec.kind, "'gammatone' for the gammatone front end")


def gammatone(x: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Batch form, by ``scipy.signal.sosfilt``: independent of the streaming kernel on purpose."""
    _require_gammatone(spec)
    x = as_signal(x, "signal").astype(np.float64, copy=False)
    count = n_frames(spec, x.shape[0])
    if count == 0:
        return np.zeros((0, spec.n_bands), dtype=np.float32)
    used = x[: (count - 1) * spec.hop_samples + spec.frame_samples]
    power = np.empty((count, spec.n_bands), dtype=np.float64)
    for band, sos in enumerate(gammatone_sos(spec)):
        # sosfilt's Cython core wants a writable array; the cached one is read-only.
        y = scipy.signal.sosfilt(sos.copy(), used)
        # each frame's mean of y**2 by direct sums (no running-sum cancellation)
        windows = np.lib.stride_tricks.sliding_window_view(y * y, spec.frame_samples)
        power[:, band] = windows[:: spec.hop_samples].mean(axis=-1)
    return normalise(power, spec)


@functools.lru_cache(maxsize=8)
def _kernel_coefs(spec: FeatureSpec) -> np.ndarray:
    """(N_SECTIONS, 5, n_lanes) contiguous ``b0, b1, b2, a1, a2``; padding lanes are 0."""
    sos = gammatone_sos(spec)
    n_lanes = -(-spec.n_bands // SIMD_LANE_BLOCK) * SIMD_LANE_BLOCK
    coefs = np.zeros((N_SECTIONS, _N_COEFS, n_lanes), dtype=np.float64)
    coefs[:, :, : spec.n_bands] = sos[:, :, [0, 1, 2, 4, 5]].transpose(1, 2, 0)
    coefs.setflags(write=False)
    return coefs


@njit(cache=True)
def _filter_run(x, start, stop, coefs, state, y, acc):
    """DF2T cascade over every lane, adding ``y**2`` to ``acc``. ``state`` is (2, N_SECTIONS,
    n_lanes): with z1 and z2 interleaved per section LLVM's overlap check fails and the lane
    loop runs scalar."""
    n_sections = coefs.shape[0]
    n_lanes = coefs.shape[2]
    for i in range(start, stop):
        sample = np.float64(x[i])
        for k in range(n_lanes):
            y[k] = sample
        for s in range(n_sections):
            b0, b1, b2 = coefs[s, _B0], coefs[s, _B1], coefs[s, _B2]
            a1, a2 = coefs[s, _A1], coefs[s, _A2]
            z1, z2 = state[0, s], state[1, s]
            for k in range(n_lanes):
                v = y[k]
                out = b0[k] * v + z1[k]
                z1[k] = b1[k] * v - a1[k] * out + z2[k]
                z2[k] = b2[k] * v - a2[k] * out
                y[k] = out
        for k in range(n_lanes):
            acc[k] += y[k] * y[k]


@njit(cache=True)
def _flush_tiny(state):
    flat = state.reshape(-1)
    for k in range(flat.shape[0]):
        if abs(flat[k]) < STATE_FLUSH_BELOW:
            flat[k] = 0.0


@njit(cache=True)
def _emit_frame(blocks, inv_frame, use_log, log_offset, out_row):
    """Sum the ring of block sums (n_blocks, n_lanes) into one normalised row (n_bands,)."""
    n_bands = out_row.shape[0]
    for k in range(n_bands):
        total = 0.0
        for j in range(blocks.shape[0]):
            total += blocks[j, k]
        out_row[k] = finish(total * inv_frame, use_log, log_offset)


@njit(cache=True)
def _gammatone_push(
    x,
    out,
    coefs,
    state,
    y,
    acc,
    blocks,
    counters,
    block_samples,
    hop,
    inv_frame,
    use_log,
    log_offset,
):
    """Stream ``x``: filter, sum ``y**2`` per block (``gcd(hop, frame)`` samples), emit each
    completed frame, a sum of ``blocks``' ring, to ``out``."""
    pos = counters[WRITE_POS]
    countdown = counters[COUNTDOWN]
    n_out = 0
    i = 0
    while i < x.shape[0]:
        to_block_end = countdown % block_samples
        if to_block_end == 0:
            to_block_end = block_samples
        stop = min(i + to_block_end, x.shape[0])
        _filter_run(x, i, stop, coefs, state, y, acc)
        countdown -= stop - i
        i = stop
        if countdown % block_samples != 0:
            break  # the chunk ended inside a block
        blocks[pos, :] = acc
        acc[:] = 0.0
        _flush_tiny(state)
        pos = pos + 1 if pos + 1 < blocks.shape[0] else 0
        if countdown == 0:
            _emit_frame(blocks, inv_frame, use_log, log_offset, out[n_out])
            n_out += 1
            countdown = hop
    counters[WRITE_POS] = pos
    counters[COUNTDOWN] = countdown
    return n_out


class GammatoneStream(StreamingFrontEnd):
    """Streaming gammatone energies; all state is allocated once and reset in place. A NaN or
    Inf sample makes the IIR states NaN until ``reset()``."""

    def __init__(self, spec: FeatureSpec, **kwargs: int):
        _require_gammatone(spec)
        self._coefs = _kernel_coefs(spec)
        n_lanes = self._coefs.shape[2]
        self._block_samples = math.gcd(spec.hop_samples, spec.frame_samples)
        n_blocks = spec.frame_samples // self._block_samples
        self._state = np.zeros((2, N_SECTIONS, n_lanes), dtype=np.float64)
        self._y = np.zeros(n_lanes, dtype=np.float64)
        self._acc = np.zeros(n_lanes, dtype=np.float64)
        self._blocks = np.zeros((n_blocks, n_lanes), dtype=np.float64)
        super().__init__(spec, **kwargs)

    def _reset_state(self) -> None:
        for array in (self._state, self._y, self._acc, self._blocks):
            array[...] = 0.0

    def _bind_kernel(self) -> BoundKernel:
        return BoundKernel(
            _gammatone_push,
            self._out,
            self._coefs,
            self._state,
            self._y,
            self._acc,
            self._blocks,
            self._counters,
            self._block_samples,
            self.spec.hop_samples,
            1.0 / self.spec.frame_samples,
            self.spec.normalisation == "log",
            self.spec.log_offset,
        )
