"""The native TensorRT 10 backend: a serialized engine run with cuda-python.

The engine (``model.plan``) is built on the device itself by ``lungwatch engine``; loading
and each call: docs/backends.md, "Native TensorRT". ``tensorrt`` (JetPack's
python3-libnvinfer) and ``cuda-python`` are imported lazily."""

from __future__ import annotations

import ctypes
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference.base import (
    INPUT_NAME,
    PROBS_NAME,
    STATE_NAME,
    STATE_OUT_NAME,
    STREAMING_INPUTS,
    STREAMING_OUTPUTS,
    BackendError,
    StreamingIO,
    infer_in_pieces,
)

LOGGER = logging.getLogger("lungwatch.backend")
MANIFEST_NAME = "manifest.json"
_FLOAT32_BYTES = 4


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise BackendError(
            "the native TensorRT backend needs the tensorrt module: install JetPack's TensorRT "
            "Python bindings (python3-libnvinfer), or pip install tensorrt on an x86 GPU host"
        ) from None
    return tensorrt


def import_cudart() -> Any:
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
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(err)[1]
        text = name.decode() if isinstance(name, bytes) else str(name)
        raise BackendError(f"CUDA call {what} failed: {text}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _pinned_array(address: int, shape: tuple[int, ...]) -> np.ndarray:
    pointer = ctypes.cast(ctypes.c_void_p(address), ctypes.POINTER(ctypes.c_float))
    return np.ctypeslib.as_array(pointer, shape=shape)


@dataclass(frozen=True)
class EngineTensor:
    """One I/O tensor of an engine as TensorRT describes it (-1: a dynamic dimension)."""

    name: str
    is_input: bool
    is_float32: bool
    shape: tuple[int, ...]


def engine_contract(tensors: Sequence[EngineTensor], where: str) -> StreamingIO:
    """Check an engine's I/O tensors against the contract; the sizes it computes."""
    inputs = tuple(t.name for t in tensors if t.is_input)
    outputs = tuple(t.name for t in tensors if not t.is_input)
    by_name = {t.name: t for t in tensors}
    if set(inputs) != set(STREAMING_INPUTS) or set(outputs) != set(STREAMING_OUTPUTS):
        raise BackendError(
            f"{where}: engine I/O must be inputs {list(STREAMING_INPUTS)} and outputs "
            f"{list(STREAMING_OUTPUTS)} (a streaming model), got inputs {list(inputs)} and "
            f"outputs {list(outputs)}"
        )
    expected = {INPUT_NAME: 4, STATE_NAME: 2, PROBS_NAME: 3, STATE_OUT_NAME: 2}
    for name, rank in expected.items():
        tensor = by_name[name]
        if not tensor.is_float32:
            raise BackendError(f"{where}: {name!r} must be float32 in the engine")
        shape = tensor.shape
        if not (len(shape) == rank and shape[0] == -1 and all(d >= 1 for d in shape[1:])):
            raise BackendError(
                f"{where}: {name!r} must have rank {rank} with only the batch dynamic, got {shape}"
            )
    x = by_name[INPUT_NAME].shape
    state, state_out = by_name[STATE_NAME].shape[1], by_name[STATE_OUT_NAME].shape[1]
    if state != state_out:
        raise BackendError(f"{where}: state ({state}) and state_out ({state_out}) differ in size")
    probs = by_name[PROBS_NAME].shape
    return StreamingIO(
        (int(x[1]), int(x[2]), int(x[3])), int(state), (int(probs[1]), int(probs[2]))
    )


def profile_batch_range(
    ranges: dict[str, tuple[tuple[int, ...], tuple[int, ...]]], where: str
) -> int:
    """The largest batch every input's optimisation profile accepts (``{name: (min, max)}``
    full shapes of profile 0); every input must accept batch 1."""
    for name, (low, _high) in ranges.items():
        if low[0] > 1:
            raise BackendError(
                f"{where}: engine profile of {name!r} must accept batch 1, min is {low}"
            )
    return min(int(high[0]) for _low, high in ranges.values())


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
        self.io, profile_max = self._check_io()
        self.input_shape, self.state_size = self.io.input_shape, self.io.state_size
        self.output_shape = self.io.output_shape
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
            "TensorRT %s runs %s (input %s, max batch %d)",
            version,
            self.engine_path.name,
            self.input_shape,
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

    def _engine_tensors(self) -> list[EngineTensor]:
        trt, engine = self._trt, self._engine
        return [
            EngineTensor(
                name,
                engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                trt.nptype(engine.get_tensor_dtype(name)) == np.float32,
                tuple(int(d) for d in engine.get_tensor_shape(name)),
            )
            for name in map(engine.get_tensor_name, range(engine.num_io_tensors))
        ]

    def _check_io(self) -> tuple[StreamingIO, int]:
        where = self.engine_path.name
        tensors = self._engine_tensors()
        io = engine_contract(tensors, where)
        inputs = [t.name for t in tensors if t.is_input]
        profiles = {name: self._engine.get_tensor_profile_shape(name, 0) for name in inputs}
        ranges = {name: (tuple(low), tuple(high)) for name, (low, _opt, high) in profiles.items()}
        return io, profile_batch_range(ranges, where)

    def _shapes(self, rows: int) -> dict[str, tuple[int, ...]]:
        return {
            INPUT_NAME: (rows, *self.input_shape),
            STATE_NAME: (rows, self.state_size),
            PROBS_NAME: (rows, *self.output_shape),
            STATE_OUT_NAME: (rows, self.state_size),
        }

    def _allocate(self) -> None:
        """Device + pinned host buffers for ``max_batch`` rows; bind addresses once."""
        cudart = self._cudart
        self._stream = _cuda_call(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        for name, shape in self._shapes(self.max_batch).items():
            nbytes = int(np.prod(shape)) * _FLOAT32_BYTES
            device = _cuda_call(cudart, cudart.cudaMalloc(nbytes), "cudaMalloc")
            self._buffers[f"device:{name}"] = int(device)
            host = _cuda_call(cudart, cudart.cudaMallocHost(nbytes), "cudaMallocHost")
            self._buffers[f"host:{name}"] = int(host)
            self._host[name] = _pinned_array(int(host), shape)
            if not self._context.set_tensor_address(name, int(device)):
                raise BackendError(f"{self.engine_path.name}: cannot bind tensor {name!r}")

    def _run_piece(self, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
        """At most ``max_batch`` rows through the engine; ``outputs`` as new arrays."""
        cudart, b = self._cudart, self._buffers
        n = next(iter(inputs.values())).shape[0]
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        shapes = self._shapes(n)
        for name, x in inputs.items():
            self._host[name][:n] = x
            if not self._context.set_input_shape(name, shapes[name]):
                raise BackendError(f"{self.name}: batch {n} is outside the engine's profile")
            self._copy(name, b[f"device:{name}"], b[f"host:{name}"], x.nbytes, h2d)
        if not self._context.execute_async_v3(int(self._stream)):
            raise BackendError(f"{self.name}: execute_async_v3 failed (see TensorRT log)")
        for name in outputs:
            nbytes = int(np.prod(shapes[name])) * _FLOAT32_BYTES
            self._copy(name, b[f"host:{name}"], b[f"device:{name}"], nbytes, d2h)
        _cuda_call(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return [self._host[name][:n].copy() for name in outputs]

    def _copy(self, name: str, dst: int, src: int, nbytes: int, kind: Any) -> None:
        copy = self._cudart.cudaMemcpyAsync(dst, src, nbytes, kind, self._stream)
        _cuda_call(self._cudart, copy, f"cudaMemcpyAsync({name})")

    def infer(self, features: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._stream is None:
            raise BackendError(f"{self.name}: backend is closed")

        def run(x: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            p, new = self._run_piece({INPUT_NAME: x, STATE_NAME: s}, STREAMING_OUTPUTS)
            return p, new

        return infer_in_pieces(features, state, self.io, self.max_batch, run)

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
