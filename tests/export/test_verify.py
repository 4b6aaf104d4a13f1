"""``lungwatch verify``: torch -> ONNX FP32 -> INT8 on recordings streamed through the device
pipeline, the stored reference for the device, and the exit status."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.manifest import load_manifest
from export.verify import (
    REFERENCE_NAME,
    Recording,
    compare,
    events_of,
    main,
    stream_windows,
)


@pytest.fixture
def model_with_checkpoint(model_copy: Path, tiny_checkpoint: Path) -> Path:
    shutil.copy(tiny_checkpoint, model_copy / tiny_checkpoint.name)
    return model_copy


def test_streamed_windows_are_the_runtime_windows(quantized_dir: Path, calib_dir: Path) -> None:
    manifest = load_manifest(quantized_dir / "manifest.json")
    wav = sorted(calib_dir.rglob("*.wav"))[0]
    one = stream_windows(wav, manifest, 1000)
    other = stream_windows(wav, manifest, 333)
    assert one.windows.shape[1:] == manifest.input_shape
    assert len(one.windows) > 1
    np.testing.assert_allclose(one.windows, other.windows, atol=1e-5)  # chunking-invariant
    hop = manifest.hop_frames * manifest.feature_spec.hop_samples
    assert set(np.diff(one.end_samples)) == {hop}


def test_all_stages_pass_and_reference_round_trips(
    model_with_checkpoint: Path, calib_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = model_with_checkpoint
    args = ["--model-dir", str(folder), "--audio", str(calib_dir), "--write-reference"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "reference: torch tiny.pt" in out
    assert "| onnxruntime model.onnx |" in out
    assert "| onnxruntime model.int8.onnx |" in out
    manifest = load_manifest(folder / "manifest.json")
    assert REFERENCE_NAME in manifest.files  # hashed like every artifact
    assert set(manifest.raw["parity"]) == {"onnxruntime model.onnx", "onnxruntime model.int8.onnx"}
    assert main(["--model-dir", str(folder), "--reference"]) == 0  # the device check


def test_reference_check_fails_when_the_model_changed(
    model_with_checkpoint: Path, calib_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = model_with_checkpoint
    assert main(["--model-dir", str(folder), "--audio", str(calib_dir), "--write-reference"]) == 0
    data = dict(np.load(folder / REFERENCE_NAME))
    data["logits"] = data["logits"] + 0.5  # as if another model had produced them
    np.savez_compressed(folder / REFERENCE_NAME, **data)
    from export.manifest import record_artifact

    record_artifact(folder / "manifest.json", folder / REFERENCE_NAME, precision="reference")
    capsys.readouterr()
    assert main(["--model-dir", str(folder), "--reference"]) == 1
    assert "| NO |" in capsys.readouterr().out


def test_a_tampered_artifact_is_refused(model_copy: Path, calib_dir: Path) -> None:
    from edge.manifest import ManifestError

    with (model_copy / "model.int8.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ManifestError, match=r"model\.int8\.onnx"):
        main(["--model-dir", str(model_copy), "--audio", str(calib_dir), "--no-torch"])


def _recording(n: int) -> Recording:
    ends = np.arange(1, n + 1) * 400 + 1600
    return Recording("r", np.zeros((n, 1, 2, 3), np.float32), ends, 1600, 400, 8000)


def test_event_lists_are_compared_and_differences_listed() -> None:
    classes = ("Normal", "Wheeze")
    rec = _recording(12)
    on = np.array([[0.9, 0.1]] * 3 + [[0.1, 0.9]] * 6 + [[0.9, 0.1]] * 3)
    shifted = np.roll(on, 1, axis=0)
    ref_events, got_events = events_of(rec, on, classes), events_of(rec, shifted, classes)
    assert len(ref_events) == 1
    assert ref_events != got_events
    logits = [np.log(on)], [np.log(shifted)]
    result = compare("x", "int8", *logits, ([ref_events], [got_events]))
    assert result["event_match"] == 1.0  # overlapping, same type
    assert result["events_identical"] == 0
    assert result["events_missing"]
    assert result["events_extra"]
    strict = compare("x", "fp32", *logits, ([ref_events], [got_events]))
    assert not strict["ok"]  # fp32 demands identical logits and classes


def test_no_audio_is_a_clear_error(exported_dir: Path, tmp_path: Path) -> None:
    from export.verify import VerifyError

    with pytest.raises(VerifyError, match=r"no \.wav/\.flac"):
        main(["--model-dir", str(exported_dir), "--audio", str(tmp_path)])


def test_predict_reads_exported_models_like_checkpoints(
    quantized_dir: Path, tiny_checkpoint: Path
) -> None:
    """``--model`` of predict/report/detect takes a checkpoint or an ONNX file (any precision)."""
    from training.inference import load_classifier

    torch_model = load_classifier(tiny_checkpoint)
    fp32 = load_classifier(quantized_dir / "model.onnx")
    int8 = load_classifier(quantized_dir / "model.int8.onnx")
    x = np.random.default_rng(0).normal(
        size=(5, *load_manifest(quantized_dir / "manifest.json").input_shape)
    )
    x = x.astype(np.float32)
    np.testing.assert_allclose(fp32.probabilities(x), torch_model.probabilities(x), atol=1e-4)
    assert int8.probabilities(x).shape == (5, len(torch_model.classes))
    assert fp32.classes == torch_model.classes
    assert fp32.spec == torch_model.spec
    assert fp32.meta["record_thresholds"] == torch_model.meta["record_thresholds"]
