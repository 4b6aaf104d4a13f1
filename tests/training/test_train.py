"""``lungwatch train``: the one trainer, end to end on a small synthetic SPRSound folder, and
what it writes: a checkpoint that the export reads alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from edge.inference.manifest import load_manifest
from export.to_onnx import main as export_main
from lungwatch.config import ConfigError
from training.models.checkpoint import load_checkpoint
from training.recipe.config import load_run
from training.recipe.train import main as train_main

from .sprsound_folder import write_folder

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "training" / "configs" / "sed.yaml"
SMALL = [  # the shipped recipe, shrunk to seconds
    "optim.epochs=2", "optim.batch_size=4", "model.channels=16", "model.dilations=[1, 2]",
    "model.lookahead_frames=2", "data.max_frames=100", "threads=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train")
    data = write_folder(root / "sprsound")
    overrides = [*SMALL, f"data.train_dir={data}", f"data.cache_dir={root / 'cache'}",
                 f"out_dir={root / 'runs'}", "name=small"]  # fmt: skip
    argv = ["--config", str(RECIPE)]
    for item in overrides:
        argv += ["--set", item]
    assert train_main(argv) == 0
    return root / "runs" / "small"


def test_the_run_writes_its_config_log_and_checkpoint(run_dir: Path) -> None:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["optim"]["epochs"] == 2
    assert config["model"]["channels"] == 16
    lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1]
    assert all(x["loss"] > 0 for x in lines)


def test_the_checkpoint_holds_everything_the_export_needs(run_dir: Path) -> None:
    ckpt = load_checkpoint(run_dir / "best.pt")
    assert ckpt.name == "small"
    assert ckpt.kinds == ("logmel",)
    assert ckpt.outputs[-2:] == ("Breath", "Poor Quality")
    assert ckpt.spec.n_bands == ckpt.model.config.n_bands == 64
    assert ckpt.model.config.channels == 16
    assert ckpt.epoch in (0, 1)
    assert ckpt.run["optim"]["epochs"] == 2
    rules = ckpt.detector
    assert rules is not None
    assert {r["type"] for r in rules["thresholds"]} >= {"Fine Crackle", "Wheeze"}
    assert "phases" in rules  # the shipped recipe fits in phase mode
    assert ckpt.quality == {"poor_on": 0.6, "poor_off": 0.4}
    # the training statistics are the model's input normalisation
    assert not torch.equal(ckpt.mean, torch.zeros_like(ckpt.mean))


def test_export_reads_only_the_checkpoint(run_dir: Path, tmp_path: Path) -> None:
    lone = tmp_path / "lone.pt"
    lone.write_bytes((run_dir / "best.pt").read_bytes())  # nothing of the run beside it
    assert export_main(["--checkpoint", str(lone), "--out", str(tmp_path / "model")]) == 0
    manifest = load_manifest(tmp_path / "model" / "manifest.json")
    ckpt = load_checkpoint(lone)
    assert manifest.model_id.startswith("small-")
    assert manifest.detector_phases is not None
    assert list(manifest.detector_rules) == list(ckpt.detector["thresholds"])
    assert manifest.quality_thresholds == (0.6, 0.4)
    assert manifest.feature_spec == ckpt.spec
    assert manifest.streaming.flush is not None


def test_a_bad_key_is_named_with_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sed\.yaml: optim\.epochs must be an integer >= 1"):
        load_run(RECIPE, ["optim.epochs=0"])
    with pytest.raises(ConfigError, match=r"sed\.yaml: kinds must be distinct names"):
        load_run(RECIPE, ["kinds=[logmel, mfcc]"])
    with pytest.raises(ConfigError, match="no_such_key"):
        load_run(RECIPE, ["no_such_key=1"])


def test_the_shipped_recipe_loads_with_every_default_documented() -> None:
    run = load_run(RECIPE)
    assert run.loss.phase_weight == 0.5
    assert run.detector.phases
    text = RECIPE.read_text()
    for line in text.splitlines():
        if ":" in line and not line.lstrip().startswith("#"):
            assert "#" in line, f"uncommented key in {RECIPE.name}: {line}"


def test_icbhi_material_joins_training_only_from_the_chosen_patients(tmp_path: Path) -> None:
    import numpy as np
    import soundfile as sf

    from training.data.icbhi import load_icbhi, training_patients
    from training.recipe.train import load_data

    data = write_folder(tmp_path / "sprsound", patients=4, seconds=3.0)
    icbhi = tmp_path / "icbhi"
    icbhi.mkdir()
    for p in range(4):  # four ICBHI patients, one 3-s recording each at 4 kHz
        name = f"{101 + p}_1b1_Al_sc_Meditron"
        sf.write(icbhi / f"{name}.flac", np.zeros(12000, np.int16), 4000)
        (icbhi / f"{name}.txt").write_text("0.0\t1.5\t1\t0\n1.5\t3.0\t0\t0\n")
    sets = [*SMALL, f"data.train_dir={data}", f"data.cache_dir={tmp_path / 'cache'}",
            "data.val_fraction=0.25", f"data.icbhi_dir={icbhi}",
            "data.icbhi_fraction=0.5"]  # fmt: skip
    loaded = load_data(load_run(RECIPE, sets))
    chosen = training_patients(load_icbhi(icbhi), 0.5, seed=0)
    from_icbhi = [r for r in loaded.train if r.label == "icbhi"]
    assert len(chosen) == 2
    assert sorted(r.patient_id for r in from_icbhi) == sorted(chosen)
    assert not [r for r in loaded.val if r.label == "icbhi"]  # ICBHI never validates
