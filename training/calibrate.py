"""``lungwatch calibrate --model best.pt``: fit the Task 2 record thresholds on validation.

The record decision (:func:`training.predict.record_decision`) compares three statistics of
a record's window probabilities with three thresholds. This command rebuilds the run's
patient-disjoint validation split from the checkpoint's own config (never a test set), grid-
searches the thresholds that maximise the Task 2-2 Score there, and stores them, with the
validation scores before and after, in the checkpoint (``record_thresholds``,
``record_calibration``).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from edge.labels import RECORD_LABELS
from firmware_bridge.cliparse import ArgumentParser
from training.checkpoint import load_model, read_checkpoint
from training.data import data_folder
from training.datasets.sprsound import SprRecord, load_sprsound, patient_disjoint_split
from training.inference import load_classifier
from training.metrics import sprsound_scores
from training.predict import RecordThresholds, record_decision, record_window_stats

PQ_GRID = np.round(np.linspace(0.05, 0.95, 19), 3)
FAMILY_GRID = np.round(np.linspace(0.3, 0.99, 24), 3)


def validation_records(model: Path) -> list[SprRecord]:
    """The checkpoint's own patient-disjoint validation records (from its run config)."""
    run = load_model(model).run
    if run.data.dataset != "sprsound":
        raise ValueError(
            f"{model}: record thresholds need a SPRSound run, "
            f"this one trained on {run.data.dataset!r}"
        )
    records = load_sprsound(data_folder(run) / "sprsound" / "train")
    records = records[: run.data.max_records] if run.data.max_records else records
    _, val = patient_disjoint_split(records, run.data.val_fraction, run.data.split_seed)
    return val


def task_score(stats: np.ndarray, truth: list[str], thresholds: RecordThresholds) -> float:
    predicted = [record_decision(row, thresholds) for row in stats]
    return sprsound_scores(truth, predicted).score


def fit_thresholds(stats: np.ndarray, truth: list[str]) -> tuple[RecordThresholds, float]:
    """The grid point with the best Task 2-2 Score (ties: the first, i.e. lowest)."""
    best, best_score = RecordThresholds(), -1.0
    for pq, cas, das in itertools.product(PQ_GRID, FAMILY_GRID, FAMILY_GRID):
        candidate = RecordThresholds(float(pq), float(cas), float(das))
        score = task_score(stats, truth, candidate)
        if score > best_score:
            best, best_score = candidate, score
    return best, best_score


def calibrate(model: Path) -> dict[str, object]:
    classifier = load_classifier(model)
    records = validation_records(model)
    truth = [r.record_label for r in records]
    stats = record_window_stats(classifier, records)
    before = task_score(stats, truth, RecordThresholds())
    thresholds, after = fit_thresholds(stats, truth)
    payload = read_checkpoint(model)
    payload["record_thresholds"] = asdict(thresholds)
    payload["record_calibration"] = {
        "validation_records": len(records),
        "task_2_2_score_default": before,
        "task_2_2_score_fitted": after,
    }
    torch.save(payload, model)
    return {
        "thresholds": asdict(thresholds),
        **payload["record_calibration"],
        "labels": list(RECORD_LABELS),
    }


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="checkpoint to update")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(json.dumps(calibrate(args.model), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
