"""``lungwatch engine``: trtexec argv, shapes from ONNX, the no-TensorRT path, the manifest.

Tests marked ``requires_tensorrt`` build real engines and compare the native TensorRT backend
with onnxruntime; they skip (with the reason) where TensorRT 10 or cuda-python is missing.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.inference import BackendConfig, open_backend
from edge.inference.base import BackendError
from edge.inference.onnxruntime import OrtBackend
from edge.inference.tensorrt import (
    TensorRTBackend,
    check_engine_version,
    import_cudart,
    normalize_trt_version,
)
from export import engine
from export.engine import (
    NO_TENSORRT,
    BuildPlan,
    EngineBuildError,
    builder_flags,
    choose_builder,
    parse_trtexec_version,
    profile_shapes,
    read_input_shape,
    strongly_typed,
    timing_cache_path,
    trtexec_argv,
    trtexec_version,
)
from tests.edge.test_backends import INPUT_SHAPE, OUTPUT_SHAPE, STATE_SIZE, write_gemm_model

pytest.importorskip("onnx", reason="onnx is needed to build the test models")


def write_manifest_stub(folder: Path) -> Path:
    """The part of a model folder's manifest.json that recording an engine touches."""
    path = folder / "manifest.json"
    path.write_text(json.dumps({"schema_version": 2, "files": {}}))
    return path


@pytest.fixture
def gemm_path(tmp_path: Path) -> Path:
    """A streaming Gemm ONNX model in a model folder that has a manifest."""
    write_manifest_stub(tmp_path)
    return write_gemm_model(tmp_path / "model.onnx").path


def _plan(tmp_path: Path, precision: str) -> BuildPlan:
    return BuildPlan(
        onnx_path=tmp_path / "model.int8.onnx",
        out=tmp_path / "model.plan",
        precision=precision,
        input_shape=(1, 64, 40),
        state_size=100,
        timing_cache=tmp_path / "timing.cache",
        max_batch=32,
        opt_batch=8,
        workspace_mib=512,
    )


# --- pure functions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("precision", "flag"), [("fp16", "--fp16"), ("int8", "--int8"), ("best", "--best")]
)
def test_trtexec_argv_per_precision(tmp_path: Path, precision: str, flag: str) -> None:
    plan = _plan(tmp_path, precision)
    argv = trtexec_argv(plan, tmp_path / ".model.plan.tmp", trtexec="/opt/trtexec")
    assert argv == [
        "/opt/trtexec",
        f"--onnx={tmp_path / 'model.int8.onnx'}",
        f"--saveEngine={tmp_path / '.model.plan.tmp'}",
        flag,
        "--minShapes=features:1x1x64x40,state:1x100",
        "--optShapes=features:8x1x64x40,state:8x100",
        "--maxShapes=features:32x1x64x40,state:32x100",
        f"--timingCacheFile={tmp_path / 'timing.cache'}",
        "--memPoolSize=workspace:512M",
        "--skipInference",
    ]


@pytest.mark.parametrize(
    ("version", "typed"),
    [
        ("10.3.0", False),
        ("10.13.3.9", False),
        ("11.0.0", True),
        ("11.4.0.106", True),
        (None, False),
    ],
)
def test_strong_typing_from_the_version(version: str | None, typed: bool) -> None:
    assert strongly_typed(version) is typed


def test_builder_flags_per_version() -> None:
    assert builder_flags("fp16", "10.3.0") == ("FP16",)
    assert builder_flags("int8", "10.3.0") == ("INT8",)
    assert builder_flags("best", "10.3.0") == ("FP16", "INT8")
    assert builder_flags("int8", None) == ("INT8",)
    assert builder_flags("int8", "11.4.0") == ()  # the Q/DQ nodes carry the INT8 precision
    for precision in ("fp16", "best"):
        with pytest.raises(EngineBuildError, match=rf"--precision {precision}: TensorRT 11\.4\.0"):
            builder_flags(precision, "11.4.0")


