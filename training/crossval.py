"""``lungwatch crossval --config RUN.yaml --folds K``: patient-grouped cross-validation.

For each fold k, the patients of fold k are held out as test; a patient-disjoint validation
split is carved from the rest for epoch selection; the model trained on the remainder
predicts the held-out windows. Predictions of all folds are pooled and scored once (ICBHI
Se/Sp/Score for ``dataset: icbhi``, SPRSound SE/SP/Score otherwise). Writes
``<out_dir>/<name>-cv.json`` with per-fold and pooled scores.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from edge.labels import ICBHI_LABELS
from firmware_bridge.cliparse import ArgumentParser
from training.config import RunConfig, load_run_config
from training.data import build_training_data
from training.inference import WindowClassifier, load_classifier, window_probabilities
from training.metrics import icbhi_scores, sprsound_scores
from training.train import fit


def fold_run(run: RunConfig, folds: int, fold: int) -> RunConfig:
    data = dataclasses.replace(run.data, folds=folds, fold=fold)
    return dataclasses.replace(run, name=f"{run.name}-fold{fold}", data=data)


def predict_held_out(run: RunConfig, classifier: WindowClassifier) -> tuple[list[str], list[str]]:
    """(true labels, predicted labels) of the held-out fold's windows."""
    data = build_training_data(run)
    if data.test is None:
        raise ValueError(f"{run.name}: no held-out windows (folds={run.data.folds})")
    windows = data.test.windows
    probs = window_probabilities(classifier, data.test.store, windows)
    predicted = [classifier.classes[i] for i in np.argmax(probs, axis=1)]
    return [w.label for w in windows], predicted


def scores_of(dataset: str, y_true: list[str], y_pred: list[str]) -> dict[str, float]:
    if dataset == "icbhi":
        s = icbhi_scores(y_true, y_pred)
        return {"se": s.se, "sp": s.sp, "score": s.score}
    r = sprsound_scores(y_true, y_pred)
    return {"se": r.se, "sp": r.sp, "as": r.as_, "hs": r.hs, "score": r.score}


def crossvalidate(run: RunConfig, folds: int, verbose: bool = True) -> dict[str, Any]:
    y_true: list[str] = []
    y_pred: list[str] = []
    per_fold = []
    for fold in range(folds):
        sub = fold_run(run, folds, fold)
        result = fit(sub, verbose=verbose)
        truth, guess = predict_held_out(sub, load_classifier(result["best"]))
        per_fold.append(
            {
                "fold": fold,
                "windows": len(truth),
                "best_epoch": result["epoch"],
                **scores_of(run.data.dataset, truth, guess),
            }
        )
        y_true += truth
        y_pred += guess
        if verbose:
            print(f"fold {fold}: {per_fold[-1]}", flush=True)
    pooled = scores_of(run.data.dataset, y_true, y_pred)
    return {
        "config": run.name,
        "folds": folds,
        "pooled": pooled,
        "per_fold": per_fold,
        "labels": list(ICBHI_LABELS) if run.data.dataset == "icbhi" else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch crossval", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="run YAML")
    parser.add_argument("--folds", type=int, default=5, help="number of patient-grouped folds")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error(f"--folds must be >= 2, got {args.folds}")
    run = load_run_config(args.config, args.set)
    report = crossvalidate(run, args.folds, verbose=not args.quiet)
    out = Path(run.out_dir) / f"{run.name}-cv.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    pooled = report["pooled"]
    print(
        f"{args.folds}-fold pooled: "
        + "  ".join(f"{k} {v:.3f}" for k, v in pooled.items())
        + f"  -> {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
