"""Inference backends: config validation, onnxruntime provider fallback, the I/O contract.

Models are built here with onnx.helper: a streaming graph (``features`` ``(N, 1, 8, 16)`` and
``state`` ``(N, 3)`` in; ``probs`` ``(N, 2, 4)`` and ``state_out`` out) of two Gemms, so the
expected outputs are NumPy matrix products and no torch is needed.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.inference import DEFAULT_MAX_BATCH, Backend, BackendConfig, open_backend
from edge.inference.base import BackendError
from edge.inference.onnxruntime import (
    OrtBackend,
    create_session,
    drop_unavailable,
    provider_chain,
    provider_options,
)
from edge.inference.tensorrt import _pinned_array, check_engine_version, normalize_trt_version
from lungwatch.config import load_config, load_yaml
from lungwatch.errors import ConfigError

onnx = pytest.importorskip("onnx", reason="onnx is needed to build the test models")

INPUT_SHAPE = (1, 8, 16)
STATE_SIZE = 3
OUTPUT_SHAPE = (2, 4)


@dataclass(frozen=True)
class GemmModel:
    """An ONNX file and its weights: probs = sigmoid(flat(x) @ W.T + b) as (N, 2, 4), state_out
    = state + flat(x) @ V.T."""

    path: Path
    weight: np.ndarray
    bias: np.ndarray
    carry: np.ndarray

    def reference(self, x: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = x.reshape(x.shape[0], -1).astype(np.float64)
        logits = flat @ self.weight.T.astype(np.float64) + self.bias
        probs = 1.0 / (1.0 + np.exp(-logits))
        new = state + flat @ self.carry.T.astype(np.float64)
        return probs.reshape(-1, *OUTPUT_SHAPE).astype(np.float32), new.astype(np.float32)


def write_gemm_model(
    path: Path,
    *,
    input_name: str = "features",
    output_name: str = "probs",
    input_dims: tuple[Any, ...] = ("N", *INPUT_SHAPE),
    seed: int = 0,
) -> GemmModel:
    """Write the streaming Gemm model (opset 17, dynamic batch by default) to ``path``."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    n_in, n_out = int(np.prod(INPUT_SHAPE)), int(np.prod(OUTPUT_SHAPE))
    weight = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)
    bias = rng.standard_normal(n_out).astype(np.float32)
    carry = (rng.standard_normal((STATE_SIZE, n_in)) / np.sqrt(n_in)).astype(np.float32)
    shape = np.array([-1, *OUTPUT_SHAPE], np.int64)
    batch = input_dims[0]
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", [input_name], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "b"], ["gemm"], transB=1),
            helper.make_node("Sigmoid", ["gemm"], ["sig"]),
            helper.make_node("Reshape", ["sig", "shape"], [output_name]),
            helper.make_node("MatMul", ["flat", "Vt"], ["step"]),
            helper.make_node("Add", ["state", "step"], ["state_out"]),
        ],
        "gemm",
        [
            helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_dims)),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [batch, STATE_SIZE]),
        ],
        [
            helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, *OUTPUT_SHAPE]),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [batch, STATE_SIZE]),
        ],
        [
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(bias, "b"),
            numpy_helper.from_array(shape, "shape"),
            numpy_helper.from_array(np.ascontiguousarray(carry.T), "Vt"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return GemmModel(path, weight, bias, carry)


@pytest.fixture
def gemm(tmp_path: Path) -> GemmModel:
    return write_gemm_model(tmp_path / "model.onnx")


def _batch(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *INPUT_SHAPE)).astype(np.float32)
    return x, rng.standard_normal((n, STATE_SIZE)).astype(np.float32)


def _close(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# --- onnxruntime backend: numbers -------------------------------------------------------------


def test_ort_backend_reproduces_numpy_gemm(gemm: GemmModel) -> None:
    backend = OrtBackend(gemm.path, BackendConfig())
    x, state = _batch(5)
    probs, new_state = backend.infer(x, state)
    assert backend.input_shape == INPUT_SHAPE
    assert (backend.state_size, backend.output_shape) == (STATE_SIZE, OUTPUT_SHAPE)
    assert backend.name == "onnxruntime/CPUExecutionProvider"
    assert probs.dtype == new_state.dtype == np.float32
    assert probs.shape == (5, *OUTPUT_SHAPE)
    _close((probs, new_state), gemm.reference(x, state))
    assert isinstance(backend, Backend)
    backend.close()


class _RecordingSession:
    """A real session that also records the batch size of every run."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.batch_sizes: list[int] = []

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> Any:
        self.batch_sizes.append(feeds["features"].shape[0])
        return self.session.run(names, feeds)


def test_batch_larger_than_max_batch_is_split(gemm: GemmModel) -> None:
    backend = OrtBackend(gemm.path, BackendConfig(max_batch=4))
    recorder = _RecordingSession(backend._session)
    backend._session = recorder
    x, state = _batch(10)
    _close(backend.infer(x, state), gemm.reference(x, state))
    assert recorder.batch_sizes == [4, 4, 2]
    probs, new = backend.infer(
        np.zeros((0, *INPUT_SHAPE), np.float32), np.zeros((0, STATE_SIZE), np.float32)
    )
    assert (probs.shape, new.shape) == ((0, *OUTPUT_SHAPE), (0, STATE_SIZE))
    assert recorder.batch_sizes == [4, 4, 2]


@pytest.mark.parametrize(
    ("batch", "what"),
    [
        (np.zeros((2, 1, 8, 15), np.float32), "shape"),
        (np.zeros((2, 8, 16), np.float32), "rank"),
        (np.zeros((2, 1, 8, 16), np.float64), "dtype"),
        ([[0.0] * 16] * 8, "list"),
    ],
)
def test_bad_batch_names_expected_shape(gemm: GemmModel, batch: Any, what: str) -> None:
    backend = OrtBackend(gemm.path)
    with pytest.raises(BackendError, match=r"\(N, 1, 8, 16\)") as info:
        backend.infer(batch, np.zeros((2, STATE_SIZE), np.float32))
    assert "\n" not in str(info.value), what
    x, _ = _batch(2)
    with pytest.raises(BackendError, match=r"state must have shape \(2, 3\)"):
        backend.infer(x, np.zeros((2, 4), np.float32))


def test_closed_backend_refuses_to_run(gemm: GemmModel) -> None:
    backend = OrtBackend(gemm.path)
    backend.close()
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.infer(*_batch(1))


# --- onnxruntime backend: model contract ------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_dims": ("N", 1, 8, "T")}, "only the batch dimension dynamic"),
        ({"input_dims": (1, 1, 8, 16)}, "batch dimension must be dynamic"),
        ({"input_name": "x"}, r"model inputs must be \['features', 'state'\] .*got \['x', "),
        ({"output_name": "logits"}, r"model outputs must be \['probs', 'state_out'\], got"),
    ],
)
def test_model_breaking_the_contract_is_refused(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    path = tmp_path / "bad.onnx"
    write_gemm_model(path, **kwargs)
    with pytest.raises(BackendError, match=message):
        OrtBackend(path)


def test_missing_or_corrupt_model_file(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="model file not found"):
        OrtBackend(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\xff\xfe not a protobuf" * 8)
    with pytest.raises(BackendError, match=r"corrupt\.onnx: cannot create an onnxruntime session"):
        OrtBackend(corrupt)


# --- provider selection and fallback ----------------------------------------------------------


def test_unavailable_providers_fall_back_to_cpu_with_log_lines(
    gemm: GemmModel, caplog: pytest.LogCaptureFixture
) -> None:
    import onnxruntime as ort

    gpu = {"TensorrtExecutionProvider", "CUDAExecutionProvider"} & set(
        ort.get_available_providers()
    )
    if gpu:
        pytest.skip(f"this onnxruntime build has {sorted(gpu)}; the test needs a CPU-only build")
    caplog.set_level(logging.INFO, logger="lungwatch.backend")
    config = BackendConfig(providers=("tensorrt", "cuda", "cpu"))
    backend = OrtBackend(gemm.path, config)
    lines = [r.getMessage() for r in caplog.records if r.name == "lungwatch.backend"]
    assert lines[0] == (
        "TensorRT execution provider not available in this onnxruntime build; falling back to CUDA"
    )
    assert lines[1] == (
        "CUDA execution provider not available in this onnxruntime build; falling back to CPU"
    )
    assert lines[-1].startswith("onnxruntime runs model.onnx on CPUExecutionProvider")
    assert backend.name == "onnxruntime/CPUExecutionProvider"
    _close(backend.infer(*_batch(3)), gemm.reference(*_batch(3)))


def test_no_configured_provider_available_is_an_error(gemm: GemmModel) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build has the CUDA provider")
    with pytest.raises(BackendError, match=r"none of the configured providers \['cuda'\]"):
        OrtBackend(gemm.path, BackendConfig(providers=("cuda",)))


def test_drop_unavailable_names_each_skipped_provider() -> None:
    chain = [("TensorrtExecutionProvider", {}), ("CUDAExecutionProvider", {"device_id": "0"})]
    kept, messages = drop_unavailable(chain, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert kept == [("CUDAExecutionProvider", {"device_id": "0"})]
    assert messages == [
        "TensorRT execution provider not available in this onnxruntime build; falling back to CUDA"
    ]
    kept, messages = drop_unavailable(chain[1:], ["CPUExecutionProvider"])
    assert kept == []
    assert messages[0].endswith("falling back to nothing (no configured provider left)")


def test_tensorrt_ep_options_carry_cache_path_and_precision(tmp_path: Path) -> None:
    config = BackendConfig(
        providers=("tensorrt", "cuda", "cpu"),
        precision="int8",
        engine_cache_dir=str(tmp_path / "cache"),
        max_batch=32,
    )
    chain = provider_chain(config, tmp_path / "model.onnx", INPUT_SHAPE, STATE_SIZE)
    assert [name for name, _ in chain] == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert chain[0][1] == {
        "trt_fp16_enable": "True",
        "trt_int8_enable": "True",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(tmp_path / "cache"),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(tmp_path / "cache"),
        "trt_profile_min_shapes": "features:1x1x8x16,state:1x3",
        "trt_profile_opt_shapes": "features:32x1x8x16,state:32x3",
        "trt_profile_max_shapes": "features:32x1x8x16,state:32x3",
    }
    assert chain[1][1] == {"device_id": "0"}
    assert chain[2][1] == {}


@pytest.mark.parametrize(
    ("precision", "fp16", "int8"), [("fp32", "False", "False"), ("fp16", "True", "False")]
)
def test_tensorrt_ep_precision_flags(tmp_path: Path, precision: str, fp16: str, int8: str) -> None:
    config = BackendConfig(providers=("tensorrt",), precision=precision)  # type: ignore[arg-type]
    options = provider_options("tensorrt", config, config.cache_dir_for(tmp_path / "m.onnx"))
    assert (options["trt_fp16_enable"], options["trt_int8_enable"]) == (fp16, int8)
    assert options["trt_engine_cache_path"] == str(tmp_path / "trt_cache")
    assert "trt_profile_min_shapes" not in options


def test_session_options_follow_config(gemm: GemmModel) -> None:
    import onnxruntime as ort

    from edge.inference.onnxruntime import session_options

    options = session_options(BackendConfig(intra_op_threads=2))
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = create_session(gemm.path, BackendConfig(), [("CPUExecutionProvider", {})])
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_open_backend_onnxruntime(gemm: GemmModel) -> None:
    backend = open_backend(BackendConfig(kind="onnxruntime"), gemm.path)
    assert isinstance(backend, OrtBackend)
    _close(backend.infer(*_batch(2)), gemm.reference(*_batch(2)))


# --- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Runtime:
    backend: BackendConfig = field(default_factory=BackendConfig)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "backend:\n  providers: [gpu, cpu]\n",
            r"runtime.yaml: backend.providers must be a non-empty list of distinct names from "
            r"\('tensorrt', 'cuda', 'cpu'\), got \('gpu', 'cpu'\)",
        ),
        ("backend:\n  providers: []\n", r"backend.providers must be .*, got \(\)"),
        ("backend:\n  providers: [cpu, cpu]\n", r"backend.providers must be .*distinct"),
        ("backend:\n  kind: cuda\n", r"backend.kind must be one of .*, got 'cuda'"),
        ("backend:\n  precision: int4\n", r"backend.precision must be one of .*, got 'int4'"),
        ("backend:\n  max_batch: 0\n", r"backend.max_batch must be an integer in \[1, 4096\]"),
        ("backend:\n  intra_op_threads: 0\n", r"backend.intra_op_threads must be an integer >= 1"),
        ("backend:\n  engine_cache_dir: 3\n", r"backend.engine_cache_dir must be a string"),
    ],
)
def test_bad_backend_config_names_the_key(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "runtime.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        load_config(_Runtime, path)


def test_good_backend_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "runtime.yaml"
    path.write_text("backend:\n  providers: [tensorrt, cpu]\n  precision: fp16\n  max_batch: 8\n")
    config = load_config(_Runtime, path).backend
    assert config == BackendConfig(providers=("tensorrt", "cpu"), precision="fp16", max_batch=8)
    with pytest.raises(ConfigError, match="providers must be"):
        BackendConfig(providers=("gpu",))


# --- TensorRT backend helpers that need no GPU ------------------------------------------------


def test_pinned_array_is_a_writable_view_of_the_address() -> None:
    memory = (ctypes.c_float * 6)()
    view = _pinned_array(ctypes.addressof(memory), (2, 3))
    view[1, 2] = 7.5
    assert memory[5] == 7.5
    memory[0] = -1.0
    assert view[0, 0] == -1.0
    assert view.dtype == np.float32


@pytest.mark.parametrize(
    ("raw", "normal"), [("10.3.0", "10.3.0"), ("10.3.0.30", "10.3.0"), ("10.7", "10.7.0")]
)
def test_normalize_trt_version(raw: str, normal: str) -> None:
    assert normalize_trt_version(raw) == normal


def test_engine_from_other_tensorrt_version_is_refused(tmp_path: Path) -> None:
    import json

    engine = tmp_path / "model.plan"
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"files": {"model.plan": {"tensorrt_version": "10.3.0"}}}))
    check_engine_version(engine, "10.3.0.30")  # same major.minor.patch: accepted
    with pytest.raises(
        BackendError, match=r"TensorRT 10\.3\.0 .* rebuild it here with `lungwatch engine`"
    ):
        check_engine_version(engine, "10.7.0")


# --- the shipped model and the default batch ------------------------------------------------
SHIPPED_INT8 = Path(__file__).resolve().parents[2] / "models" / "sed" / "model.int8.onnx"
SHIPPED_WARD = SHIPPED_INT8.parents[2] / "edge" / "configs" / "ward.yaml"


def test_ward_config_uses_the_default_max_batch() -> None:
    assert (
        load_yaml(SHIPPED_WARD)["backend"]["max_batch"]
        == BackendConfig().max_batch
        == DEFAULT_MAX_BATCH
    )


@pytest.mark.skipif(not SHIPPED_INT8.is_file(), reason="the shipped INT8 model is missing")
def test_shipped_int8_outputs_do_not_depend_on_the_batch_split() -> None:
    """max_batch is a speed choice only: 40 beds' chunks split into pieces of 8 give the same
    outputs and states, bit for bit, as one call or 40 single calls."""
    rng = np.random.default_rng(3)
    whole = OrtBackend(SHIPPED_INT8, BackendConfig(max_batch=64))
    x = rng.normal(-9.0, 2.5, (40, *whole.input_shape)).astype(np.float32)
    state = np.abs(rng.standard_normal((40, whole.state_size))).astype(np.float32)
    expected = whole.infer(x, state)
    pieces = OrtBackend(SHIPPED_INT8, BackendConfig(max_batch=8)).infer(x, state)
    singles = [whole.infer(x[i : i + 1], state[i : i + 1]) for i in range(x.shape[0])]
    for k in range(2):
        np.testing.assert_array_equal(pieces[k], expected[k])
        np.testing.assert_array_equal(np.concatenate([s[k] for s in singles]), expected[k])
