"""The one small interface every inference backend implements.

An exported model is stateless (DESIGN.md contract 5): one call maps a batch of feature
windows to class logits, and nothing is carried between calls. The ONNX graph contract:

- input ``features``: float32 ``(batch, n_kinds, n_bands, window_frames)``, batch dynamic,
  every other dimension static (input normalisation is inside the graph);
- output ``logits``: float32 ``(batch, n_classes)`` (softmax is applied by the caller).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from edge.errors import LungwatchError

INPUT_NAME = "features"
OUTPUT_NAME = "logits"


class BackendError(LungwatchError):
    """A backend cannot be created or cannot run the model (the message says which and why)."""


@runtime_checkable
class InferenceBackend(Protocol):
    """Runs one model. ``name`` says what actually runs (after any fallback), e.g.
    ``onnxruntime/CPUExecutionProvider`` or ``tensorrt/10.3.0``."""

    name: str
    input_shape: tuple[int, int, int]  # (n_kinds, n_bands, window_frames), without batch
    n_classes: int

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """``(N, *input_shape)`` float32 -> ``(N, n_classes)`` float32 logits (a new array)."""
        ...

    def close(self) -> None:
        """Release the session / engine and its buffers."""
        ...


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, C)`` logits, in float32."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float32)
    return exp / exp.sum(axis=1, keepdims=True)


def check_batch(batch: object, input_shape: tuple[int, ...]) -> np.ndarray:
    """Return ``batch`` as a C-contiguous float32 array of shape ``(N, *input_shape)``.

    Only the layout may change (no dtype conversion): anything that is not a float32
    ndarray of the expected shape raises :class:`BackendError` naming the expected shape.
    """
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


def batch_slices(n_rows: int, max_batch: int) -> list[slice]:
    """Consecutive slices of at most ``max_batch`` rows covering ``range(n_rows)``."""
    return [slice(start, min(start + max_batch, n_rows)) for start in range(0, n_rows, max_batch)]
