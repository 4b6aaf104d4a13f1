"""``lungwatch quantize``: explicit Q/DQ INT8 from real audio, checked and recorded."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import export.opcheck
from edge.manifest import ManifestError, load_manifest
from export.quantize import (
    WEIGHT_BITS,
    OpCheckFailedError,
    QuantizeError,
    calibration_set,
    candidate_windows,
    main,
    quantize_model,
)
from export.to_onnx import ort_session
from tests.edge.runtime_helpers import lungwatch

from .conftest import CALIB_MAX_WINDOWS, RECORDINGS


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def test_qdq_nodes_with_per_channel_conv_weights(quantized_dir: Path) -> None:
    model = onnx.load(str(quantized_dir / "model.int8.onnx"))
    graph = model.graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") > 0
    assert ops.count("DequantizeLinear") > ops.count("QuantizeLinear")  # + weight DQs
    assert all(n.domain in ("", "ai.onnx") for n in graph.node)
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = _producers(graph)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) >= 10
    for conv in convs:
        weight_dq = producers[conv.input[1]]
        assert weight_dq.op_type == "DequantizeLinear"
        weights, scale, zero = (inits[name] for name in weight_dq.input)
        axis = {a.name: a.i for a in weight_dq.attribute}.get("axis", 1)
        assert weights.dtype == np.int8
        assert axis == 0
        assert scale.shape == (weights.shape[0],)  # one scale per output channel
        assert zero.dtype == np.int8
        assert not zero.any()  # symmetric
        assert producers[conv.input[0]].op_type == "DequantizeLinear"  # int8 activations
        if len(conv.input) > 2:  # bias stays float for TensorRT
            assert inits[conv.input[2]].dtype == np.float32


def test_int8_logits_track_fp32(quantized_dir: Path, calib_dir: Path) -> None:
    manifest = load_manifest(quantized_dir / "manifest.json")
    x = calibration_set(calib_dir, manifest, max_windows=64, seed=5).windows
    (fp32,) = ort_session(quantized_dir / "model.onnx").run(["logits"], {"features": x})
    (int8,) = ort_session(quantized_dir / "model.int8.onnx").run(["logits"], {"features": x})
    correlation = np.corrcoef(fp32.ravel(), int8.ravel())[0, 1]
    assert correlation > 0.99
    assert np.max(np.abs(fp32 - int8)) < 0.1 * np.ptp(fp32)
    assert not np.array_equal(fp32, int8)  # it really is another model


def _weight_codes(path: Path) -> list[np.ndarray]:
    """The int8 weight tensors of every weight DequantizeLinear in ``path``."""
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return [
        inits[n.input[0]]
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].size > 1
    ]


def test_weights_use_seven_bits(quantized_dir: Path) -> None:
    """|q| <= 64: two uint8 x int8 products fit an int16 (x86 CPUs without VNNI)."""
    limit = 2 ** (WEIGHT_BITS - 1)
    codes = _weight_codes(quantized_dir / "model.int8.onnx")
    assert len(codes) >= 10
    peaks = [int(np.abs(c.astype(np.int32)).max()) for c in codes]
    assert max(peaks) == limit  # the range is used, not only bounded
    assert all(peak <= limit for peak in peaks)


# Runs both models on the windows in argv[1] and saves their outputs to argv[2] (.npz).
_LOGITS_SCRIPT = """
import sys
import numpy as np
import onnxruntime as ort

