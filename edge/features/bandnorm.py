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

Shapes: ``T`` frames, ``F`` bands.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from edge.features.base import StreamingFrontEnd, silence_value
from edge.features.spec import FeatureSpec

SILENT_MARGIN = 1.0  # a frame whose bands all lie within this of ln(log_offset) is silence


def alpha_of(spec: FeatureSpec) -> float:
    """The exponential mean's weight per frame: ``hop / band_norm_s``."""
    return spec.hop_samples / (spec.band_norm_s * spec.sample_rate_hz)


def silent_below(spec: FeatureSpec) -> float:
    return silence_value(spec) + SILENT_MARGIN


@njit(cache=True)
def _normalise_bands(frames, out, mean, count, alpha, silent):
    """``out[t] = frames[t] - m[t]`` for ``frames`` (T, F), carrying ``mean`` (F,) float64 and
    ``count`` (1,) int64 (see the module doc)."""
    n_bands = frames.shape[1]
    for t in range(frames.shape[0]):
        sound = False
        for b in range(n_bands):
            if frames[t, b] > silent:
                sound = True
                break
        if sound:
            count[0] += 1
            a = max(1.0 / count[0], alpha)
            for b in range(n_bands):
                mean[b] += a * (frames[t, b] - mean[b])
        for b in range(n_bands):
            out[t, b] = frames[t, b] - mean[b]


def normalise_bands(frames: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Batch form: (T, F) log features of a stream from its start -> (T, F) float32."""
    x = np.ascontiguousarray(frames, dtype=np.float32)
    out = np.empty_like(x)
    mean = np.zeros(x.shape[1], np.float64)
    _normalise_bands(x, out, mean, np.zeros(1, np.int64), alpha_of(spec), silent_below(spec))
    return out


class BandNormStream:
    """A streaming front end followed by the per-band running normalisation (its ``push`` and
    ``reset`` are the front end's, with the normalisation applied)."""

    def __init__(self, inner: StreamingFrontEnd) -> None:
        self.inner, self.spec = inner, inner.spec
        self._alpha, self._silent = alpha_of(inner.spec), silent_below(inner.spec)
        self._mean = np.zeros(inner.spec.n_bands, np.float64)
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
        _normalise_bands(frames, self._out, self._mean, self._count, self._alpha, self._silent)
        return self._out[:n]

    def reset(self) -> None:
        """Restore the initial state exactly."""
        self.inner.reset()
        self._mean[:] = 0.0
        self._count[:] = 0
