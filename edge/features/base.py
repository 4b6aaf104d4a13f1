"""What every front-end kind shares: the streaming interface, chunk checks, normalisation.

A streaming front end owns its state (a ring buffer of recent samples plus whatever the kind
needs) in arrays allocated once. ``push(samples)`` runs one Numba kernel over the chunk and
returns the frames it completed; ``reset()`` restores the initial state exactly.
"""

from __future__ import annotations

import abc

import numpy as np
from numba import njit

from edge.errors import InvalidAudioError
from edge.features.spec import FeatureSpec

#: Chunk size the output buffer is first sized for; a longer chunk grows it once.
DEFAULT_MAX_CHUNK_SAMPLES = 4096

# Slots of the int64 counter array that kernels update in place.
WRITE_POS = 0  # next ring index to write
COUNTDOWN = 1  # samples still needed before the next frame completes
N_COUNTERS = 2


@njit(cache=True, inline="always")
def finish(power: float, use_log: bool, log_offset: float) -> float:
    """Apply the spec's normalisation to one band power (kernel helper)."""
    return np.log(power + log_offset) if use_log else power


def normalise(power: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Batch normalisation, the same arithmetic as :func:`finish`; returns float32."""
    if spec.normalisation == "log":
        return np.log(power + spec.log_offset).astype(np.float32)
    return power.astype(np.float32)


def as_signal(samples: np.ndarray, source: str = "chunk") -> np.ndarray:
    """Check a 1-D real signal and return it as a contiguous float32 or float64 array.

    Empty input is allowed here (a stream may deliver nothing); NaN/Inf are the quality
    gate's concern, not the front end's, and pass through.
    """
    x = np.asarray(samples)
    if x.ndim != 1:
        raise InvalidAudioError(f"{source}: expected 1-D mono samples, got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        if not np.issubdtype(x.dtype, np.floating):
            raise InvalidAudioError(
                f"{source}: expected float samples in [-1, 1], got dtype {x.dtype} "
                "(convert with edge.audio.to_float32)"
            )
        x = x.astype(np.float64)
    return np.ascontiguousarray(x)


def max_frames_in(n_samples: int, hop_samples: int) -> int:
    """Upper bound of frames one chunk of ``n_samples`` can complete."""
    return -(-n_samples // hop_samples)


class StreamingFrontEnd(abc.ABC):
    """Streaming front end: ``push(samples) -> frames``, ``reset()``.

    ``push`` returns a ``(n_new_frames, n_bands)`` float32 view into a buffer owned by the
    stream; it stays valid until the next ``push`` (copy it to keep it). Frame numbering and
    timing follow :mod:`edge.features.spec`: the k-th frame ever returned is frame ``k`` of the
    batch function on the concatenated input.
    """

    def __init__(self, spec: FeatureSpec, *, max_chunk_samples: int = DEFAULT_MAX_CHUNK_SAMPLES):
        self.spec = spec
        self._counters = np.zeros(N_COUNTERS, dtype=np.int64)
        self._out = np.empty(
            (max_frames_in(max_chunk_samples, spec.hop_samples), self.n_bands), dtype=np.float32
        )
        self.frames_emitted = 0
        self.samples_seen = 0
        self.reset()

    @property
    def n_bands(self) -> int:
        return self.spec.n_bands

    @property
    def lookahead_samples(self) -> int:
        """Samples needed beyond a frame's end before it can be emitted."""
        return 0

    @property
    def first_frame_samples(self) -> int:
        """Samples that must arrive before the first frame is emitted (window + lookahead)."""
        return self.spec.frame_samples + self.lookahead_samples

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feed a chunk of any length; return the frames it completed (maybe none)."""
        x = as_signal(samples)
        need = max_frames_in(x.shape[0], self.spec.hop_samples)
        if need > self._out.shape[0]:  # only for a chunk longer than any before
            self._out = np.empty((need, self.n_bands), dtype=np.float32)
        n = self._process(x, self._out)
        self.frames_emitted += n
        self.samples_seen += x.shape[0]
        return self._out[:n]

    def reset(self) -> None:
        """Restore the initial state exactly (as if freshly constructed)."""
        self._counters[WRITE_POS] = 0
        self._counters[COUNTDOWN] = self.first_frame_samples
        self.frames_emitted = 0
        self.samples_seen = 0
        self._reset_state()

    def frame_start_sample(self, frame_index: int) -> int:
        """Index of the first input sample of frame ``frame_index``."""
        return frame_index * self.spec.hop_samples

    @abc.abstractmethod
    def _reset_state(self) -> None:
        """Zero the kind's own state arrays in place."""

    @abc.abstractmethod
    def _process(self, x: np.ndarray, out: np.ndarray) -> int:
        """Run the kernel over ``x``, write completed frames to ``out``, return their count."""
