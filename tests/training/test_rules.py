"""lungwatch rules: a model folder's detector rules refitted on its run's validation records
from the outputs of the artifact the device runs, written into its manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("sed_eval", reason="sed_eval is in the train extra")

from edge.inference.manifest import load_manifest
from lungwatch.config import to_mapping
from tests.streaming_fixture import tiny_streaming_folder
from tests.training.sprsound_folder import write_folder
from training.recipe.config import DataConfig, RunConfig
from training.recipe.fit import main


def test_rules_refits_the_detector_section_from_the_device_outputs(tmp_path: Path) -> None:
    data = write_folder(tmp_path / "spr", patients=8)
    run = to_mapping(RunConfig(data=DataConfig(train_dir=str(data), val_fraction=0.5)))
    folder = tiny_streaming_folder(tmp_path / "model", run=run)
    assert load_manifest(folder / "manifest.json").detector_phases is None
    assert main(["--model", str(folder / "model.onnx"), "--dry-run"]) == 0
    assert "detector" not in json.loads((folder / "manifest.json").read_text())  # dry run
    code = main(["--model", str(folder), "--set", "detector.frame_families=[CAS]"])
    assert code == 0
    manifest = load_manifest(folder / "manifest.json")
    assert manifest.detector_phases is not None
    assert manifest.detector_phases.frame_classes == ("Wheeze", "Rhonchi", "Stridor")
    section = json.loads((folder / "manifest.json").read_text())["detector"]
    assert section["fitted_on"].endswith("outputs of model.onnx")
    assert {"macro_f1", "f1_cas", "f1_das"} <= set(section["validation"])
    quality = json.loads((folder / "manifest.json").read_text())["quality"]
    assert quality["poor_on"] in (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
    assert quality["poor_off"] == pytest.approx(quality["poor_on"] - 0.2)
    assert quality["validation"]["good"] <= 0.02 or quality["poor_on"] == 0.95
    assert manifest.quality_thresholds == (quality["poor_on"], quality["poor_off"])
    assert {r["type"] for r in section["thresholds"]} == {
        "Fine Crackle",
        "Coarse Crackle",
        "Wheeze",
        "Rhonchi",
        "Stridor",
    }
