"""TensorRT for the streaming model: the beds' state as engine I/O.

Here (no TensorRT): the engine build's optimisation profile covers ``state`` as well as
``features`` (trtexec argv and the Python API's shapes, from the shipped ONNX file), and the
native backend's I/O contract check accepts a streaming engine's tensors and names what is
wrong with a bad one. With TensorRT (``requires_tensorrt``): an engine built from the shipped
``models/sed/model.int8.onnx`` carries each bed's state chunk after chunk like ONNX Runtime.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.inference.base import BackendError, StreamingIO
from edge.inference.onnxruntime import OrtBackend
from edge.inference.tensorrt import (
    EngineTensor,
    TensorRTBackend,
    engine_contract,
    profile_batch_range,
)
from export import engine
from export.engine import (
    BuildPlan,
    EngineBuildError,
    read_input_shape,
    read_state_size,
    trtexec_argv,
)
from tests.export.test_engine import _require_tensorrt, write_manifest_stub

pytest.importorskip("onnx", reason="onnx reads the model's input shapes")

SED = Path(__file__).resolve().parents[2] / "models" / "sed"
SED_INT8 = SED / "model.int8.onnx"


@pytest.fixture(scope="module")
def shipped() -> tuple[StreamingIO, dict]:
    """The shipped streaming model's sizes as ONNX Runtime reads them, and its manifest."""
    if not SED_INT8.is_file():
        pytest.skip(f"{SED_INT8} is not in this checkout")
    backend = OrtBackend(SED_INT8)
    try:
        return backend.io, json.loads((SED / "manifest.json").read_text())
    finally:
        backend.close()


def _plan(onnx_path: Path, out: Path) -> BuildPlan:
    return BuildPlan(
        onnx_path,
        out,
        "int8",
        read_input_shape(onnx_path),
        read_state_size(onnx_path),
        out.parent / "timing.cache",
        max_batch=64,
        opt_batch=16,
    )


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


# --- the engine build's profile ---------------------------------------------------------------


def test_streaming_model_profile_covers_features_and_state(
    shipped: tuple[StreamingIO, dict], tmp_path: Path
) -> None:
    io, manifest = shipped
    plan = _plan(SED_INT8, tmp_path / "model.plan")
    streaming = manifest["streaming"]
    assert plan.state_size == streaming["state_size"] == io.state_size
    assert plan.input_shape[2] == streaming["chunk_frames"] * streaming["stride"]
    profiles = plan.profiles()
    assert list(profiles) == ["features", "state"]
    assert profiles["state"] == ((1, io.state_size), (16, io.state_size), (64, io.state_size))
    argv = trtexec_argv(plan, plan.out)
    feats = _dims(io.input_shape)
    for flag, batch in (("--minShapes", 1), ("--optShapes", 16), ("--maxShapes", 64)):
        expected = f"{flag}=features:{batch}x{feats},state:{batch}x{io.state_size}"
        assert expected in argv


def test_a_model_without_state_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["features"], ["probs"])],
        "no_state",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 1, 8, 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 1, 8, 16])],
    )
    path = tmp_path / "nostate.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(EngineBuildError, match=r"no input 'state' \(inputs: \['features'\]\)"):
        read_state_size(path)


def test_a_state_input_with_a_static_batch_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["state"], ["state_out"])],
        "static_state",
        [helper.make_tensor_value_info("state", TensorProto.FLOAT, [4, 32])],
        [helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [4, 32])],
    )
    path = tmp_path / "static.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(EngineBuildError, match=r"'state' must be \(batch, S\) .* got \[4, 32\]"):
        read_state_size(path)


# --- the native backend's I/O contract ----------------------------------------------------------


def _streaming_tensors(io: StreamingIO) -> list[EngineTensor]:
    return [
        EngineTensor("features", True, True, (-1, *io.input_shape)),
        EngineTensor("state", True, True, (-1, io.state_size)),
        EngineTensor("probs", False, True, (-1, *io.output_shape)),
        EngineTensor("state_out", False, True, (-1, io.state_size)),
    ]


