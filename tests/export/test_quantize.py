"""INT8 quantization of the streaming SedNet graph (:mod:`export.quantize`) on a tiny
random model: calibration chunks carry the real state, the INT8 graph runs chunk by chunk in
ONNX Runtime with its state fed back and tracks the FP32 graph, its Q/DQ pairs serve only the
convolutions (the state path reads float), and bad input is one error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from export.opcheck import check_tensorrt_compat  # noqa: E402
from export.quantize import (  # noqa: E402
    QUANTIZED_OPS,
    StreamingQuantizeError,
    calibration_chunks,
    main,
    quantize_model,
    streaming_agreement,
)
from export.to_onnx import export_graph  # noqa: E402
from tests.streaming_fixture import vary_batchnorm  # noqa: E402
from training.data.targets import OUTPUTS  # noqa: E402
from training.models.sed import SedConfig, SedNet  # noqa: E402

CONFIG = SedConfig(
    n_kinds=1, n_bands=16, n_outputs=len(OUTPUTS), stride=4, channels=16, dilations=(1, 2),
    kernel_widths=(3, 5), lookahead_frames=2,
)  # fmt: skip
CHUNK = 6  # outputs per call: 24 front-end frames
WIDTH = CHUNK * CONFIG.stride
N_RECORDINGS = 6
FRAMES = 400  # 4 s at the 10-ms hop: 16 whole chunks and a partial one
# The INT8 probabilities must correlate with the FP32 ones over whole streams above these
# bounds, pooled and for each output alone (the pooled figure is helped by the outputs' different
# levels). Quantized as shipped the tiny model measures 0.9997 pooled and 0.997 for its worst
# output; calibrated on a flat signal (every range far too small, real activations clip) 0.93
# and 0.33, which the bounds reject (test_bad_calibration_fails_the_bounds): they can fail.
MIN_CORRELATION = 0.99
MIN_OUTPUT_CORRELATION = 0.98


def tracks(agreement: dict) -> bool:
    """Whether :func:`streaming_agreement`'s correlations clear both bounds."""
    worst = min(row["prob_correlation"] for row in agreement["per_output"].values())
    return agreement["prob_correlation"] > MIN_CORRELATION and worst > MIN_OUTPUT_CORRELATION


def recordings(seed: int, n: int = N_RECORDINGS, frames: int = FRAMES) -> list[np.ndarray]:
    """Log-mel-like features (1, F, T): a band profile, breathing (a 3-s cycle of loudness),
    noise, and wheeze-like ridges (a few raised bands for half a second)."""
    rng = np.random.default_rng(seed)
    bands, t = CONFIG.n_bands, np.arange(frames)
    out = []
    for _ in range(n):
        profile = np.linspace(-12.0, -18.0, bands)[:, None]
        breath = 3.0 * np.maximum(np.sin(2 * np.pi * (t / 300.0 + rng.random())), 0.0)
        x = profile + breath[None, :] + rng.normal(0.0, 0.7, (bands, frames))
        for _ in range(rng.integers(0, 3)):
            band, start = rng.integers(2, bands - 2), rng.integers(0, frames - 50)
            x[band - 1 : band + 2, start : start + 50] += 4.0
        out.append(x[None].astype(np.float32))
    return out


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with realistic batch-norm and input statistics, exported."""
    torch.manual_seed(0)
    model = SedNet(CONFIG)
    x = np.concatenate(recordings(seed=100), axis=2)[0]
    vary_batchnorm(model, 0.3)
    with torch.no_grad():
        model.set_input_stats(torch.from_numpy(x.mean(1)[None]), torch.from_numpy(x.std(1)[None]))
    path = tmp_path_factory.mktemp("sedq") / "model.onnx"
    export_graph(model.eval(), path, CHUNK)
    return path


@pytest.fixture(scope="module")
def quantized(fp32: Path) -> tuple[Path, dict]:
    chunks = calibration_chunks(fp32, recordings(seed=1), max_chunks=48, seed=0)
    out = fp32.with_name("model.int8.onnx")
    record = quantize_model(
        fp32, out, chunks, seed=0, agreement_recordings=recordings(seed=2), lookahead_frames=2
    )
    return out, record


def stream(session: Any, x: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chunk by chunk with the state fed back: probs (B, O, n) and the last state."""
    parts = []
    for at in range(0, x.shape[-1] - WIDTH + 1, WIDTH):
        probs, state = session.run(None, {"features": x[..., at : at + WIDTH], "state": state})
        parts.append(probs)
    return np.concatenate(parts, axis=2), state


