"""The one small interface every inference backend implements.

The model contract (``features``, ``state`` -> ``probs``, ``state_out``; only the batch
dynamic, the beds' states rows of one batch): docs/backends.md, "The interface"."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from lungwatch.errors import LungwatchError

INPUT_NAME = "features"
STATE_NAME = "state"
PROBS_NAME = "probs"
STATE_OUT_NAME = "state_out"
STREAMING_INPUTS = (INPUT_NAME, STATE_NAME)
STREAMING_OUTPUTS = (PROBS_NAME, STATE_OUT_NAME)


@dataclass(frozen=True)
class StreamingIO:
    """Sizes without the batch: input (K, F, T), state S, output (O, N)."""

    input_shape: tuple[int, int, int]
    state_size: int
    output_shape: tuple[int, int]


class BackendError(LungwatchError):
    """A backend cannot be created or cannot run the model (the message says which and why)."""


@runtime_checkable
class Backend(Protocol):
    """``name``: what actually runs, after any fallback (``onnxruntime/CPUExecutionProvider``)."""

    name: str
    input_shape: tuple[int, int, int]
    state_size: int
    output_shape: tuple[int, int]
    max_batch: int  # the most rows one call runs at once (larger calls are split)

    def infer(self, features: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(M, K, F, T)``, ``(M, S)`` float32 -> new ``(M, O, N)`` probs, ``(M, S)`` states."""
        ...

    def close(self) -> None: ...


def check_state(state: object, rows: int, state_size: int) -> np.ndarray:
    expected = f"({rows}, {state_size})"
    if not isinstance(state, np.ndarray) or state.dtype != np.float32:
        raise BackendError(f"state must be a float32 numpy array of shape {expected}")
    if state.shape != (rows, state_size):
        raise BackendError(f"state must have shape {expected}, got {state.shape}")
    return np.ascontiguousarray(state)


def check_batch(batch: object, input_shape: tuple[int, ...]) -> np.ndarray:
    expected = "(N, " + ", ".join(str(d) for d in input_shape) + ")"
    if not isinstance(batch, np.ndarray):
        raise BackendError(
            f"batch must be a float32 numpy array of shape {expected}, got {type(batch).__name__}"
        )
    if batch.dtype != np.float32 or batch.ndim != len(input_shape) + 1:
        raise BackendError(
            f"batch must be float32 of shape {expected}, got {batch.dtype} {batch.shape}"
        )
    if tuple(batch.shape[1:]) != tuple(input_shape):
        raise BackendError(f"batch must have shape {expected}, got {batch.shape}")
    return np.ascontiguousarray(batch)


def infer_in_pieces(
    features: object,
    state: object,
    io: StreamingIO,
    max_batch: int,
    run: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """The checks and batching every backend's ``infer`` shares: ``run(features, state) ->
    (probs, new_state)`` on pieces of at most ``max_batch`` rows, joined in order."""
    x = check_batch(features, io.input_shape)
    s = check_state(state, x.shape[0], io.state_size)
    if x.shape[0] == 0:
        return np.zeros((0, *io.output_shape), np.float32), np.zeros((0, io.state_size), np.float32)
    starts = range(0, x.shape[0], max_batch)
    pieces = [run(x[i : i + max_batch], s[i : i + max_batch]) for i in starts]
    if len(pieces) == 1:
        return pieces[0]
    probs, states = zip(*pieces, strict=True)
    return np.concatenate(probs, axis=0), np.concatenate(states, axis=0)
