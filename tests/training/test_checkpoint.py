"""The checkpoint: saved and loaded whole, read with weights_only (a file cannot run code),
weights loaded strictly, and every problem named."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from tests.edge.runtime_helpers import lungwatch
from tests.streaming_fixture import tiny_checkpoint
from training.models.checkpoint import CheckpointError, load_checkpoint

REPO = Path(__file__).resolve().parents[2]


def test_a_checkpoint_round_trips(tmp_path: Path) -> None:
    rules = {"thresholds": [], "fitted_on": "test", "validation": {"f1": 0.5}}
    quality = {"poor_on": 0.7, "poor_off": 0.5}
    path = tiny_checkpoint(tmp_path / "c.pt", detector=rules, quality=quality)
    ckpt = load_checkpoint(path)
    assert ckpt.name == "tiny"
    assert ckpt.kinds == ("logmel",)
    assert ckpt.detector == rules
    assert ckpt.quality == {"poor_on": 0.7, "poor_off": 0.5}
    assert not ckpt.model.training  # eval mode
    again = load_checkpoint(tiny_checkpoint(tmp_path / "d.pt"))
    for (name, a), b in zip(ckpt.model.state_dict().items(), again.model.state_dict().values(),
                            strict=True):  # fmt: skip
        assert torch.equal(a, b), name


def test_the_icbhi_patients_it_trained_on_round_trip_and_are_checked(tmp_path: Path) -> None:
    path = tiny_checkpoint(tmp_path / "c.pt", icbhi_patients=("130", "101"))
    assert load_checkpoint(path).icbhi_patients == ("101", "130")
    assert load_checkpoint(tiny_checkpoint(tmp_path / "old.pt")).icbhi_patients is None
    data = torch.load(path, weights_only=True)
    data["icbhi_patients"] = "101"
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt: icbhi_patients: expected a list"):
        load_checkpoint(tmp_path / "bad.pt")


def test_a_checkpoint_with_a_removed_option_loads_while_it_is_off(tmp_path: Path) -> None:
    """The shipped checkpoint stores the 2-D stem, the phase pooling, PCEN, device colouring and
    mixtures off: it loads, and its run is a run config of today; one that had them on is
    refused, naming the option."""
    from lungwatch.config import from_mapping
    from training.recipe.config import RunConfig

    data = torch.load(REPO / "models" / "sed" / "model.pt", weights_only=True)
    assert data["sizes"]["stem_channels"] == 0
    assert data["run"]["loss"]["phase_pooling"] == "mean"
    assert data["run"]["features"]["band_norm"] == "mean"
    assert data["run"]["augment"]["device_prob"] == 0
    assert data["run"]["mixtures"]["count"] == 0
    run = from_mapping(RunConfig, load_checkpoint(REPO / "models" / "sed" / "model.pt").run)
    assert run.loss.phase_weight == 0.5
    for section, key, on in [
        ("mixtures", "count", 1500),
        ("augment", "device_prob", 0.5),
        ("loss", "phase_pooling", "max"),
        ("features", "band_norm", "pcen"),
    ]:
        changed = copy.deepcopy(data)
        changed["run"][section][key] = on
        torch.save(changed, tmp_path / "on.pt")
        with pytest.raises(CheckpointError, match=rf"on\.pt: {section}\.{key} is .*retired"):
            load_checkpoint(tmp_path / "on.pt")
    pcen = copy.deepcopy(data)
    pcen["feature_spec"]["band_norm"] = "pcen"
    torch.save(pcen, tmp_path / "pcen.pt")
    with pytest.raises(CheckpointError, match=r"pcen\.pt: .*band_norm"):
        load_checkpoint(tmp_path / "pcen.pt")
    data["sizes"]["stem_channels"] = 8
    torch.save(data, tmp_path / "stem.pt")
    with pytest.raises(CheckpointError, match=r"stem\.pt: sizes\.stem_channels is 8: a retired"):
        load_checkpoint(tmp_path / "stem.pt")


class _Payload:
    """Unpickling this runs a command: what a malicious "model" file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_a_file_that_would_run_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with evil.open("wb") as handle:
        pickle.dump({"format": "lungwatch-sednet/1", "x": _Payload(marker)}, handle, protocol=2)
    torch.save({"format": "lungwatch-sednet/1", "x": _Payload(marker)}, tmp_path / "evil2.pt")
    for path in (evil, tmp_path / "evil2.pt"):
        with pytest.raises(CheckpointError, match="not a lungwatch checkpoint"):
            load_checkpoint(path)
    assert not marker.exists()


def test_weights_load_strictly_and_problems_are_named(tmp_path: Path) -> None:
    path = tiny_checkpoint(tmp_path / "c.pt")
    data = torch.load(path, weights_only=True)
    data["weights"]["stray.weight"] = torch.zeros(1)
    torch.save(data, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"extra\.pt: .*Unexpected key.*stray\.weight"):
        load_checkpoint(tmp_path / "extra.pt")
    data = torch.load(path, weights_only=True)
    data["outputs"] = data["outputs"][:3]
    torch.save(data, tmp_path / "outputs.pt")
    with pytest.raises(CheckpointError, match=r"outputs .* but the model has 7"):
        load_checkpoint(tmp_path / "outputs.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="format None, expected 'lungwatch-sednet/1'"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_no_command_runs_a_malicious_model_file(tmp_path: Path) -> None:
    """``lungwatch detect --model evil.pt`` (the device never loads a checkpoint) and
    ``lungwatch export --checkpoint evil.pt`` (weights_only): one-line errors, nothing run."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with evil.open("wb") as handle:
        pickle.dump({"format": "lungwatch-sednet/1", "x": _Payload(marker)}, handle, protocol=2)
    audio = tmp_path / "a.wav"
    soundfile.write(audio, np.zeros(8000, np.float32), 8000)
    runs = [
        lungwatch("detect", "--model", str(evil), "--audio", str(audio)),
        lungwatch("export", "--checkpoint", str(evil), "--out", str(tmp_path / "m")),
    ]
    for result in runs:
        assert result.returncode != 0
        assert result.stderr.count("\n") == 1, result.stderr
    assert "export it first" in runs[0].stderr
    assert "not a lungwatch checkpoint" in runs[1].stderr
    assert not marker.exists()