def test_trtexec_argv_strongly_typed(tmp_path: Path) -> None:
    weak = trtexec_argv(_plan(tmp_path, "int8"), tmp_path / "e", "/opt/trtexec", "10.3.0")
    typed = trtexec_argv(_plan(tmp_path, "int8"), tmp_path / "e", "/opt/trtexec", "11.4.0")
    assert "--int8" in weak
    assert typed == [a for a in weak if a != "--int8"]
    with pytest.raises(EngineBuildError, match="use TensorRT 10"):
        trtexec_argv(_plan(tmp_path, "best"), tmp_path / "e", "/opt/trtexec", "11.4.0")


def test_profile_shapes() -> None:
    assert profile_shapes((1, 8, 16), max_batch=64, opt_batch=16) == (
        (1, 1, 8, 16),
        (16, 1, 8, 16),
        (64, 1, 8, 16),
    )


def test_input_shape_read_from_a_real_onnx_file(gemm_path: Path, tmp_path: Path) -> None:
    assert read_input_shape(gemm_path) == INPUT_SHAPE
    dynamic_t = write_gemm_model(tmp_path / "dyn.onnx", input_dims=("N", 1, 8, "T")).path
    with pytest.raises(EngineBuildError, match=r"only the batch dynamic, got \['N', 1, 8, 'T'\]"):
        read_input_shape(dynamic_t)
    renamed = write_gemm_model(tmp_path / "renamed.onnx", input_name="x").path
    with pytest.raises(EngineBuildError, match=r"no input 'features' \(inputs: \['x', 'state'\]"):
        read_input_shape(renamed)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\xff\xfe garbage" * 8)
    with pytest.raises(EngineBuildError, match="cannot read the ONNX model"):
        read_input_shape(corrupt)


def test_timing_cache_defaults_beside_the_engine(tmp_path: Path) -> None:
    out = tmp_path / "engines" / "model.plan"
    assert timing_cache_path(out) == tmp_path / "engines" / "timing.cache"
    assert timing_cache_path(out, tmp_path / "shared.cache") == tmp_path / "shared.cache"


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("[08/01/2025-10:00:00] [I] TensorRT version: 10.3.0\n", "10.3.0"),
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --onnx=m.onnx", "10.3.0"),
        ("&&&& PASSED TensorRT.trtexec [TensorRT v101100] # trtexec", "10.11.0"),
        ("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec", "8.6.1"),
        ("no version here", None),
    ],
)
def test_trtexec_version_parsed(text: str, version: str | None) -> None:
    assert parse_trtexec_version(text) == version


def test_choose_builder() -> None:
    assert choose_builder(True, "/usr/bin/trtexec", use_trtexec=False) == "python-api"
    assert choose_builder(True, "/usr/bin/trtexec", use_trtexec=True) == "trtexec"
    assert choose_builder(False, "/usr/bin/trtexec", use_trtexec=False) == "trtexec"
    assert choose_builder(True, None, use_trtexec=False) == "python-api"
    with pytest.raises(EngineBuildError, match="--use-trtexec: trtexec not found"):
        choose_builder(True, None, use_trtexec=True)
    with pytest.raises(EngineBuildError, match="engines must be built on the target device"):
        choose_builder(False, None, use_trtexec=False)


# --- a stand-in trtexec (a script, not TensorRT): the argv and the bookkeeping around it -------


