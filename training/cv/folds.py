"""Patient-grouped folds, kept as fixed files (``training/cv/folds/<dataset>-k<K>.json``) so every
design, seed and session is judged on the same partition (docs/training.md, "Folds")."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from lungwatch.errors import ConfigError

FOLD_DIR = Path(__file__).with_name("folds")
DEFAULT_K = 5
FOLD_SEED = 0
DATASETS = ("sprsound", "icbhi")


class HasPatient(Protocol):
    @property
    def patient_id(self) -> str: ...


R = TypeVar("R", bound=HasPatient)


@dataclass(frozen=True)
class Folds:
    dataset: str
    k: int
    patients: dict[str, int]  # patient id -> fold
    method: str = ""

    def fold_of(self, patient: str) -> int:
        try:
            return self.patients[patient]
        except KeyError:
            raise ConfigError(
                f"patient {patient!r} is in no fold of {self.dataset}'s fold file; the data "
                f"changed since it was made (lungwatch cv folds --write makes it again)"
            ) from None

    def split(self, records: Sequence[R], fold: int) -> tuple[list[R], list[R]]:
        """(records of patients outside ``fold``, records of patients inside it)."""
        if not 0 <= fold < self.k:
            raise ConfigError(f"fold {fold} of {self.dataset}: expected 0..{self.k - 1}")
        inside = [r for r in records if self.fold_of(r.patient_id) == fold]
        outside = [r for r in records if self.fold_of(r.patient_id) != fold]
        return outside, inside

    def patients_of(self, fold: int) -> set[str]:
        return {p for p, f in self.patients.items() if f == fold}

    def to_dict(self) -> dict[str, object]:
        return {
            "dataset": self.dataset,
            "k": self.k,
            "method": self.method,
            "patients": dict(sorted(self.patients.items())),
        }


def fold_path(dataset: str, k: int = DEFAULT_K) -> Path:
    return FOLD_DIR / f"{dataset}-k{k}.json"


def load_folds(dataset: str, k: int = DEFAULT_K, path: Path | None = None) -> Folds:
    if dataset not in DATASETS and path is None:
        raise ConfigError(f"folds: dataset {dataset!r}, expected one of {DATASETS}")
    path = path or fold_path(dataset, k)
    try:
        doc = json.loads(path.read_text())
        folds = Folds(str(doc["dataset"]), int(doc["k"]), dict(doc["patients"]), doc["method"])
    except FileNotFoundError:
        raise ConfigError(f"{path}: no fold file (lungwatch cv folds --write makes it)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a fold file ({exc})") from None
    bad = {f for f in folds.patients.values() if not isinstance(f, int) or not 0 <= f < folds.k}
    if bad:
        raise ConfigError(f"{path}: folds {sorted(map(str, bad))} outside 0..{folds.k - 1}")
    return folds


def make_folds(
    dataset: str, patients: Sequence[str], labels: Sequence[str], k: int = DEFAULT_K
) -> Folds:
    """Grouped by patient, stratified by label; one patient and one label per recording."""
    from sklearn.model_selection import StratifiedGroupKFold

    if len(set(patients)) < k:
        raise ConfigError(f"{dataset}: {len(set(patients))} patients cannot fill {k} folds")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=FOLD_SEED)
    assignment: dict[str, int] = {}
    for fold, (_, held) in enumerate(splitter.split(labels, labels, groups=patients)):
        for i in held:
            assignment[patients[i]] = fold
    method = (
        f"sklearn StratifiedGroupKFold(n_splits={k}, shuffle=True, random_state={FOLD_SEED}) "
        f"over {len(patients)} recordings: groups = patients, strata = recording labels"
    )
    return Folds(dataset, k, assignment, method)


def label_counts(folds: Folds, patients: Iterable[str], labels: Iterable[str]) -> list[Counter]:
    out: list[Counter] = [Counter() for _ in range(folds.k)]
    for p, label in zip(patients, labels, strict=True):
        out[folds.fold_of(p)][label] += 1
    return out
