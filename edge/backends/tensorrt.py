"""The native TensorRT 10 backend: a serialized engine run with cuda-python.

The engine (``model.plan``) is built on the device itself by ``lungwatch engine``, which
records the TensorRT version in ``manifest.json`` beside it. Loading:

1. refuse an engine whose recorded TensorRT version differs from the running one;
2. deserialize it and check its I/O tensors against the contract (``features`` float32
   ``(-1, K, B, T)`` in, ``logits`` float32 ``(-1, C)`` out) and its optimisation profile;
3. allocate device buffers and pinned host buffers once, for the largest batch, and bind the
   device addresses to the execution context once.

Per call (per ``max_batch`` piece): copy into the pinned input, ``set_input_shape``, then on
one CUDA stream: host-to-device copy, ``execute_async_v3``, device-to-host copy, synchronize.

``tensorrt`` (JetPack's python3-libnvinfer) and ``cuda-python`` are imported lazily.
"""

from __future__ import annotations

import ctypes
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from edge.backends.base import (
    INPUT_NAME,
    OUTPUT_NAME,
    BackendError,
    batch_slices,
    check_batch,
)

LOGGER = logging.getLogger("lungwatch.backend")
MANIFEST_NAME = "manifest.json"
_FLOAT32_BYTES = 4


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or a one-line :class:`BackendError` saying what to install."""
    try:
        import tensorrt
    except ImportError:
        raise BackendError(
            "the native TensorRT backend needs the tensorrt module: install JetPack's TensorRT "
            "Python bindings (python3-libnvinfer), or pip install tensorrt on an x86 GPU host"
        ) from None
    return tensorrt


def import_cudart() -> Any:
    """cuda-python's runtime module (``cuda.bindings.runtime`` or the older ``cuda.cudart``)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise BackendError(
                "the native TensorRT backend needs cuda-python: pip install cuda-python "
                "(matching the device's CUDA major version)"
            ) from None
    return cudart


def normalize_trt_version(version: str) -> str:
    """``major.minor.patch`` of a TensorRT version string (``10.3.0.30`` -> ``10.3.0``)."""
    parts = re.findall(r"\d+", str(version))
    if not parts:
        raise BackendError(f"cannot read a TensorRT version from {version!r}")
    return ".".join([*parts, "0", "0"][:3])


def recorded_trt_version(engine_path: Path) -> str | None:
    """The TensorRT version recorded for ``engine_path`` in the manifest beside it, if any."""
    manifest = engine_path.parent / MANIFEST_NAME
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackendError(f"{manifest}: cannot read the manifest ({exc})") from None
    entry = data.get("files", {}).get(engine_path.name) if isinstance(data, dict) else None
    if not isinstance(entry, dict) or "tensorrt_version" not in entry:
        return None
    return str(entry["tensorrt_version"])


def check_engine_version(engine_path: Path, running_version: str) -> None:
    """Refuse an engine built by another TensorRT version (engines are not portable)."""
    recorded = recorded_trt_version(engine_path)
    if recorded is None:
        LOGGER.warning(
            "%s: no TensorRT version recorded in %s; relying on TensorRT's own check",
            engine_path.name,
            MANIFEST_NAME,
        )
        return
    if normalize_trt_version(recorded) != normalize_trt_version(running_version):
        raise BackendError(
            f"{engine_path}: engine was built with TensorRT {recorded} but this device runs "
            f"TensorRT {running_version}; rebuild it here with `lungwatch engine`"
        )


