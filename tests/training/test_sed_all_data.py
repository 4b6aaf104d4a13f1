"""Training on all of `train` (`train_on_validation`): the split it trains on, the epoch it
keeps, and the steps that must not take such a checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edge.config import ConfigError
from export.streaming_model import StreamingModelError, export_folder, load_checkpoint
from tests.streaming_fixture import tiny_checkpoint
from training.recordings import Recording
from training.sed_calibrate import fit_checkpoint
from training.sed_train import NOTHING_KEPT, Proto, kept_best, split_records


def _recording(name: str) -> Recording:
    targets = np.zeros((7, 4), np.float32)
    features = np.zeros((1, 8, 16), np.float16)
    return Recording(name, name[:1], "Normal", features, targets, np.ones_like(targets), ())


RECS = [_recording(name) for name in ("a1", "a2", "b1", "c1", "c2")]
VAL = {"b1", "c2"}


def test_the_held_out_split_keeps_validation_out_of_training() -> None:
    train, val = split_records(RECS, VAL, train_on_validation=False)
    assert [r.record_id for r in train] == ["a1", "a2", "c1"]
    assert [r.record_id for r in val] == ["b1", "c2"]


def test_train_on_validation_trains_on_every_recording_and_still_reports_validation() -> None:
    train, val = split_records(RECS, VAL, train_on_validation=True)
    assert sorted(r.record_id for r in train) == ["a1", "a2", "b1", "c1", "c2"]
    assert [r.record_id for r in val] == ["b1", "c2"]


def _kept(cfg: Proto, scores: list[float]) -> int:
    """The epoch whose checkpoint stays last, deciding each epoch as the trainer does."""
    best, kept = NOTHING_KEPT, -1
    for epoch, score in enumerate(scores):
        new_best = kept_best(cfg, epoch, score, best)
        if new_best is not None:
            best, kept = new_best, epoch
    return kept


def test_held_out_selection_keeps_the_best_validation_epoch() -> None:
    assert _kept(Proto(epochs=4), [0.1, 0.3, 0.2, 0.3]) == 1


def test_train_on_validation_keeps_the_fixed_epoch_whatever_validation_says() -> None:
    scores = [0.1, 0.5, 0.2, 0.0]
    assert _kept(Proto(epochs=4, train_on_validation=True, fixed_epoch=2), scores) == 2
    assert _kept(Proto(epochs=4, train_on_validation=True), scores) == 3  # -1: the last


def test_an_epoch_that_scores_zero_is_still_kept_when_nothing_is_yet() -> None:
    assert _kept(Proto(epochs=3), [0.0, 0.0, 0.0]) == 0


RANGE = r"fixed_epoch must be -1 \(the last\) or an epoch in \[0, epochs - 1 = 3\], got "


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 4, "train_on_validation": True, "fixed_epoch": 4}, RANGE + "4"),
        ({"epochs": 4, "train_on_validation": True, "fixed_epoch": -2}, RANGE + "-2"),
        # a fixed epoch means nothing with a held-out split
        (
            {"epochs": 4, "fixed_epoch": 2},
            "fixed_epoch must be -1 unless train_on_validation is true, got 2",
        ),
    ],
)
def test_proto_refuses_a_fixed_epoch_it_cannot_keep(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Proto(**kwargs)  # type: ignore[arg-type]


def _trained_on_validation(path: Path) -> Path:
    data = torch.load(tiny_checkpoint(path), weights_only=False)
    data["train_on_validation"] = True  # as the trainer writes it in that mode
    torch.save(data, path)
    return path


def test_a_checkpoint_trained_on_validation_loads_but_not_where_held_out_matters(
    tmp_path: Path,
) -> None:
    plain = tiny_checkpoint(tmp_path / "plain.pt")
    marked = _trained_on_validation(tmp_path / "all.pt")
    load_checkpoint(plain, held_out=True)  # a held-out run is fine everywhere
    load_checkpoint(marked)  # inspecting one is fine
    with pytest.raises(StreamingModelError, match="trained on the validation records too"):
        load_checkpoint(marked, held_out=True)
    # fitting the detector on validation and exporting it both refuse, before any work
    with pytest.raises(StreamingModelError, match="trained on the validation records too"):
        fit_checkpoint(marked)
    with pytest.raises(StreamingModelError, match="trained on the validation records too"):
        export_folder(marked, tmp_path / "out", name="all", chunk_frames=4)
    assert not (tmp_path / "out").exists()
