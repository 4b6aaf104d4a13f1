"""Per-band running normalisation: what a stethoscope's frequency response does to log bands,
undone per bed as the stream goes.

A fixed frequency response (another stethoscope, a wearable's microphone, the gain of the
input stage) multiplies each band's power by a constant: in log features an additive offset
per band. Each band minus its running mean removes it::

    m[t] = m[t-1] + a[t] * (x[t] - m[t-1]),   a[t] = max(1 / n[t], hop / band_norm_s)
    y[t] = x[t] - m[t]

``x[t]`` is frame ``t`` of the log features (F,), ``n[t]`` the number of frames that have
moved the mean so far, frame ``t`` included: the mean is the cumulative mean of the stream
until ``band_norm_s`` of audio has passed, then an exponential mean with that time constant.
Frames of digital silence (every band within :data:`SILENT_MARGIN` of the log floor: a
detached sensor, a gap filled with zeros) leave the mean where it was. The state is the mean
(F,) and the count, in float64; the batch function runs the same kernel from a fresh state,
so a stream and the whole recording give the same numbers for any chunking.

``FeatureSpec.band_norm == "pcen"`` swaps the subtraction for per-channel energy
normalisation (PCEN, Wang et al. 2017, "Trainable frontend for robust and far-field keyword
spotting") with the same smoother schedule, silence rule and state shape. The smoother runs on
the linear power ``E[t] = exp(x[t])`` (which already holds ``log_offset``)::

    M[t] = M[t-1] + a[t] * (E[t] - M[t-1])                        (a[t] as above)
    y[t] = (E[t] / (eps + M[t])**ALPHA + DELTA)**ROOT - DELTA**ROOT
    ALPHA = 0.98, DELTA = 2, ROOT = 0.5, eps = log_offset

A fixed gain ``g`` per band (an offset ``ln g`` per log band) scales ``E`` and ``M`` alike, so
the ratio moves by ``g**(1 - ALPHA)`` only: ``g**0.02``, 1.06 for 26 dB; ``y + DELTA**ROOT``
by at most ``g**(0.02 * ROOT)`` (within 3 % for -13..+9 dB).

Numerics. Our powers are tiny (digital silence is ``log_offset`` = 1e-10; a full-scale sine
is ~0.25), so the paper's fixed ``eps`` = 1e-6 would sit 40 dB above the floor and swamp every
quiet band: the ratio would become ``E / eps**0.98``, and a quiet band's gain would no longer
cancel. ``eps`` is therefore ``log_offset``, the floor the features already carry: ``E`` and
(after the first frame of sound) ``M`` are never below it, so ``eps`` changes the ratio by at
most a factor 2**0.98 at the floor and not measurably above it, yet keeps it finite while ``M``
is still 0 (silence before the first sound). ``M`` is float64, and the ratio is taken in the
log domain, ``exp(x - ALPHA * ln(eps + M))``: no power is raised to 0.98 directly and nothing
under- or overflows (the exponent is at most ``0.98 * 23`` for a full-scale frame after a
silent start).

Output. ``y`` is used as it is, not its logarithm: the root already compresses (a ratio of 1
gives 0.32, 10 gives 2.0, 100 gives 8.7; a frame at its band's running power has the ratio
``M**0.02``, 0.6..0.97 at our levels) and frames below that level go smoothly to 0, the
offset ``DELTA`` gating the quiet background that a log would stretch out again (``ln y`` of
quiet frames is ``x - 0.98 ln M`` plus a constant: the running mean's subtraction once
more). On 60 recordings of the feature cache (log-mel, ``band_norm_s`` = 8) ``y`` has median
0.02, mean 0.10, standard deviation 0.35, 99th percentile 1.4 and maximum 19; the
mean-normalised features there have median -0.2 and 5th..95th percentiles -4.6..3.0. Both
are O(1), and the model's per-band input normalisation (the training mean and spread) takes
out the difference in scale.

Shapes: ``T`` frames, ``F`` bands.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from edge.features.base import StreamingFrontEnd, silence_value
from edge.features.spec import FeatureSpec

SILENT_MARGIN = 1.0  # a frame whose bands all lie within this of ln(log_offset) is silence
PCEN_ALPHA = 0.98  # gain normalisation exponent (Wang et al. 2017)
PCEN_DELTA = 2.0  # offset before the root compression
PCEN_ROOT = 0.5  # root compression exponent


def alpha_of(spec: FeatureSpec) -> float:
    """The exponential mean's weight per frame: ``hop / band_norm_s``."""
    return spec.hop_samples / (spec.band_norm_s * spec.sample_rate_hz)


