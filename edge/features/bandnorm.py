"""Per-band running normalisation: a stethoscope's fixed frequency response, undone per bed.

Each log band minus its running mean. The formula and the silence rule: docs/frontend.md, "The
last, optional stage". One kernel serves stream and batch, so any chunking gives the same
numbers. Shapes: ``T`` frames, ``F`` bands."""

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
def _step_weight(frame, count, alpha, silent):
    """The smoother's weight for ``frame`` (F,): 0 for digital silence, else
    ``max(1 / n, alpha)`` with the frame counted into ``count``."""
    for b in range(frame.shape[0]):
        if frame[b] > silent:
            count[0] += 1
            return max(1.0 / count[0], alpha)
    return 0.0


@njit(cache=True)
def _normalise_bands(frames, out, mean, count, alpha, silent):
    """``out[t] = frames[t] - m[t]``, carrying ``mean`` (F,) and ``count`` (1,)."""
    n_bands = frames.shape[1]
    for t in range(frames.shape[0]):
        a = _step_weight(frames[t], count, alpha, silent)
        if a > 0.0:
            for b in range(n_bands):
                mean[b] += a * (frames[t, b] - mean[b])
        for b in range(n_bands):
            out[t, b] = frames[t, b] - mean[b]


def _run(
    spec: FeatureSpec, frames: np.ndarray, out: np.ndarray, state: np.ndarray, count: np.ndarray
) -> None:
    _normalise_bands(frames, out, state, count, alpha_of(spec), silent_below(spec))


def normalise_bands(frames: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Batch form: (T, F) log features of a stream from its start -> (T, F) float32."""
    x = np.ascontiguousarray(frames, dtype=np.float32)
    out = np.empty_like(x)
    _run(spec, x, out, np.zeros(x.shape[1], np.float64), np.zeros(1, np.int64))
    return out


class BandNormStream:
    """A streaming front end followed by the running normalisation."""

    def __init__(self, inner: StreamingFrontEnd) -> None:
        self.inner, self.spec = inner, inner.spec
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
        frames = self.inner.push(samples)
        n = frames.shape[0]
        if n > self._out.shape[0]:
            self._out = np.empty((n, self.spec.n_bands), np.float32)
        _run(self.spec, frames, self._out, self._mean, self._count)
        return self._out[:n]

    def reset(self) -> None:
        self.inner.reset()
        self._mean[:] = 0.0
        self._count[:] = 0
