"""Out-of-fold (OOF) outputs of a design: each recording's from its own fold's model; and the
SPRSound truth they are judged on. :func:`ensemble` of a fold-``k`` recording's fold-``k``
models of every seed (mean logits, as the teacher) is out of fold too."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.datapaths import data_root, sprsound_root
from lungwatch.errors import ConfigError
from training.cv.folds import Folds, load_folds
from training.data.sprsound import load_sprsound, scoring_truth
from training.scoring.detection import Event

EPS = 1e-4


@dataclass
class Truth:
    records: list[str]  # sorted ids
    annotated: dict[str, list[Event]]
    labels: dict[str, str]
    durations: dict[str, float]
    patients: dict[str, str]
    folds: dict[str, int]  # record -> fold (-1: none, a set without folds)


def load_truth(folder: Path | None = None, folds: Folds | None = None) -> Truth:
    """The annotations of SPRSound ``train`` (or ``folder``) with each record's fold."""
    folder = folder or sprsound_root() / "train"
    records = load_sprsound(folder)
    folds = folds if folds is not None or folder.name != "train" else load_folds("sprsound")
    return Truth(
        sorted(r.record_id for r in records),
        *scoring_truth(records),
        {r.record_id: r.patient_id for r in records},
        {r.record_id: folds.fold_of(r.patient_id) if folds else -1 for r in records},
    )


def fold_of_dir(folder: Path) -> int:
    return int(folder.name.removeprefix("fold"))


def seeds_of(design: Path) -> list[int]:
    return sorted(int(p.name.removeprefix("seed")) for p in design.glob("seed*") if p.is_dir())


def read_outputs(folder: Path, prefix: str) -> dict[str, np.ndarray]:
    """A fold model's outputs of the set ``prefix``, record -> (n, O)."""
    path = folder / "outputs.npz"
    if not path.is_file():
        raise ConfigError(
            f"{path}: missing (lungwatch cv predict --design {folder.parents[1].name})"
        )
    with np.load(path) as stored:
        return {
            k.split("/", 1)[1]: stored[k].astype(np.float32)
            for k in stored.files
            if k.startswith(prefix + "/")
        }


def oof_outputs(design: Path, truth: Truth) -> dict[int, dict[str, np.ndarray]]:
    """``{seed: {record: (n, O)}}``: every record of ``truth`` from its own fold's model."""
    out: dict[int, dict[str, np.ndarray]] = {}
    for seed in seeds_of(design):
        probs: dict[str, np.ndarray] = {}
        for folder in sorted((design / f"seed{seed}").glob("fold*")):
            k = fold_of_dir(folder)
            if not (folder / "done.json").is_file():
                continue
            mine = {r for r in truth.records if truth.folds[r] == k}
            probs |= {r: p for r, p in read_outputs(folder, "sprsound").items() if r in mine}
        missing = [r for r in truth.records if r not in probs]
        if missing:
            raise ConfigError(
                f"{design} seed {seed}: no out-of-fold output for {len(missing)} records (a "
                f"fold not trained?), e.g. {missing[0]}"
            )
        out[seed] = probs
    if not out:
        raise ConfigError(f"{design}: no seed folder with fold models")
    return out


def icbhi_patients() -> dict[str, str]:
    """ICBHI ``train``'s recordings -> their patients (none where the folder is absent)."""
    from training.data.icbhi import load_icbhi

    folder = data_root() / "icbhi" / "train"
    return {r.recording_id: r.patient_id for r in load_icbhi(folder)} if folder.is_dir() else {}


def icbhi_out_of_fold(
    design: Path, patients: Mapping[str, str], seed: int
) -> dict[str, tuple[int, np.ndarray]]:
    """``{recording: (fold, outputs)}``, each from seed ``seed``'s model of its own ICBHI fold."""
    folds = load_folds("icbhi")
    out: dict[str, tuple[int, np.ndarray]] = {}
    for folder in sorted((design / f"seed{seed}").glob("fold*")):
        if not (folder / "done.json").is_file():
            continue
        k = fold_of_dir(folder)
        for r, p in read_outputs(folder, "icbhi").items():
            if r in patients and folds.fold_of(patients[r]) == k:
                out[r] = (k, p)
    return out


def all_models_outputs(design: Path, prefix: str) -> list[dict[str, np.ndarray]]:
    """Every fold model's outputs of a set none trained on (``intra_test``, ``icbhi``)."""
    return [read_outputs(p.parent, prefix) for p in sorted(design.glob("seed*/fold*/done.json"))]


def ensemble(members: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The mean logits of ``members`` (dicts of record -> (n, O)), through the sigmoid."""
    keys = set(members[0])
    for m in members[1:]:
        keys &= set(m)
    out = {}
    for key in keys:
        clipped = [np.clip(m[key], EPS, 1 - EPS) for m in members]
        logits = [np.log(q / (1 - q)) for q in clipped]
        out[key] = (1.0 / (1.0 + np.exp(-np.mean(logits, axis=0)))).astype(np.float32)
    return out