def silent_below(spec: FeatureSpec) -> float:
    return silence_value(spec) + SILENT_MARGIN


@njit(cache=True)
def _step_weight(frame, count, alpha, silent):
    """The smoother's weight for ``frame`` (F,), shared by the running mean and PCEN: 0 for
    digital silence (every band at most ``silent``; ``count`` unchanged), else
    ``max(1 / n, alpha)`` with the frame counted into ``count`` (1,) int64."""
    for b in range(frame.shape[0]):
        if frame[b] > silent:
            count[0] += 1
            return max(1.0 / count[0], alpha)
    return 0.0


@njit(cache=True)
def _normalise_bands(frames, out, mean, count, alpha, silent):
    """``out[t] = frames[t] - m[t]`` for ``frames`` (T, F), carrying ``mean`` (F,) float64 and
    ``count`` (1,) int64 (see the module doc)."""
    n_bands = frames.shape[1]
    for t in range(frames.shape[0]):
        a = _step_weight(frames[t], count, alpha, silent)
        if a > 0.0:
            for b in range(n_bands):
                mean[b] += a * (frames[t, b] - mean[b])
        for b in range(n_bands):
            out[t, b] = frames[t, b] - mean[b]


@njit(cache=True)
def _pcen_bands(frames, out, smooth, count, alpha, silent, eps):
    """PCEN of ``frames`` (T, F) log features into ``out``, carrying the smoothed power
    ``smooth`` (F,) float64 and ``count`` (1,) int64 (see the module doc)."""
    n_bands = frames.shape[1]
    offset = PCEN_DELTA**PCEN_ROOT
    for t in range(frames.shape[0]):
        a = _step_weight(frames[t], count, alpha, silent)
        if a > 0.0:
            for b in range(n_bands):
                smooth[b] += a * (np.exp(np.float64(frames[t, b])) - smooth[b])
        for b in range(n_bands):
            ratio = np.exp(frames[t, b] - PCEN_ALPHA * np.log(eps + smooth[b]))
            out[t, b] = (ratio + PCEN_DELTA) ** PCEN_ROOT - offset


def _run(
    spec: FeatureSpec, frames: np.ndarray, out: np.ndarray, state: np.ndarray, count: np.ndarray
) -> None:
    """One call of the kernel ``spec.band_norm`` names, carrying ``state`` and ``count``."""
    if spec.band_norm == "pcen":
        _pcen_bands(frames, out, state, count, alpha_of(spec), silent_below(spec), spec.log_offset)
    else:
        _normalise_bands(frames, out, state, count, alpha_of(spec), silent_below(spec))


def normalise_bands(frames: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Batch form: (T, F) log features of a stream from its start -> (T, F) float32, by
    ``spec.band_norm`` (the running mean or PCEN)."""
    x = np.ascontiguousarray(frames, dtype=np.float32)
    out = np.empty_like(x)
    _run(spec, x, out, np.zeros(x.shape[1], np.float64), np.zeros(1, np.int64))
    return out


class BandNormStream:
    """A streaming front end followed by the per-band running normalisation that
    ``spec.band_norm`` names (its ``push`` and ``reset`` are the front end's, with the
    normalisation applied)."""

    def __init__(self, inner: StreamingFrontEnd) -> None:
        self.inner, self.spec = inner, inner.spec
        self._mean = np.zeros(inner.spec.n_bands, np.float64)  # the mean, or PCEN's M
        self._count = np.zeros(1, np.int64)
        self._out = np.empty((0, inner.spec.n_bands), np.float32)

    @property
    def lookahead_samples(self) -> int:
        return self.inner.lookahead_samples

    @property
    def frames_emitted(self) -> int:
        return self.inner.frames_emitted

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feed a chunk; the normalised frames it completed, a view valid until the next
        push (the output buffer grows only for a chunk longer than any before)."""
        frames = self.inner.push(samples)
        n = frames.shape[0]
        if n > self._out.shape[0]:
            self._out = np.empty((n, self.spec.n_bands), np.float32)
        _run(self.spec, frames, self._out, self._mean, self._count)
        return self._out[:n]

    def reset(self) -> None:
        """Restore the initial state exactly."""
        self.inner.reset()
        self._mean[:] = 0.0
        self._count[:] = 0
