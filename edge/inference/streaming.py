"""One bed's context of a streaming model, and one inference call for every bed's chunk.

Chunks, state and look-ahead: docs/runtime.md, "The streaming model". Output ``j`` of a
stream describes network frame ``j - lookahead_frames``, so the first ``lookahead_frames``
outputs after a (re)start describe nothing and are dropped here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.inference.base import Backend
from edge.inference.manifest import StreamingInfo
from lungwatch.errors import LungwatchError


class StreamingError(LungwatchError, ValueError):
    """A streaming model was fed something of the wrong shape."""


@dataclass(frozen=True)
class OutputFrames:
    """Output frames ``first_frame, ...`` of one bed: ``probs`` (n, O), n maybe 0."""

    first_frame: int
    probs: np.ndarray


class BedState:
    def __init__(self, info: StreamingInfo, backend: Backend | None = None) -> None:
        self.info, self.backend = info, backend
        self.state = np.zeros(info.state_size, np.float32)
        self.reset()

    def reset(self, at_frame: int = 0) -> None:
        """Zero state; the next chunk's first output describes network frame ``at_frame -
        lookahead_frames`` (frames before ``at_frame`` are dropped)."""
        self.state[:] = 0.0
        self._origin = at_frame  # network frame at which the current state started
        self._next = at_frame - self.info.lookahead_frames  # frame of the next output
        self.chunks = 0

    def accept(self, probs: np.ndarray, new_state: np.ndarray) -> OutputFrames:
        """Take one chunk's outputs ``(O, N)`` and the new state; the frames they describe."""
        first = self._next
        self._next += self.info.chunk_frames
        self.chunks += 1
        self.state[:] = new_state
        skip = max(0, self._origin - first)
        return OutputFrames(first + skip, np.ascontiguousarray(probs[:, skip:].T))

    def push(self, features: np.ndarray) -> OutputFrames:
        """Run one chunk of this bed alone (``features`` (K, F, T)) on its backend."""
        if self.backend is None:
            raise StreamingError("BedState.push needs a backend (or use infer_beds)")
        return infer_beds(self.backend, [(self, features)])[0]


def infer_beds(
    backend: Backend, items: Sequence[tuple[BedState, np.ndarray]]
) -> list[OutputFrames]:
    """The chunks ``(bed, features (K, F, T))`` of many beds through the backend in pieces of
    its ``max_batch`` (never one array of the whole ward's states: docs/runtime.md); a bed's
    chunks, if several, must be consecutive and run in successive calls."""
    if not items:
        return []
    results: list[OutputFrames | None] = [None] * len(items)
    piece = max(1, int(backend.max_batch))
    pending = list(range(len(items)))
    while pending:  # one "layer" at a time: each bed's first still-pending chunk
        first: dict[int, int] = {}  # bed -> its first pending chunk
        for i in pending:
            first.setdefault(id(items[i][0]), i)
        layer = list(first.values())
        for start in range(0, len(layer), piece):
            rows = layer[start : start + piece]
            features = np.stack([items[i][1] for i in rows])
            if features.dtype != np.float32:
                raise StreamingError(f"features must be float32, got {features.dtype}")
            states = np.stack([items[i][0].state for i in rows])
            probs, new_states = backend.infer(features, states)
            expected = (len(rows), *backend.output_shape)
            if probs.shape != expected:
                raise StreamingError(
                    f"{backend.name}: expected probs {expected}, got {probs.shape}"
                )
            for row, i in enumerate(rows):
                results[i] = items[i][0].accept(probs[row], new_states[row])
        taken = set(layer)
        pending = [i for i in pending if i not in taken]
    return [r for r in results if r is not None]