def _cuda_call(cudart: Any, result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(error, *values)`` result; raise on an error code."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(err)[1]
        text = name.decode() if isinstance(name, bytes) else str(name)
        raise BackendError(f"CUDA call {what} failed: {text}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _pinned_array(address: int, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 numpy view of pinned host memory at ``address``."""
    pointer = ctypes.cast(ctypes.c_void_p(address), ctypes.POINTER(ctypes.c_float))
    return np.ctypeslib.as_array(pointer, shape=shape)


class TensorRTBackend:
    """A TensorRT 10 engine on one CUDA stream, with buffers allocated once."""

    def __init__(self, engine_path: Path, max_batch: int = 64) -> None:
        self._trt = import_tensorrt()
        self._cudart = import_cudart()
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise BackendError(f"{self.engine_path}: engine file not found")
        version = normalize_trt_version(self._trt.__version__)
        check_engine_version(self.engine_path, version)
        self.name = f"tensorrt/{version}"
        self._buffers: dict[str, int] = {}
        self._host: dict[str, np.ndarray] = {}
        self._stream: Any = None
        self._context: Any = None
        self._engine = self._deserialize()
        self.input_shape, self.n_classes, profile_max = self._check_io()
        self.max_batch = min(max_batch, profile_max)
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendError(f"{self.engine_path}: cannot create an execution context")
        try:
            self._allocate()
        except BackendError:
            self.close()
            raise
        LOGGER.info(
            "TensorRT %s runs %s (input %s, %d classes, max batch %d)",
            version,
            self.engine_path.name,
            self.input_shape,
            self.n_classes,
            self.max_batch,
        )

    def _deserialize(self) -> Any:
        trt = self._trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            raise BackendError(
                f"{self.engine_path}: TensorRT cannot deserialize this engine (built for another "
                "device or TensorRT version?); rebuild it here with `lungwatch engine`"
            )
        return engine

    def _io_tensors(self) -> dict[str, Any]:
        """``{name: TensorIOMode}`` of the engine's I/O tensors."""
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        return {name: engine.get_tensor_mode(name) for name in names}

    def _check_io(self) -> tuple[tuple[int, int, int], int, int]:
        """Check the engine against the contract; return input shape, classes, profile max."""
        trt, engine, where = self._trt, self._engine, self.engine_path.name
        modes = self._io_tensors()
        expected = {INPUT_NAME: trt.TensorIOMode.INPUT, OUTPUT_NAME: trt.TensorIOMode.OUTPUT}
        if modes != expected:
            found = {name: str(mode) for name, mode in modes.items()}
            raise BackendError(
                f"{where}: engine I/O must be input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, "
                f"got {found}"
            )
        for name in expected:
            if trt.nptype(engine.get_tensor_dtype(name)) != np.float32:
                raise BackendError(f"{where}: {name!r} must be float32 in the engine")
        x = tuple(engine.get_tensor_shape(INPUT_NAME))
        y = tuple(engine.get_tensor_shape(OUTPUT_NAME))
        if len(x) != 4 or x[0] != -1 or min(x[1:]) < 1 or len(y) != 2 or y[0] != -1 or y[1] < 1:
            raise BackendError(
                f"{where}: engine shapes must be {INPUT_NAME} (-1, K, B, T) and "
                f"{OUTPUT_NAME} (-1, C) with only the batch dynamic, got {x} and {y}"
            )
        profile_min, _, profile_max = engine.get_tensor_profile_shape(INPUT_NAME, 0)
        if profile_min[0] > 1:
            raise BackendError(f"{where}: engine profile must accept batch 1, min is {profile_min}")
        return (int(x[1]), int(x[2]), int(x[3])), int(y[1]), int(profile_max[0])

    def _allocate(self) -> None:
        """Device + pinned host buffers for ``max_batch`` rows; bind addresses once."""
        cudart = self._cudart
        self._stream = _cuda_call(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        shapes = {
            INPUT_NAME: (self.max_batch, *self.input_shape),
            OUTPUT_NAME: (self.max_batch, self.n_classes),
        }
        for name, shape in shapes.items():
            nbytes = int(np.prod(shape)) * _FLOAT32_BYTES
            device = _cuda_call(cudart, cudart.cudaMalloc(nbytes), "cudaMalloc")
            self._buffers[f"device:{name}"] = int(device)
            host = _cuda_call(cudart, cudart.cudaMallocHost(nbytes), "cudaMallocHost")
            self._buffers[f"host:{name}"] = int(host)
            self._host[name] = _pinned_array(int(host), shape)
            if not self._context.set_tensor_address(name, int(device)):
                raise BackendError(f"{self.engine_path.name}: cannot bind tensor {name!r}")

    def _run_piece(self, x: np.ndarray) -> np.ndarray:
        """One piece of at most ``max_batch`` rows through the engine."""
        cudart, n = self._cudart, x.shape[0]
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._host[INPUT_NAME][:n] = x
        in_bytes = x.nbytes
        out_bytes = n * self.n_classes * _FLOAT32_BYTES
        if not self._context.set_input_shape(INPUT_NAME, (n, *self.input_shape)):
            raise BackendError(f"{self.name}: batch {n} is outside the engine's profile")
        b = self._buffers
        _cuda_call(
            cudart,
            cudart.cudaMemcpyAsync(
                b[f"device:{INPUT_NAME}"], b[f"host:{INPUT_NAME}"], in_bytes, h2d, self._stream
            ),
            "cudaMemcpyAsync(input)",
        )
        if not self._context.execute_async_v3(int(self._stream)):
            raise BackendError(f"{self.name}: execute_async_v3 failed (see TensorRT log)")
        _cuda_call(
            cudart,
            cudart.cudaMemcpyAsync(
                b[f"host:{OUTPUT_NAME}"], b[f"device:{OUTPUT_NAME}"], out_bytes, d2h, self._stream
            ),
            "cudaMemcpyAsync(output)",
        )
        _cuda_call(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return self._host[OUTPUT_NAME][:n].copy()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """``(N, K, B, T)`` float32 -> ``(N, n_classes)`` float32 logits, in max_batch pieces."""
        if self._stream is None:
            raise BackendError(f"{self.name}: backend is closed")
        x = check_batch(batch, self.input_shape)
        if x.shape[0] == 0:
            return np.zeros((0, self.n_classes), dtype=np.float32)
        parts = [self._run_piece(x[rows]) for rows in batch_slices(x.shape[0], self.max_batch)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def close(self) -> None:
        """Free the buffers and the stream, then drop the context and engine (idempotent)."""
        cudart = self._cudart
        self._host = {}
        for key, address in self._buffers.items():
            free = cudart.cudaFreeHost if key.startswith("host:") else cudart.cudaFree
            free(address)
        self._buffers = {}
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = None
        self._engine = None
