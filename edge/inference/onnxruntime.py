"""The onnxruntime backend: one session, providers tried in the configured order (selection
and log lines: docs/backends.md, "onnxruntime: provider order, fallback and log lines").
``session.get_providers()`` decides what is reported: onnxruntime may drop a provider silently."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference.base import (
    INPUT_NAME,
    STATE_NAME,
    STREAMING_INPUTS,
    STREAMING_OUTPUTS,
    BackendError,
    StreamingIO,
    infer_in_pieces,
)
from edge.inference.config import BackendConfig

LOGGER = logging.getLogger("lungwatch.backend")

ORT_PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
DISPLAY_NAMES = {"tensorrt": "TensorRT", "cuda": "CUDA", "cpu": "CPU"}

ProviderSpec = tuple[str, dict[str, str]]  # (onnxruntime provider name, its options)


def provider_options(
    provider: str,
    config: BackendConfig,
    cache_dir: Path,
    input_shape: tuple[int, ...] | None = None,
    state_size: int | None = None,
) -> dict[str, str]:
    """TensorRT EP: a profile for batches 1..max_batch, so no batch size rebuilds the engine."""
    if provider == "tensorrt":
        options = {
            "trt_fp16_enable": str(config.precision in ("fp16", "int8")),
            "trt_int8_enable": str(config.precision == "int8"),
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(cache_dir),
        }
        if input_shape is not None:
            shapes = {INPUT_NAME: "x".join(str(d) for d in input_shape)}
            if state_size is not None:
                shapes[STATE_NAME] = str(state_size)
            for key, batch in (("min", 1), ("opt", config.max_batch), ("max", config.max_batch)):
                options[f"trt_profile_{key}_shapes"] = ",".join(
                    f"{name}:{batch}x{dims}" for name, dims in shapes.items()
                )
        return options
    if provider == "cuda":
        return {"device_id": "0"}
    if provider == "cpu":
        return {}
    raise BackendError(f"unknown execution provider {provider!r}; use one of {list(ORT_PROVIDERS)}")


def provider_chain(
    config: BackendConfig,
    model_path: Path,
    input_shape: tuple[int, ...] | None = None,
    state_size: int | None = None,
) -> list[ProviderSpec]:
    cache_dir = config.cache_dir_for(model_path)
    return [
        (ORT_PROVIDERS[p], provider_options(p, config, cache_dir, input_shape, state_size))
        for p in config.providers
    ]


def _display(ort_name: str) -> str:
    return next((DISPLAY_NAMES[k] for k, n in ORT_PROVIDERS.items() if n == ort_name), ort_name)


def _next_name(chain: list[ProviderSpec], index: int) -> str:
    if index + 1 < len(chain):
        return _display(chain[index + 1][0])
    return "nothing (no configured provider left)"


def drop_unavailable(
    chain: list[ProviderSpec], available: list[str]
) -> tuple[list[ProviderSpec], list[str]]:
    messages = [
        f"{_display(name)} execution provider not available in this onnxruntime "
        f"build; falling back to {_next_name(chain, index)}"
        for index, (name, _) in enumerate(chain)
        if name not in available
    ]
    return [spec for spec in chain if spec[0] in available], messages


def session_options(config: BackendConfig) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def describe_io(session: Any, source: str) -> StreamingIO:
    """Check the model's I/O against the contract (:mod:`edge.inference.base`); its sizes."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    in_names = [i.name for i in inputs]
    if in_names != list(STREAMING_INPUTS):
        raise BackendError(
            f"{source}: model inputs must be {list(STREAMING_INPUTS)} (a streaming model), "
            f"got {in_names}"
        )
    out_names = [o.name for o in outputs]
    if out_names != list(STREAMING_OUTPUTS):
        raise BackendError(
            f"{source}: model outputs must be {list(STREAMING_OUTPUTS)}, got {out_names}"
        )
    (x, state), (probs, state_out) = inputs, outputs
    for tensor, rank in ((x, 4), (state, 2), (probs, 3), (state_out, 2)):
        _check_tensor(tensor.name, tensor.type, list(tensor.shape), rank, source)
    if state.shape[1] != state_out.shape[1]:
        raise BackendError(
            f"{source}: state {state.shape} and state_out {state_out.shape} differ in size"
        )
    return StreamingIO(
        (int(x.shape[1]), int(x.shape[2]), int(x.shape[3])),
        int(state.shape[1]),
        (int(probs.shape[1]), int(probs.shape[2])),
    )


