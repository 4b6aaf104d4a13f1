"""The training pipeline end to end on synthetic recordings: train, checkpoint, resume,
determinism, DistributedDataParallel on gloo, predict and evaluate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edge.errors import ConfigError
from training.checkpoint import CheckpointError, load_model, read_checkpoint
from training.config import RunConfig, load_run_config
from training.evaluate import main as evaluate_main
from training.predict import main as predict_main
from training.train import fit

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "training" / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _tiny(tmp_path: Path, cache_dir: Path, *overrides: str) -> RunConfig:
    return load_run_config(TINY, [f"out_dir={tmp_path}", f"data.cache_dir={cache_dir}", *overrides])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


def test_run_writes_config_metrics_and_loadable_checkpoints(
    tmp_path: Path, cache_dir: Path
) -> None:
    run = _tiny(tmp_path, cache_dir)
    result = fit(run, verbose=False)
    run_dir = tmp_path / "tiny"
    assert {p.name for p in run_dir.iterdir()} >= {
        "config.yaml",
        "metrics.jsonl",
        "best.pt",
        "last.pt",
    }
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(0.0 <= e["val_score"] <= 1.0 for e in epochs)
    assert result["epoch"] in (1, 2)
    loaded = load_model(run_dir / "best.pt")
    assert loaded.classes == ("Normal", "Wheeze", "Fine Crackle")
    assert loaded.spec == run.features
    assert loaded.kinds == ("logmel",)
    assert load_run_config(run_dir / "config.yaml") == run  # the saved config reproduces it


def test_same_seed_same_weights(tmp_path: Path, cache_dir: Path) -> None:
    fit(_tiny(tmp_path / "a", cache_dir), verbose=False)
    fit(_tiny(tmp_path / "b", cache_dir), verbose=False)
    a, b = _weights(tmp_path / "a/tiny/last.pt"), _weights(tmp_path / "b/tiny/last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    fit(_tiny(tmp_path / "c", cache_dir, "seed=1"), verbose=False)
    c = _weights(tmp_path / "c/tiny/last.pt")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_continues_exactly(tmp_path: Path, cache_dir: Path) -> None:
    fit(_tiny(tmp_path / "whole", cache_dir), verbose=False)
    interrupted = _tiny(tmp_path / "parts", cache_dir)
    fit(interrupted, verbose=False, stop_after_epoch=1)
    last = tmp_path / "parts/tiny/last.pt"
    assert read_checkpoint(last)["epoch"] == 1
    fit(interrupted, resume=last, verbose=False)
    whole, resumed = _weights(tmp_path / "whole/tiny/last.pt"), _weights(last)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_bad_config_value_names_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^tiny\.yaml: optim\.epochs must be an integer >= 1"):
        load_run_config(TINY, ["optim.epochs=0"])
    with pytest.raises(ConfigError, match=r"model\.head must be 'cosine' exactly when"):
        load_run_config(TINY, ["loss.kind=qlung"])


def test_checkpoint_of_another_model_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    fit(_tiny(tmp_path, cache_dir), verbose=False)
    payload = read_checkpoint(tmp_path / "tiny/best.pt")
    payload["model_config"]["embed_dim"] = 64
    torch.save(payload, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="weights do not fit the model"):
        load_model(tmp_path / "broken.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_model(tmp_path / "junk.pt")


def test_predict_and_evaluate_in_challenge_formats(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _tiny(tmp_path, cache_dir, "optim.epochs=3")
    fit(run, verbose=False)
    data = cache_dir / "synthetic-16"
    model = str(tmp_path / "tiny/best.pt")
    for task in ("1-2", "1-1", "2-2", "2-1"):
        out = tmp_path / f"{task}.json"
        assert (
            predict_main(
                [
                    "--task",
                    task,
                    "--audio",
                    str(data),
                    "--annotations",
                    str(data),
                    "--model",
                    model,
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        preds = json.loads(out.read_text())
        assert len(preds) == 16
        assert evaluate_main(["--task", task, "--preds", str(out), "--annotations", str(data)]) == 0
    events = json.loads((tmp_path / "1-2.json").read_text())
    annotations = {p.stem: json.loads(p.read_text()) for p in data.glob("*.json")}
    for record, labels in events.items():  # one label per annotated event, file order
        assert len(labels) == len(annotations[record]["event_annotation"])
        assert set(labels) <= {"Normal", "Wheeze", "Fine Crackle"}
    records = json.loads((tmp_path / "2-1.json").read_text())
    assert set(records.values()) <= {"Normal", "Adventitious", "Poor Quality"}
    assert "Score" in capsys.readouterr().out


@pytest.mark.slow
def test_torchrun_two_processes_on_gloo(tmp_path: Path, cache_dir: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not found beside the interpreter")
    # Generate the synthetic data once, outside the two ranks.
    fit(_tiny(tmp_path / "warm", cache_dir, "optim.epochs=1"), verbose=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "training.train",
            "--config",
            str(TINY),
            "--quiet",
            "--set",
            f"out_dir={tmp_path}",
            "--set",
            f"data.cache_dir={cache_dir}",
            "--set",
            "name=ddp",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = load_model(tmp_path / "ddp" / "best.pt")
    assert loaded.classes == ("Normal", "Wheeze", "Fine Crackle")
    epochs = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(epochs) == 2  # written by rank 0 only


def test_held_out_folds_partition_patients() -> None:
    from training.data import held_out_fold

    items = [(f"p{i % 7}", i) for i in range(40)]
    tests = []
    for fold in range(3):
        pool, test = held_out_fold(items, lambda it: it[0], 3, fold, seed=0)
        assert {p for p, _ in pool}.isdisjoint({p for p, _ in test})
        assert len(pool) + len(test) == len(items)
        tests += test
    assert sorted(tests) == sorted(items)  # every item is tested exactly once
    assert held_out_fold(items, lambda it: it[0], 0, 0, seed=0) == (items, [])


def test_train_sliding_adds_overlap_labelled_windows_to_train_only(
    tmp_path: Path, cache_dir: Path
) -> None:
    from training.data import build_training_data

    plain = build_training_data(_tiny(tmp_path, cache_dir))
    sliding = build_training_data(_tiny(tmp_path, cache_dir, "data.train_sliding=true"))
    added = sliding.train.windows[len(plain.train.windows) :]
    assert sliding.train.windows[: len(plain.train.windows)] == plain.train.windows
    assert added
    assert {w.start_frame for w in added} >= {0}
    assert {w.label for w in added} >= {"Normal", "Wheeze"}  # labelled by overlap
    assert sliding.val.windows == plain.val.windows  # selection stays on event windows


def test_crossval_pools_held_out_predictions(tmp_path: Path, cache_dir: Path) -> None:
    from training.crossval import crossvalidate

    run = _tiny(tmp_path, cache_dir, "optim.epochs=1", "data.val_fraction=0.2")
    report = crossvalidate(run, folds=2, verbose=False)
    assert sum(f["windows"] for f in report["per_fold"]) == 40  # every synthetic event once
    assert 0.0 <= report["pooled"]["score"] <= 1.0
    assert (tmp_path / "tiny-fold1" / "best.pt").exists()


def test_ssl_pretraining_runs_before_fine_tuning(tmp_path: Path, cache_dir: Path) -> None:
    fit(_tiny(tmp_path / "plain", cache_dir, "optim.epochs=1"), verbose=False)
    fit(
        _tiny(tmp_path / "ssl", cache_dir, "optim.epochs=1", "ssl.enabled=true", "ssl.epochs=1"),
        verbose=False,
    )
    plain, ssl = _weights(tmp_path / "plain/tiny/last.pt"), _weights(tmp_path / "ssl/tiny/last.pt")
    assert not all(torch.equal(plain[k], ssl[k]) for k in plain)  # pretraining moved the encoder
    assert set(plain) == set(ssl)  # and left no autoencoder parts in the classifier


def test_icbhi_runs_are_selected_on_icbhi_scores(tmp_path: Path) -> None:
    """ICBHI classes are lowercase: validation must score them with ICBHI's Se/Sp (a
    SPRSound scorer would find no 'Normal' and report SP 0 for a perfect model)."""
    from torch.utils.data import TensorDataset

    from training.data import TrainingData
    from training.train import validate

    class Constant(torch.nn.Module):  # predicts the true class of every window below
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            logits = torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 4).float()
            return logits, logits[:, :2], logits

    targets = torch.tensor([0, 0, 0, 1, 2, 3])
    x = torch.zeros(6, 1, 2, 2)
    x[:, 0, 0, 0] = targets.float()
    val = TensorDataset(x, targets, torch.ones(6))
    data = TrainingData(val, val, None, None, [3, 1, 1, 1], None, None)  # type: ignore[arg-type]
    run = load_run_config(REPO / "training/configs/icbhi.yaml")
    scores = validate(Constant(), data, run)  # type: ignore[arg-type]
    assert scores == {"se": 1.0, "sp": 1.0, "score": 1.0, "accuracy": 1.0}


def test_the_sed_run_yaml_is_the_frame_trainer_s_config_and_bad_keys_are_named():
    """`lungwatch train --config training/configs/sed.yaml` runs training/sed_train.py with
    that YAML: it loads into the trainer's config (the defaults the shipped model used), a
    switch of a seed method is a --set away, and a wrong key or trainer is named."""
    from edge.config import load_config
    from edge.errors import ConfigError
    from training.models.sed import SedConfig
    from training.sed_train import Proto
    from training.train import _trainer
    from training.train import main as train_main

    path = Path(__file__).resolve().parents[2] / "training/configs/sed.yaml"
    assert _trainer(str(path)) == "sed"
    loaded = load_config(Proto, path, ["name=proto"])
    assert loaded == Proto()
    varied = load_config(Proto, path, ["model.freq_channels=8", "cutmix_prob=0.5", "seed=2"])
    assert varied.model == SedConfig(freq_channels=8)
    assert (varied.cutmix_prob, varied.seed) == (0.5, 2)
    with pytest.raises(ConfigError, match=r"sed\.yaml.*channelz"):
        load_config(Proto, path, ["model.channelz=8"])
    with pytest.raises(ConfigError, match="trainer must be"):
        train_main(["--config", str(path), "--set", "trainer=bogus"])
