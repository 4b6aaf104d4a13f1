"""What every front-end kind shares: the streaming interface, chunk checks, normalisation.

A subclass allocates its own arrays (and whatever ``lookahead_samples`` reads) *before*
calling ``super().__init__``, which calls ``reset()``. The interface: docs/frontend.md,
"Streaming interface"."""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from numba import njit

from edge.features.spec import FeatureSpec
from lungwatch.errors import InvalidAudioError

#: Chunk size the output buffer is first sized for; a longer chunk grows it once.
DEFAULT_MAX_CHUNK_SAMPLES = 4096

# Slots of the int64 counter array that kernels update in place.
WRITE_POS = 0  # next ring index to write
COUNTDOWN = 1  # samples still needed before the next frame completes
N_COUNTERS = 2


@njit(cache=True, inline="always")
def finish(power: float, use_log: bool, log_offset: float) -> float:
    return np.log(power + log_offset) if use_log else power


def normalise(power: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Batch normalisation, the same arithmetic as :func:`finish`; returns float32."""
    if spec.normalisation == "log":
        return np.log(power + spec.log_offset).astype(np.float32)
    return power.astype(np.float32)


def silence_value(spec: FeatureSpec) -> float:
    """The feature value of digital silence: ``ln(log_offset)`` (log) or ``0`` (power)."""
    return math.log(spec.log_offset) if spec.normalisation == "log" else 0.0


def as_signal(samples: np.ndarray, source: str = "chunk") -> np.ndarray:
    """A checked 1-D real signal as a contiguous float32 or float64 array (empty allowed;
    NaN/Inf pass through for the quality gate)."""
    if (
        type(samples) is np.ndarray
        and samples.ndim == 1
        and samples.dtype.char in "fd"
        and samples.dtype.isnative
        and samples.flags.c_contiguous
    ):
        return samples  # the hot path: nothing to convert
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
    return np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))


class BoundKernel:
    """A streaming kernel ``kernel(x, out, *state) -> n_frames`` bound to one stream. Only the
    chunk's type can vary, so the compiled entry point is kept per chunk type and later chunks
    skip the checks and Numba's per-call type resolution of a dozen arguments."""

    def __init__(self, kernel: Any, out: np.ndarray, *state: Any) -> None:
        self._kernel = kernel
        self._args = (out, *state)
        self._entries: dict[tuple[np.dtype[Any], int, int], Callable[..., int]] = {}

    def __call__(self, samples: np.ndarray) -> int:
        if type(samples) is np.ndarray:
            entry = self._entries.get((samples.dtype, samples.ndim, samples.flags.num))
            if entry is not None:
                return entry(samples, *self._args)
        x = as_signal(samples)
        n: int = self._kernel(x, *self._args)
        if x is samples:  # already a valid chunk: remember its type
            key = (x.dtype, x.ndim, x.flags.num)
            self._entries[key] = self._entry_point(x)
        return n

    def _entry_point(self, x: np.ndarray) -> Callable[..., int]:
        signature = tuple(numba.typeof(value) for value in (x, *self._args))
        compiled = self._kernel.overloads.get(signature)
        return compiled.entry_point if compiled is not None else self._kernel


def max_frames_in(n_samples: int, hop_samples: int) -> int:
    return -(-n_samples // hop_samples)


class StreamingFrontEnd(abc.ABC):
    """``push(samples)`` of any length -> the frames it completed, maybe none (a view valid
    until the next push); the k-th frame ever returned is frame ``k`` of the batch function."""

    def __init__(self, spec: FeatureSpec, *, max_chunk_samples: int = DEFAULT_MAX_CHUNK_SAMPLES):
        self.spec = spec
        self._counters = np.zeros(N_COUNTERS, dtype=np.int64)
        self._allocate(max_frames_in(max_chunk_samples, spec.hop_samples))
        self.frames_emitted = 0
        self.samples_seen = 0
        self.reset()

    @property
    def n_bands(self) -> int:
        return self.spec.n_bands

    @property
    def lookahead_samples(self) -> int:
        return 0

    @property
    def first_frame_samples(self) -> int:
        """Samples that must arrive before the first frame is emitted (window + lookahead)."""
        return self.spec.frame_samples + self.lookahead_samples

    def push(self, samples: np.ndarray) -> np.ndarray:
        size = getattr(samples, "size", None)
        if size is None or size > self._max_chunk_samples:
            samples = as_signal(samples)
            size = samples.shape[0]
            if size > self._max_chunk_samples:  # only for a chunk longer than any before
                self._allocate(max_frames_in(size, self.spec.hop_samples))
        n = self._kernel(samples)
        self.frames_emitted += n
        self.samples_seen += size
        return self._out[:n]

    def reset(self) -> None:
        """Restore the initial state exactly (as if freshly constructed)."""
        self._counters[WRITE_POS] = 0
        self._counters[COUNTDOWN] = self.first_frame_samples
        self.frames_emitted = 0
        self.samples_seen = 0
        self._reset_state()

    def _allocate(self, capacity: int) -> None:
        """(Re)allocate every per-frame buffer for ``capacity`` frames per push; kinds with
        scratch buffers extend it and (re)bind their kernel there."""
        self._out = np.empty((capacity, self.n_bands), dtype=np.float32)
        self._max_chunk_samples = capacity * self.spec.hop_samples
        self._kernel = self._bind_kernel()

    @abc.abstractmethod
    def _reset_state(self) -> None:
        """Zero the kind's own state arrays in place."""

    @abc.abstractmethod
    def _bind_kernel(self) -> BoundKernel:
        """The kind's kernel bound to ``self._out`` and the stream's state."""