def test_calibration_chunks_carry_the_real_state(fp32: Path) -> None:
    recs = recordings(seed=3, n=2)
    chunks = calibration_chunks(fp32, recs, max_chunks=10, seed=0)
    assert len(chunks) == 10
    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    # replay both recordings; every sampled chunk must be one of them with the state carried
    carried = []
    for x in recs:
        state = np.zeros((1, chunks[0]["state"].shape[1]), np.float32)
        for at in range(0, FRAMES - WIDTH + 1, WIDTH):
            feats = x[None, ..., at : at + WIDTH]
            carried.append((feats, state))
            _, state = session.run(None, {"features": feats, "state": state})
    for chunk in chunks:
        matches = [s for f, s in carried if np.array_equal(f, chunk["features"])]
        assert len(matches) == 1
        np.testing.assert_allclose(chunk["state"], matches[0], atol=1e-6)
    assert any(chunk["state"].any() for chunk in chunks)  # not all stream starts
    again = calibration_chunks(fp32, recs, max_chunks=10, seed=0)
    assert all(np.array_equal(a["state"], b["state"]) for a, b in zip(chunks, again, strict=True))


def test_int8_runs_with_state_carried_and_tracks_fp32(
    fp32: Path, quantized: tuple[Path, dict]
) -> None:
    int8, record = quantized
    x = np.stack(recordings(seed=4, n=3))  # 3 beds in one batch
    sessions = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8)
    ]
    state_size = sessions[0].get_inputs()[1].shape[1]
    state0 = np.zeros((3, state_size), np.float32)
    (ref, _ref_state), (got, got_state) = (stream(s, x, state0) for s in sessions)
    assert got.shape == ref.shape
    assert got_state.dtype == np.float32
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > MIN_CORRELATION
    # the state matters: the last chunk again from a zero state gives other outputs
    start = (FRAMES // WIDTH - 1) * WIDTH  # the last whole chunk
    cold, _ = sessions[1].run(None, {"features": x[..., start : start + WIDTH], "state": state0})
    assert np.abs(cold - got[..., -CHUNK:]).max() > 1e-3
    agreement = record["fp32_agreement"]
    assert tracks(agreement)
    assert agreement["recordings"] == N_RECORDINGS
    for share in (agreement["fp32_events_matched"], agreement["int8_events_matched"]):
        assert share is None or 0.0 <= share <= 1.0


def test_graph_is_qdq_for_tensorrt_and_the_state_path_reads_float(
    quantized: tuple[Path, dict],
) -> None:
    int8, record = quantized
    graph = onnx.load(str(int8)).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert check_tensorrt_compat(int8) == []
    readers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    for node in graph.node:
        if node.op_type == "DequantizeLinear":
            kinds = {op in QUANTIZED_OPS for op in readers.get(node.output[0], [])}
            assert len(kinds) == 1, f"{node.output[0]} read by {readers.get(node.output[0])}"
    assert record["qdq_tidied"]["float_readers"] > 0
    assert record["activation_type"] == "int8 symmetric"
    assert record["tensorrt_compatible"]
    assert record["weight_bits"] == 7
    assert len(record["tensor_sha256"]) == 64


def weight_is_quantized(path: Path, node_name: str) -> bool:
    """Whether the named node reads its weight through a DequantizeLinear."""
    graph = onnx.load(str(path)).graph
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    (node,) = [n for n in graph.node if n.name == node_name]
    return made_by.get(node.input[1]) == "DequantizeLinear"


def test_an_excluded_node_stays_float(
    fp32: Path, quantized: tuple[Path, dict], tmp_path: Path
) -> None:
    head = "/model/head/Conv"
    assert weight_is_quantized(quantized[0], head)  # quantized by default
    chunks = calibration_chunks(fp32, recordings(seed=1), max_chunks=16, seed=0)
    out = tmp_path / "model.int8.onnx"
    record = quantize_model(fp32, out, chunks, nodes_to_exclude=[head])
    assert record["nodes_excluded"] == [head]
    assert not weight_is_quantized(out, head)
    assert weight_is_quantized(out, "/model/layers.1/project/project.0/Conv")
    with pytest.raises(StreamingQuantizeError, match="--exclude /model/hed/Conv: no Conv"):
        quantize_model(fp32, tmp_path / "typo.onnx", chunks, nodes_to_exclude=["/model/hed/Conv"])
    assert not (tmp_path / "typo.onnx").exists()


def test_bad_calibration_fails_the_bounds(fp32: Path, tmp_path: Path) -> None:
    # a flat signal at the bands' mean level: every activation range comes out far too small
    level = np.concatenate(recordings(seed=1), axis=2).mean(axis=2, keepdims=True)
    flat = [np.broadcast_to(level, (1, CONFIG.n_bands, FRAMES)).astype(np.float32)]
    chunks = calibration_chunks(fp32, flat, max_chunks=8, seed=0)
    record = quantize_model(
        fp32, tmp_path / "bad.onnx", chunks, agreement_recordings=recordings(seed=2)
    )
    assert not tracks(record["fp32_agreement"])


def test_uint8_activations_are_an_option_not_for_tensorrt(fp32: Path, tmp_path: Path) -> None:
    chunks = calibration_chunks(fp32, recordings(seed=1), max_chunks=16, seed=0)
    out = tmp_path / "model.uint8.onnx"
    record = quantize_model(fp32, out, chunks, activations="quint8")
    assert not record["tensorrt_compatible"]
    assert record["fp32_agreement"]["on"] == "calibration chunks"
    assert any("zero point" in p for p in check_tensorrt_compat(out))


def test_bad_input_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent.onnx"
    with pytest.raises(StreamingQuantizeError, match="model not found"):
        calibration_chunks(missing, recordings(seed=1, n=1), 4, 0)
    with pytest.raises(StreamingQuantizeError, match="model not found"):
        quantize_model(missing, tmp_path / "out.onnx", [])
    with pytest.raises(StreamingQuantizeError, match="model not found"):
        streaming_agreement(missing, missing, recordings(seed=1, n=1))
    argv = ["--model", str(missing), "--out", str(tmp_path / "o.onnx"), "--calib-dir", "."]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "model not found" in err


def test_the_manifest_names_the_files_calibrated_on(tmp_path: Path) -> None:
    """Through the command on a copy of the shipped folder: ``files`` is the seeded sample
    that ``--max-files`` leaves (not every file found), ``files_found`` the folder's count."""
    shipped = Path(__file__).resolve().parents[2] / "models" / "sed"
    folder = tmp_path / "sed"
    folder.mkdir()
    for name in ("model.onnx", "manifest.json"):
        shutil.copy(shipped / name, folder / name)
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(3)
    for i in range(5):
        sf.write(calib / f"r{i}.wav", 0.05 * rng.standard_normal(8000 * 3), 8000)
    out = folder / "model.int8.onnx"
    argv = ["--model", str(folder / "model.onnx"), "--out", str(out), "--calib-dir", str(calib)]
    assert main([*argv, "--max-files", "2", "--max-chunks", "8"]) == 0
    record = json.loads((folder / "manifest.json").read_text())["files"]["model.int8.onnx"]
    assert record["calibration"]["files"] == 2
    assert record["calibration"]["files_found"] == 5
    assert record["calibration"]["chunks"] <= 8


def test_keep_first_finds_each_stems_first_layer(tmp_path) -> None:
    """The shipped model's stem convolution, and each kind's of a model of two kinds."""
    from export.quantize import first_layers
    from export.to_onnx import export_graph
    from training.models.sed import SedConfig, SedNet

    assert first_layers(Path("models/sed/model.onnx")) == ["/model/stems.0/stems.0.0/Conv"]
    config = SedConfig(n_kinds=2, n_bands=8, n_outputs=3, stride=2, channels=8, dilations=(1,))
    path = tmp_path / "model.onnx"
    export_graph(SedNet(config).eval(), path, 5)
    assert sorted(first_layers(path)) == [
        "/model/stems.0/stems.0.0/Conv",
        "/model/stems.1/stems.1.0/Conv",
    ]
