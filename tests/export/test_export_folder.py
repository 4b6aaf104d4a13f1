"""Exporting a frame-level checkpoint as a streaming model folder, and the device's reading of
its manifest (schema 2): sizes, fitted detector rules and quality thresholds checked, every
error naming the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from edge.bed.rules import PhaseRule
from edge.inference.manifest import ManifestError, load_manifest, verify_file
from export.to_onnx import ExportError, export_folder, main
from tests.streaming_fixture import CHUNK_FRAMES, tiny_checkpoint, tiny_streaming_folder

RULE = {"type": "Wheeze", "on_threshold": 0.7, "off_threshold": 0.55, "min_event_ms": 120,
        "merge_gap_ms": 120}  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    detector = {"thresholds": [RULE], "fitted_on": "test"}
    return tiny_streaming_folder(
        tmp_path_factory.mktemp("tiny"), detector, {"poor_on": 0.7, "poor_off": 0.5}
    )


def test_export_writes_what_the_device_reads(folder: Path) -> None:
    manifest = load_manifest(folder / "manifest.json")
    info = manifest.streaming
    assert info is not None
    assert (info.chunk_frames, info.stride, info.lookahead_frames) == (CHUNK_FRAMES, 4, 2)
    assert manifest.input_shape == (1, 64, CHUNK_FRAMES * 4)
    assert manifest.streaming.input_frames == CHUNK_FRAMES * 4
    assert manifest.outputs[-2:] == ("Breath", "Poor Quality")
    assert manifest.detector_rules == (RULE,)
    assert manifest.quality_thresholds == (0.7, 0.5)
    entry = verify_file(manifest, folder / "model.onnx")
    assert entry.extra["parity"]["ok"]
    assert entry.extra["parity"]["max_abs_prob_diff"] < 1e-4


PHASES = {"on_threshold": 0.6, "off_threshold": 0.5, "min_phase_ms": 120, "output": "Breath"}


def _edited(folder: Path, tmp_path: Path, edit) -> Path:
    data = json.loads((folder / "manifest.json").read_text())
    edit(data)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data))
    return path


def test_a_phase_lead_is_read_and_absent_means_none(folder, tmp_path) -> None:
    with_lead = _edited(folder, tmp_path, lambda d: d["detector"].__setitem__(
        "phases", {**PHASES, "lead_ms": 40}))  # fmt: skip
    assert load_manifest(with_lead).detector_phases == PhaseRule(0.6, 0.5, 120.0, "Breath", 40.0)
    without = _edited(folder, tmp_path, lambda d: d["detector"].__setitem__("phases", PHASES))
    assert load_manifest(without).detector_phases.lead_ms == 0.0


def test_box_classes_are_read_with_their_filter_and_default_without(folder, tmp_path) -> None:
    boxed = _edited(folder, tmp_path, lambda d: d["detector"].__setitem__("phases", {
        **PHASES, "box_classes": ["Wheeze"], "box_filter_ms": 480, "box_merge": 0.4}))  # fmt: skip
    rule = load_manifest(boxed).detector_phases
    assert (rule.box_classes, rule.box_filter_ms, rule.box_merge) == (("Wheeze",), 480.0, 0.4)
    plain = _edited(folder, tmp_path, lambda d: d["detector"].__setitem__("phases", PHASES))
    rule = load_manifest(plain).detector_phases
    assert (rule.box_classes, rule.box_filter_ms, rule.box_merge) == ((), 960.0, 0.5)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["streaming"].pop("state_size"), "streaming.state_size is missing"),
        (lambda d: d["onnx"]["inputs"]["state"].__setitem__(0, 5), "onnx.inputs must be"),
        (lambda d: d.pop("outputs"), "outputs is missing"),
        (lambda d: d["detector"]["thresholds"][0].__setitem__("type", "Normal"),
         "detector.thresholds[0] must be"),
        (lambda d: d["detector"]["thresholds"][0].pop("min_event_ms"),
         "detector.thresholds[0] must be"),
        (lambda d: d.__setitem__("quality", {"poor_on": 0.2, "poor_off": 0.5}),
         "quality must be"),
        (lambda d: d["detector"].__setitem__("phases", {
            "on_threshold": 0.3, "off_threshold": 0.5, "min_phase_ms": 0, "output": "Breath"}),
         "detector.phases.off_threshold must be in (0, on_threshold=0.3]"),
        (lambda d: d["detector"].__setitem__("phases", {
            "on_threshold": 0.6, "off_threshold": 0.5, "min_phase_ms": 0, "output": "Phase"}),
         "detector.phases.output must be among the outputs"),
        (lambda d: d["detector"].__setitem__("phases", {**PHASES, "lead_ms": -40}),
         "detector.phases.lead_ms must be a number >= 0"),
        (lambda d: d["detector"].__setitem__("phases", {**PHASES, "lead_ms": "40"}),
         "detector.phases.lead_ms must be a number, got '40'"),
        (lambda d: d["detector"].__setitem__("phases", {**PHASES, "lag_ms": 40}),
         "detector.phases.lag_ms must be one of"),
        (lambda d: d["detector"].__setitem__("phases", {**PHASES, "box_classes": ["Whistle"]}),
         "detector.phases.box_classes must be among the outputs"),
        (lambda d: d["detector"].__setitem__("phases", {
            **PHASES, "box_classes": ["Wheeze"], "frame_classes": ["Wheeze"]}),
         "detector.phases.box_classes must be classes not also in frame_classes"),
        (lambda d: d["detector"].__setitem__("phases", {**PHASES, "box_filter_ms": 0}),
         "detector.phases.box_filter_ms must be a number > 0"),
    ],
)  # fmt: skip
def test_manifest_errors_name_the_file_and_key(folder, tmp_path, edit, message) -> None:
    path = _edited(folder, tmp_path, edit)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)


def test_export_refuses_what_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="checkpoint not found"):
        export_folder(tmp_path / "missing.pt", tmp_path / "out", 4)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="not a lungwatch checkpoint"):
        export_folder(junk, tmp_path / "out", 4)


def test_export_refuses_kinds_that_do_not_fit_the_model(tmp_path: Path) -> None:
    import torch

    checkpoint = tiny_checkpoint(tmp_path / "c.pt")
    data = torch.load(checkpoint, weights_only=True)
    data["kinds"] = ["logmel", "cwt"]  # a one-kind model
    torch.save(data, checkpoint)
    with pytest.raises(ExportError, match=r"kinds \['logmel', 'cwt'\] do not fit"):
        export_folder(checkpoint, tmp_path / "out", 4)


def test_export_reads_the_rules_and_the_gate_from_the_checkpoint_alone(tmp_path: Path) -> None:
    detector = {"thresholds": [RULE], "fitted_on": "test"}
    quality = {"poor_on": 0.7, "poor_off": 0.5}
    checkpoint = tiny_checkpoint(tmp_path / "c.pt", detector=detector, quality=quality)
    assert main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"),
                 "--chunk-frames", "3"]) == 0  # fmt: skip
    manifest = load_manifest(tmp_path / "o" / "manifest.json")
    assert manifest.detector_rules == (RULE,)
    assert manifest.quality_thresholds == (0.7, 0.5)
    assert manifest.streaming.chunk_frames == 3
    assert manifest.model_id.startswith("tiny-")
