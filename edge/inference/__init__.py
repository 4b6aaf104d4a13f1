"""Inference backends: configuration and the one factory the runtime calls. Backend modules
import their runtimes lazily, so importing this package costs nothing."""

from __future__ import annotations

from pathlib import Path

from edge.inference.base import INPUT_NAME, Backend, BackendError
from edge.inference.config import (
    BACKEND_KINDS,
    DEFAULT_MAX_BATCH,
    PRECISIONS,
    PROVIDERS,
    BackendConfig,
)

__all__ = [
    "BACKEND_KINDS",
    "DEFAULT_MAX_BATCH",
    "INPUT_NAME",
    "PRECISIONS",
    "PROVIDERS",
    "Backend",
    "BackendConfig",
    "BackendError",
    "open_backend",
]


def open_backend(config: BackendConfig, model_path: Path) -> Backend:
    """Open the backend ``config.kind`` on ``model_path`` (``.onnx`` or ``.plan``)."""
    if config.kind == "tensorrt":
        from edge.inference.tensorrt import TensorRTBackend

        return TensorRTBackend(Path(model_path), max_batch=config.max_batch)
    from edge.inference.onnxruntime import OrtBackend

    return OrtBackend(Path(model_path), config)