def _is_static(dim: object) -> bool:
    return isinstance(dim, int) and not isinstance(dim, bool) and dim > 0


def _check_tensor(name: str, type_: str, shape: list[Any], rank: int, source: str) -> None:
    if type_ != "tensor(float)":
        raise BackendError(f"{source}: {name!r} must be float32, got {type_}")
    if len(shape) != rank:
        raise BackendError(f"{source}: {name!r} must have {rank} dimensions, got {shape}")
    if _is_static(shape[0]):
        raise BackendError(f"{source}: {name!r} batch dimension must be dynamic, got {shape}")
    if not all(_is_static(d) for d in shape[1:]):
        raise BackendError(
            f"{source}: {name!r} may have only the batch dimension dynamic, got {shape}"
        )


def create_session(model_path: Path, config: BackendConfig, chain: list[ProviderSpec]) -> Any:
    """A session on the first provider set that works: ``chain``, then ``chain[1:]``, ..."""
    import onnxruntime as ort

    last_error = "no configured execution provider is available"
    for index in range(len(chain)):
        try:
            return ort.InferenceSession(
                str(model_path),
                sess_options=session_options(config),
                providers=[name for name, _ in chain[index:]],
                provider_options=[options for _, options in chain[index:]],
            )
        except Exception as exc:  # onnxruntime raises its own pybind error types
            last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            LOGGER.warning(
                "%s execution provider failed to create a session for %s (%s); falling back to %s",
                _display(chain[index][0]),
                model_path.name,
                last_error,
                _next_name(chain, index),
            )
    raise BackendError(f"{model_path}: cannot create an onnxruntime session ({last_error})")


class OrtBackend:
    def __init__(self, model_path: Path, config: BackendConfig | None = None) -> None:
        self.config = config or BackendConfig()
        self.max_batch = self.config.max_batch
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise BackendError(f"{self.model_path}: model file not found")
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError(
                "the onnxruntime backend needs onnxruntime (pip install 'lungwatch[edge]', "
                "or onnxruntime-gpu / Jetson's onnxruntime wheel for GPU providers)"
            ) from None
        chain = self._available_chain(ort.get_available_providers())
        self._session: Any = create_session(self.model_path, self.config, chain)
        self.io = describe_io(self._session, self.model_path.name)
        self.input_shape, self.state_size = self.io.input_shape, self.io.state_size
        self.output_shape = self.io.output_shape
        self.name = f"onnxruntime/{self._report_providers(chain)}"

    def _available_chain(self, available: list[str]) -> list[ProviderSpec]:
        probe = "tensorrt" in self.config.providers and ORT_PROVIDERS["tensorrt"] in available
        input_shape, state_size = self._probe_input_shape() if probe else (None, None)
        chain = provider_chain(self.config, self.model_path, input_shape, state_size)
        kept, messages = drop_unavailable(chain, available)
        for message in messages:
            LOGGER.warning("%s", message)
        if not kept:
            raise BackendError(
                f"none of the configured providers {list(self.config.providers)} is available "
                f"in this onnxruntime build (it has {available}); add 'cpu' to backend.providers"
            )
        return kept

    def _probe_input_shape(self) -> tuple[tuple[int, int, int], int]:
        """From a CPU session, for the TensorRT EP's profile shapes."""
        cpu_only = BackendConfig(providers=("cpu",), intra_op_threads=1)
        probe = create_session(self.model_path, cpu_only, provider_chain(cpu_only, self.model_path))
        io = describe_io(probe, self.model_path.name)
        return io.input_shape, io.state_size

    def _report_providers(self, chain: list[ProviderSpec]) -> str:
        actual = list(self._session.get_providers())
        running = actual[0] if actual else "unknown"
        if running != chain[0][0]:
            LOGGER.warning(
                "%s execution provider did not load for %s; running on %s instead",
                _display(chain[0][0]),
                self.model_path.name,
                running,
            )
        LOGGER.info(
            "onnxruntime runs %s on %s (session providers: %s)",
            self.model_path.name,
            running,
            ", ".join(actual),
        )
        return running

    def infer(self, features: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._session is None:
            raise BackendError(f"{self.name}: backend is closed")
        session = self._session

        def run(x: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            p, new = session.run(list(STREAMING_OUTPUTS), {INPUT_NAME: x, STATE_NAME: s})
            return np.asarray(p, dtype=np.float32), np.asarray(new, dtype=np.float32)

        return infer_in_pieces(features, state, self.io, self.config.max_batch, run)

    def close(self) -> None:
        """Drop the session (idempotent)."""
        self._session = None