def test_a_streaming_engine_is_recognised(shipped: tuple[StreamingIO, dict]) -> None:
    io, _ = shipped
    found = engine_contract(_streaming_tensors(io)[::-1], "model.plan")  # any tensor order
    assert found == io


def test_a_window_engine_is_refused() -> None:
    tensors = [
        EngineTensor("features", True, True, (-1, 1, 64, 200)),
        EngineTensor("logits", False, True, (-1, 8)),
    ]
    with pytest.raises(BackendError, match=r"engine I/O must be inputs \['features', 'state'\]"):
        engine_contract(tensors, "model.plan")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t[:3], r"inputs \['features', 'state'\] and outputs \['probs'\]"),
        (
            lambda t: [*t[:3], EngineTensor("state_out", False, True, (-1, 7))],
            r"state \(\d+\) and state_out \(7\) differ",
        ),
        (
            lambda t: [t[0], EngineTensor("state", True, True, (8, t[1].shape[1])), *t[2:]],
            r"'state' must have rank 2 with only the batch dynamic",
        ),
        (
            lambda t: [t[0], t[1], EngineTensor("probs", False, False, t[2].shape), t[3]],
            r"'probs' must be float32",
        ),
    ],
    ids=["no-state-out", "state-sizes-differ", "static-batch", "half-precision-io"],
)
def test_a_bad_streaming_engine_is_named(
    shipped: tuple[StreamingIO, dict], change, message: str
) -> None:
    with pytest.raises(BackendError, match=rf"^model\.plan: .*{message}"):
        engine_contract(change(_streaming_tensors(shipped[0])), "model.plan")


def test_profile_batch_range_is_the_smallest_max_over_inputs() -> None:
    ranges = {"features": ((1, 1, 64, 48), (64, 1, 64, 48)), "state": ((1, 9), (32, 9))}
    assert profile_batch_range(ranges, "model.plan") == 32
    with pytest.raises(BackendError, match=r"profile of 'state' must accept batch 1"):
        profile_batch_range({**ranges, "state": ((2, 9), (32, 9))}, "model.plan")


# --- real TensorRT (Jetson / NVIDIA GPU host) -------------------------------------------------


@pytest.mark.requires_tensorrt
def test_streaming_engine_carries_each_beds_state_like_onnxruntime(
    shipped: tuple[StreamingIO, dict], tmp_path: Path
) -> None:
    _require_tensorrt()
    io, manifest = shipped
    write_manifest_stub(tmp_path)
    onnx_path = tmp_path / SED_INT8.name
    shutil.copyfile(SED_INT8, onnx_path)
    out = tmp_path / "model.plan"
    argv = [str(onnx_path), "--out", str(out), "--precision", "int8", "--max-batch", "8"]
    assert engine.main([*argv, "--opt-batch", "4"]) == 0
    rng = np.random.default_rng(5)
    mean = np.asarray(manifest["streaming"]["flush"], np.float32)[None, :, :, None]
    beds, chunks = 11, 4  # 11 beds: pieces of 8 and 3
    x = mean + rng.standard_normal((chunks, beds, *io.input_shape)).astype(np.float32)
    ort, trt = OrtBackend(onnx_path), TensorRTBackend(out, max_batch=64)
    try:
        assert trt.io == io
        assert trt.max_batch == 8  # the engine's profile caps the configured 64
        s_ort = s_trt = np.zeros((beds, io.state_size), np.float32)
        for c in range(chunks):
            p_ort, s_ort = ort.infer(x[c], s_ort)
            p_trt, s_trt = trt.infer(x[c], s_trt)
            assert p_trt.shape == (beds, *io.output_shape)
            np.testing.assert_allclose(p_trt, p_ort, atol=5e-2)
        assert np.abs(s_trt).max() > 0  # the context was carried
    finally:
        ort.close()
        trt.close()