x = np.load(sys.argv[1])
options = ort.SessionOptions()
options.intra_op_num_threads = 1
out = {}
for name, path in (("fp32", sys.argv[3]), ("int8", sys.argv[4])):
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    out[name] = session.run(["logits"], {"features": x})[0]
np.savez(sys.argv[2], **out)
"""


def test_int8_logits_track_fp32_on_a_cpu_without_vnni(
    quantized_dir: Path, calib_dir: Path, tmp_path: Path
) -> None:
    """The same check on an emulated Haswell (AVX2, no VNNI): qemu-x86_64 runs onnxruntime.

    With 8-bit weights this correlation was 0.92 (VPMADDUBSW saturates int16 sums)."""
    qemu = shutil.which("qemu-x86_64")
    if platform.machine() != "x86_64" or qemu is None:
        pytest.skip("needs x86_64 and qemu-x86_64 (Debian qemu-user; make test installs it)")
    manifest = load_manifest(quantized_dir / "manifest.json")
    np.save(tmp_path / "x.npy", calibration_set(calib_dir, manifest, 64, seed=5).windows)
    (tmp_path / "logits.py").write_text(_LOGITS_SCRIPT)
    model, int8 = quantized_dir / "model.onnx", quantized_dir / "model.int8.onnx"
    command = [qemu, "-cpu", "Haswell", sys.executable, str(tmp_path / "logits.py")]
    args = [str(tmp_path / "x.npy"), str(tmp_path / "out.npz"), str(model), str(int8)]
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    out = np.load(tmp_path / "out.npz")
    fp32, got = out["fp32"], out["int8"]
    assert np.corrcoef(fp32.ravel(), got.ravel())[0, 1] > 0.99
    assert np.max(np.abs(fp32 - got)) < 0.1 * np.ptp(fp32)


def test_manifest_records_calibration_and_int8_file(quantized_dir: Path, calib_dir: Path) -> None:
    data = json.loads((quantized_dir / "manifest.json").read_text())
    calibration = data["calibration"]
    n_windows_available = len(RECORDINGS) * 3
    assert calibration["dir"] == str(calib_dir)
    assert calibration["files"] == len(RECORDINGS)  # .wav and .flac, nested, not notes.txt
    assert calibration["windows_available"] == n_windows_available
    assert calibration["windows"] == CALIB_MAX_WINDOWS
    assert calibration["method"] == "percentile"
    assert calibration["weight_bits"] == 7
    assert len(calibration["tensor_sha256"]) == 64
    assert calibration["fp32_agreement"]["windows"] == CALIB_MAX_WINDOWS
    manifest = load_manifest(quantized_dir / "manifest.json")
    entry = manifest.files["model.int8.onnx"]
    assert entry.precision == "int8"
    assert entry.extra["source_sha256"] == manifest.files["model.onnx"].sha256
    assert entry.bytes == (quantized_dir / "model.int8.onnx").stat().st_size


def test_calibration_hash_depends_on_seed_only(quantized_dir: Path, calib_dir: Path) -> None:
    manifest = load_manifest(quantized_dir / "manifest.json")
    first = calibration_set(calib_dir, manifest, max_windows=4, seed=0)
    again = calibration_set(calib_dir, manifest, max_windows=4, seed=0)
    other = calibration_set(calib_dir, manifest, max_windows=4, seed=1)
    assert first.windows.shape == (4, 1, 32, 96)
    assert first.sha256 == again.sha256
    assert first.sha256 != other.sha256
    recorded = json.loads((quantized_dir / "manifest.json").read_text())["calibration"]
    same = calibration_set(calib_dir, manifest, max_windows=CALIB_MAX_WINDOWS, seed=0)
    assert same.sha256 == recorded["tensor_sha256"]


def test_candidate_windows_have_stride_window_frames() -> None:
    assert candidate_windows([250, 95, 96], 96) == [(0, 0), (0, 96), (2, 0)]


def _argv(folder: Path, calib: Path, *extra: str) -> list[str]:
    model = folder / "model.onnx"
    return [str(model), "--calib", str(calib), "--out", str(folder / "model.int8.onnx"), *extra]


def test_no_audio_is_a_one_line_error(model_copy: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no audio here")
    with pytest.raises(QuantizeError) as info:
        main(_argv(model_copy, empty))
    assert str(info.value) == f"--calib {empty}: no .wav or .flac files found (recursively)"


def test_missing_manifest_is_a_one_line_error(
    exported_dir: Path, calib_dir: Path, tmp_path: Path
) -> None:
    shutil.copy(exported_dir / "model.onnx", tmp_path / "model.onnx")
    with pytest.raises(QuantizeError, match=r"no manifest\.json beside it"):
        main(_argv(tmp_path, calib_dir))


@pytest.mark.parametrize("value", ["0", "-3"])
def test_bad_max_windows_is_a_one_line_error(model_copy: Path, calib_dir: Path, value: str) -> None:
    with pytest.raises(QuantizeError) as info:
        main(_argv(model_copy, calib_dir, "--max-windows", value))
    assert str(info.value) == f"--max-windows must be an integer >= 1, got {value}"


def test_changed_source_model_is_refused(model_copy: Path, calib_dir: Path) -> None:
    with (model_copy / "model.onnx").open("ab") as handle:
        handle.write(b"\x00")
    with pytest.raises(ManifestError, match="does not match the manifest"):
        main(_argv(model_copy, calib_dir))


def test_opcheck_findings_refuse_the_result(
    model_copy: Path,
    calib_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The real check on the real result, against a list that lacks Conv: nothing is written."""
    without_conv = export.opcheck.supported_ops() - {"Conv"}
    monkeypatch.setattr(export.opcheck, "supported_ops", lambda: without_conv)
    (model_copy / "model.int8.onnx").unlink()
    before = (model_copy / "manifest.json").read_text()
    with pytest.raises(OpCheckFailedError, match="TensorRT 10 compatibility problem"):
        main(_argv(model_copy, calib_dir, "--max-windows", "4"))
    assert "op Conv" in capsys.readouterr().out
    assert not (model_copy / "model.int8.onnx").exists()
    assert (model_copy / "manifest.json").read_text() == before
    assert sorted(p.name for p in model_copy.iterdir()) == ["manifest.json", "model.onnx"]


def test_cli_prints_one_line_and_exits_1(model_copy: Path, tmp_path: Path) -> None:
    result = lungwatch("quantize", *_argv(model_copy, tmp_path / "nowhere"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"lungwatch quantize: error: --calib {tmp_path / 'nowhere'}: not a directory"
    ]


def test_quantize_model_writes_only_in_the_model_folder(
    model_copy: Path, calib_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(QuantizeError, match="must be in the model's folder"):
        quantize_model(model_copy / "model.onnx", calib_dir, tmp_path / "elsewhere.onnx")
    with pytest.raises(QuantizeError, match="would overwrite the fp32 model"):
        quantize_model(model_copy / "model.onnx", calib_dir, model_copy / "model.onnx")


def test_compact_shrinks_the_file_without_changing_its_outputs(
    exported_dir: Path, calib_dir: Path, tmp_path: Path
) -> None:
    from export.quantize import compact, quantize_qdq

    manifest = load_manifest(exported_dir / "manifest.json")
    windows = calibration_set(calib_dir, manifest, CALIB_MAX_WINDOWS, seed=0).windows
    raw = tmp_path / "raw.int8.onnx"
    quantize_qdq(exported_dir / "model.onnx", raw, windows, "minmax", tmp_path)
    small = tmp_path / "small.int8.onnx"
    shutil.copy(raw, small)
    compact(small)
    assert small.stat().st_size < raw.stat().st_size
    graph = onnx.load(str(small)).graph
    assert not graph.value_info
    assert not [n for n in graph.initializer if n.name.endswith(("_scale", "_zero_point"))]
    feed = {"features": windows[:3]}
    before = ort_session(raw).run(None, feed)[0]
    after = ort_session(small).run(None, feed)[0]
    np.testing.assert_array_equal(before, after)  # the same computation, bit for bit
    assert export.opcheck.check_tensorrt_compat(small) == []