def write_stand_in_trtexec(folder: Path, code: int) -> tuple[Path, Path]:
    """An executable that prints trtexec's banner for TensorRT ``code`` (``v110400``), appends
    its argv to ``argv.log`` and writes a placeholder (not an engine) to ``--saveEngine``."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "argv.log"
    script = folder / "trtexec"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"print('&&&& RUNNING TensorRT.trtexec [TensorRT v{code}] # trtexec', *sys.argv[1:])\n"
        f"with open({str(log)!r}, 'a') as log:\n"
        "    log.write(' '.join(sys.argv[1:]) + '\\n')\n"
        "for arg in sys.argv[1:]:\n"
        "    if arg.startswith('--saveEngine='):\n"
        "        open(arg.split('=', 1)[1], 'wb').write(b'placeholder, not an engine')\n"
    )
    script.chmod(0o755)
    return script, log


def test_trtexec_version_read_from_its_banner(tmp_path: Path) -> None:
    script, log = write_stand_in_trtexec(tmp_path / "bin", 110400)
    assert trtexec_version(str(script)) == "11.4.0"
    assert log.read_text() == "--help\n"
    mute = tmp_path / "mute"
    mute.write_text("#!/bin/sh\nexit 1\n")
    mute.chmod(0o755)
    assert trtexec_version(str(mute)) is None  # unknown: built as TensorRT 10
    with pytest.raises(EngineBuildError, match=r"absent: cannot run trtexec --help"):
        trtexec_version(str(tmp_path / "absent"))


@pytest.mark.parametrize(
    ("code", "flag", "typed"), [(100300, "--int8", False), (110400, None, True)]
)
def test_main_with_trtexec_passes_the_precision_flag_its_version_has(
    monkeypatch: pytest.MonkeyPatch,
    gemm_path: Path,
    tmp_path: Path,
    code: int,
    flag: str | None,
    typed: bool,
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    script, log = write_stand_in_trtexec(tmp_path / "bin", code)
    monkeypatch.setenv("PATH", str(script.parent))
    out = tmp_path / "model.plan"
    assert engine.main([str(gemm_path), "--precision", "int8", "--out", str(out)]) == 0
    help_call, build_call = log.read_text().splitlines()
    assert help_call == "--help"
    assert ("--int8" in build_call.split()) is (flag is not None)
    assert not {"--fp16", "--best"} & set(build_call.split())
    entry = json.loads((tmp_path / "manifest.json").read_text())["files"]["model.plan"]
    assert entry["strongly_typed"] is typed
    assert entry["tensorrt_version"] == ("11.4.0" if typed else "10.3.0")


def test_main_refuses_fp16_on_a_strongly_typed_trtexec_before_building(
    monkeypatch: pytest.MonkeyPatch,
    gemm_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    script, log = write_stand_in_trtexec(tmp_path / "bin", 110400)
    monkeypatch.setenv("PATH", str(script.parent))
    out = tmp_path / "model.plan"
    assert engine.main([str(gemm_path), "--precision", "fp16", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--precision fp16: TensorRT 11.4.0 builds strongly typed networks only" in err
    assert log.read_text() == "--help\n"  # asked its version, built nothing
    assert not out.exists()
    assert "model.plan" not in (tmp_path / "manifest.json").read_text()


# --- main() without TensorRT ------------------------------------------------------------------


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No tensorrt module and no trtexec anywhere (PATH holds only an empty folder)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(engine, "TRTEXEC_LOCATIONS", ())


@pytest.mark.usefixtures("no_tensorrt")
def test_without_tensorrt_main_exits_1_with_one_line(
    gemm_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.plan"
    code = engine.main([str(gemm_path), "--precision", "int8", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err == f"lungwatch engine: error: {NO_TENSORRT}\n"
    assert "python3-libnvinfer" in captured.err
    assert "built on the target device" in captured.err
    assert not out.exists()
    assert "model.plan" not in (tmp_path / "manifest.json").read_text()


@pytest.mark.usefixtures("no_tensorrt")
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--use-trtexec"], "--use-trtexec: trtexec not found"),
        (["--max-batch", "4", "--opt-batch", "8"], r"--opt-batch must be in \[1, --max-batch=4\]"),
        (["--workspace-mib", "0"], "--workspace-mib must be >= 1"),
    ],
)
def test_main_bad_requests_exit_1(
    gemm_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    argv = [str(gemm_path), "--precision", "fp16", "--out", str(tmp_path / "m.plan"), *extra]
    assert engine.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("lungwatch engine: error: ")
    assert re.search(message, err)


def test_main_missing_onnx_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(tmp_path / "absent.onnx"), "--precision", "fp16", "--out", str(tmp_path / "m")]
    assert engine.main(argv) == 1
    assert "absent.onnx: ONNX model not found" in capsys.readouterr().err


def test_engine_must_go_into_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(EngineBuildError, match=r"no manifest\.json beside .*model\.plan"):
        engine.manifest_beside(tmp_path / "model.plan")
    manifest = write_manifest_stub(tmp_path)
    assert engine.manifest_beside(tmp_path / "model.plan") == manifest


def test_tensorrt_backend_without_tensorrt_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendError, match="python3-libnvinfer") as info:
        TensorRTBackend(tmp_path / "model.plan")
    assert "\n" not in str(info.value)
    with pytest.raises(BackendError, match=r"install JetPack's TensorRT Python bindings"):
        open_backend(BackendConfig(kind="tensorrt"), tmp_path / "model.plan")


# --- manifest record (no engine is built: a placeholder file only tests the bookkeeping) ------


def test_engine_record_round_trips_through_the_manifest(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "best")
    write_manifest_stub(tmp_path)
    write_gemm_model(plan.onnx_path)
    plan.out.write_bytes(b"placeholder for the manifest round trip, not an engine")
    extra = engine.engine_extra(
        plan, "10.3.0", "trtexec", {"name": "Orin", "compute_capability": "8.7"}
    )
    manifest = engine.record_engine(plan, extra)
    entry = json.loads(manifest.read_text())["files"]["model.plan"]
    assert entry["tensorrt_version"] == "10.3.0"
    assert entry["precision"] == "best"
    assert entry["max_batch"] == 32
    assert entry["built_with"] == "trtexec"
    assert entry["device"] == {"name": "Orin", "compute_capability": "8.7"}
    assert entry["bytes"] == plan.out.stat().st_size
    assert entry["source"] == "model.int8.onnx"
    assert len(entry["source_sha256"]) == 64
    check_engine_version(plan.out, "10.3.0")
    with pytest.raises(BackendError, match="rebuild it here with `lungwatch engine`"):
        check_engine_version(plan.out, "10.7.0")


# --- real TensorRT (Jetson / NVIDIA GPU host) -------------------------------------------------


def _require_tensorrt() -> Any:
    trt = pytest.importorskip(
        "tensorrt",
        reason="TensorRT Python bindings not installed (Jetson: python3-libnvinfer; x86 GPU host)",
    )
    if int(normalize_trt_version(trt.__version__).split(".")[0]) < 10:
        pytest.skip(f"needs TensorRT >= 10, found {trt.__version__}")
    try:
        import_cudart()
    except BackendError as exc:
        pytest.skip(str(exc))
    return trt


def write_qdq_model(path: Path, seed: int = 0) -> None:
    """The streaming Gemm model of :func:`write_gemm_model` with explicit INT8 Q/DQ on the
    features and the weights of its output Gemm (opset 17)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    n_in, n_out = int(np.prod(INPUT_SHAPE)), int(np.prod(OUTPUT_SHAPE))
    arrays = {
        "x_scale": np.array(4.0 / 127, np.float32),
        "w_scale": np.array(0.5 / (127 * np.sqrt(n_in)), np.float32),
        "zero": np.array(0, np.int8),
        "W_q": rng.integers(-127, 128, size=(n_out, n_in)).astype(np.int8),
        "b": rng.standard_normal(n_out).astype(np.float32),
        "shape": np.array([-1, *OUTPUT_SHAPE], np.int64),
        "Vt": (rng.standard_normal((n_in, STATE_SIZE)) / n_in).astype(np.float32),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["features", "x_scale", "zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["W_q", "w_scale", "zero"], ["W"]),
        helper.make_node("Flatten", ["x_dq"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "b"], ["gemm"], transB=1),
        helper.make_node("Sigmoid", ["gemm"], ["sig"]),
        helper.make_node("Reshape", ["sig", "shape"], ["probs"]),
        helper.make_node("MatMul", ["flat", "Vt"], ["step"]),
        helper.make_node("Add", ["state", "step"], ["state_out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq_gemm",
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", *INPUT_SHAPE]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, ["N", STATE_SIZE]),
        ],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", *OUTPUT_SHAPE]),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, ["N", STATE_SIZE]),
        ],
        [numpy_helper.from_array(v, k) for k, v in arrays.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _build_and_compare(onnx_path: Path, out: Path, argv_extra: list[str], atol: float) -> dict:
    argv = [str(onnx_path), "--out", str(out), "--max-batch", "8", "--opt-batch", "4", *argv_extra]
    assert engine.main(argv) == 0
    entry = json.loads((out.parent / "manifest.json").read_text())["files"][out.name]
    rng = np.random.default_rng(3)
    x = rng.uniform(-3, 3, (19, *INPUT_SHAPE)).astype(np.float32)
    state = rng.standard_normal((19, STATE_SIZE)).astype(np.float32)
    expected = OrtBackend(onnx_path).infer(x, state)
    backend = TensorRTBackend(out, max_batch=64)
    try:
        assert backend.max_batch == 8  # the engine's profile caps the configured 64
        assert backend.input_shape == INPUT_SHAPE
        assert (backend.state_size, backend.output_shape) == (STATE_SIZE, OUTPUT_SHAPE)
        got = backend.infer(x, state)  # 19 rows: pieces of 8, 8, 3
    finally:
        backend.close()
    assert got[0].shape == (19, *OUTPUT_SHAPE)
    assert got[0].dtype == got[1].dtype == np.float32
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=atol)
    return entry


@pytest.mark.requires_tensorrt
def test_python_api_fp16_engine_matches_onnxruntime(gemm_path: Path, tmp_path: Path) -> None:
    trt = _require_tensorrt()
    out = tmp_path / "model.plan"
    if strongly_typed(trt.__version__):  # TensorRT 11 removed the FP16 builder flag
        argv = [str(gemm_path), "--out", str(out), "--precision", "fp16"]
        assert engine.main(argv) == 1
        assert not out.exists()
        return
    entry = _build_and_compare(gemm_path, out, ["--precision", "fp16"], atol=2e-2)
    assert entry["built_with"] == "python-api"
    assert entry["tensorrt_version"] == normalize_trt_version(trt.__version__)
    assert (entry["precision"], entry["max_batch"]) == ("fp16", 8)
    assert (tmp_path / "timing.cache").stat().st_size > 0
    manifest = tmp_path / "manifest.json"
    data = json.loads(manifest.read_text())
    data["files"]["model.plan"]["tensorrt_version"] = "9.0.0"
    manifest.write_text(json.dumps(data))
    with pytest.raises(BackendError, match=r"built with TensorRT 9\.0\.0 .*`lungwatch engine`"):
        TensorRTBackend(out)


@pytest.mark.requires_tensorrt
def test_python_api_int8_qdq_engine_matches_onnxruntime(tmp_path: Path) -> None:
    _require_tensorrt()
    write_manifest_stub(tmp_path)
    qdq = tmp_path / "model.int8.onnx"
    write_qdq_model(qdq)
    entry = _build_and_compare(qdq, tmp_path / "model.plan", ["--precision", "int8"], atol=5e-2)
    assert (entry["built_with"], entry["precision"]) == ("python-api", "int8")


@pytest.mark.requires_tensorrt
def test_trtexec_engine_matches_onnxruntime(gemm_path: Path, tmp_path: Path) -> None:
    _require_tensorrt()
    if engine.find_trtexec() is None:
        pytest.skip("trtexec not on PATH nor in /usr/src/tensorrt/bin")
    write_qdq_model(tmp_path / "model.int8.onnx")  # int8 on a Q/DQ graph: TensorRT 10 and 11
    out = tmp_path / "model.plan"
    argv = ["--precision", "int8", "--use-trtexec"]
    entry = _build_and_compare(tmp_path / "model.int8.onnx", out, argv, atol=5e-2)
    assert entry["built_with"] == "trtexec"
    assert entry["tensorrt_version"] is not None
