"""Training on all of `train` (`train_on_validation`): the split it trains on and the epoch it
keeps."""

from __future__ import annotations

import numpy as np
import pytest

from edge.config import ConfigError
from training.recordings import Recording
from training.sed_train import Proto, selection_score, split_records


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
    """The epoch the trainer's loop keeps: the first whose selection score beats all before."""
    best, kept = -1.0, -1
    for epoch, score in enumerate(scores):
        s = selection_score(cfg, epoch, score)
        if s > best:
            best, kept = s, epoch
    return kept


def test_held_out_selection_keeps_the_best_validation_epoch() -> None:
    assert _kept(Proto(epochs=4), [0.1, 0.3, 0.2, 0.3]) == 1


def test_train_on_validation_keeps_the_fixed_epoch_whatever_validation_says() -> None:
    scores = [0.1, 0.5, 0.2, 0.0]
    assert _kept(Proto(epochs=4, train_on_validation=True, fixed_epoch=2), scores) == 2
    assert _kept(Proto(epochs=4, train_on_validation=True), scores) == 3  # -1: the last


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epochs": 4, "train_on_validation": True, "fixed_epoch": 4},
        {"epochs": 4, "train_on_validation": True, "fixed_epoch": -2},
        {"epochs": 4, "fixed_epoch": 2},  # a fixed epoch means nothing with a held-out split
    ],
)
def test_proto_refuses_a_fixed_epoch_it_cannot_keep(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="fixed_epoch"):
        Proto(**kwargs)  # type: ignore[arg-type]
