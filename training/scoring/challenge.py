"""Benchmark scores: SPRSound challenge, ICBHI 2017, per-class P/R/F1 (definitions:
docs/metrics.md; event-based F1 is sed_eval's, :mod:`training.scoring.detection`). A ratio with
an empty denominator is 0.0, never NaN. Only numpy (no torch), so the device side can import
it too."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lungwatch.errors import LungwatchError
from lungwatch.labels import (
    BINARY_LABELS,
    EVENT_LABELS,
    ICBHI_LABELS,
    NORMAL,
    RECORD_LABELS,
    RECORD_LABELS_2_1,
    record_label_2_1,
    to_binary,
)

if TYPE_CHECKING:
    from training.data.icbhi import IcbhiCycle
    from training.data.sprsound import SprEvent

#: Evaluation tasks: SPRSound 1-1/1-2 (per event), 2-1/2-2 (per record), ICBHI (per cycle).
EVENT_TASKS: tuple[str, ...] = ("1-1", "1-2")
RECORD_TASKS: tuple[str, ...] = ("2-1", "2-2")
ICBHI_TASK = "icbhi"
TASKS: tuple[str, ...] = (*EVENT_TASKS, *RECORD_TASKS, ICBHI_TASK)
#: The label vocabulary of each task, in the order of the models' class lists.
TASK_LABELS: dict[str, tuple[str, ...]] = {
    "1-1": BINARY_LABELS,
    "1-2": EVENT_LABELS,
    "2-1": RECORD_LABELS_2_1,
    "2-2": RECORD_LABELS,
    ICBHI_TASK: ICBHI_LABELS,
}
ICBHI_NORMAL = ICBHI_LABELS[0]
#: The label scored in SP for each task; every other label is scored in SE.
TASK_NORMAL: dict[str, str] = {task: NORMAL for task in (*EVENT_TASKS, *RECORD_TASKS)} | {
    ICBHI_TASK: ICBHI_NORMAL
}


class EvaluationError(LungwatchError, ValueError):
    """Predictions or references cannot be scored; the message says what and where."""


@dataclass(frozen=True)
class SprScores:
    """SPRSound challenge scores (``as_`` because ``as`` is a keyword)."""

    se: float
    sp: float
    as_: float
    hs: float
    score: float
    n_normal: int
    n_abnormal: int


@dataclass(frozen=True)
class IcbhiScores:
    se: float
    sp: float
    score: float
    n_normal: int
    n_abnormal: int


@dataclass(frozen=True)
class PRF:
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int

    @property
    def support(self) -> int:
        return self.tp + self.fn


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _paired(y_true: Sequence[str], y_pred: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    if len(y_true) != len(y_pred):
        raise EvaluationError(f"{len(y_true)} true labels but {len(y_pred)} predicted labels")
    if not y_true:
        raise EvaluationError("no items to score")
    return np.asarray(y_true, dtype=str), np.asarray(y_pred, dtype=str)


def _normal_split(
    y_true: Sequence[str], y_pred: Sequence[str], normal_label: str
) -> tuple[float, float, int, int]:
    """``(se, sp, n_normal, n_abnormal)``: exact-class hit rates on non-normal / normal items."""
    true, pred = _paired(y_true, y_pred)
    is_normal = true == normal_label
    correct = true == pred
    n_normal = int(is_normal.sum())
    n_abnormal = true.size - n_normal
    se = _ratio(int((correct & ~is_normal).sum()), n_abnormal)
    sp = _ratio(int((correct & is_normal).sum()), n_normal)
    return se, sp, n_normal, n_abnormal


def sprsound_scores(
    y_true: Sequence[str], y_pred: Sequence[str], normal_label: str = NORMAL
) -> SprScores:
    """SPRSound challenge scores of parallel true/predicted label lists (any task); every label
    other than ``normal_label`` is scored in SE, ``Poor Quality`` included."""
    se, sp, n_normal, n_abnormal = _normal_split(y_true, y_pred, normal_label)
    as_ = (se + sp) / 2.0
    hs = 2.0 * se * sp / (se + sp) if se + sp > 0.0 else 0.0  # their harmonic mean
    return SprScores(se, sp, as_, hs, (as_ + hs) / 2.0, n_normal, n_abnormal)


def icbhi_scores(y_true: Sequence[str], y_pred: Sequence[str]) -> IcbhiScores:
    """ICBHI 2017 scores of parallel cycle label lists (normal, crackle, wheeze, both)."""
    se, sp, n_normal, n_abnormal = _normal_split(y_true, y_pred, ICBHI_NORMAL)
    return IcbhiScores(se, sp, (se + sp) / 2.0, n_normal, n_abnormal)


def confusion(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Confusion matrix ``(len(labels), len(labels))`` int64: rows true, columns predicted."""
    true, pred = _paired(y_true, y_pred)
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted((set(true.tolist()) | set(pred.tolist())) - set(index))
    if unknown:
        raise EvaluationError(f"labels {unknown} are not among {list(labels)}")
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    rows = np.fromiter((index[label] for label in true.tolist()), dtype=np.int64)
    cols = np.fromiter((index[label] for label in pred.tolist()), dtype=np.int64)
    np.add.at(matrix, (rows, cols), 1)
    return matrix


def prf(tp: int, fp: int, fn: int) -> PRF:
    return PRF(
        _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn), tp, fp, fn
    )


def per_class_scores(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]
) -> dict[str, PRF]:
    """Precision, recall and F1 of each label (one-vs-rest), keyed in ``labels`` order."""
    matrix = confusion(y_true, y_pred, labels)
    tp = np.diag(matrix)
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    return {label: prf(int(tp[i]), int(fp[i]), int(fn[i])) for i, label in enumerate(labels)}


def micro_average(per_class: Mapping[str, PRF]) -> PRF:
    """P/R/F1 of the counts summed over classes (for single-label items: accuracy)."""
    return prf(*(sum(getattr(s, name) for s in per_class.values()) for name in ("tp", "fp", "fn")))


def macro_average(per_class: Mapping[str, PRF]) -> PRF:
    """Unweighted mean of per-class P, R, F1, all-zero classes left out; counts are summed."""
    active = [s for s in per_class.values() if s.tp + s.fp + s.fn > 0]
    tp, fp, fn = (sum(getattr(s, name) for s in per_class.values()) for name in ("tp", "fp", "fn"))
    if not active:
        return PRF(0.0, 0.0, 0.0, tp, fp, fn)
    mean = [
        float(np.mean([getattr(s, name) for s in active])) for name in ("precision", "recall", "f1")
    ]
    return PRF(mean[0], mean[1], mean[2], tp, fp, fn)


def _check_task(task: str, allowed: Sequence[str]) -> None:
    if task not in allowed:
        raise EvaluationError(f"task {task!r} is not one of {', '.join(allowed)}")


def event_task_labels(events: Iterable[SprEvent], task: str) -> list[str]:
    _check_task(task, EVENT_TASKS)
    return [to_binary(e.type) if task == "1-1" else e.type for e in events]


def record_task_label(record_label: str, task: str) -> str:
    _check_task(task, RECORD_TASKS)
    return record_label_2_1(record_label) if task == "2-1" else record_label


def icbhi_cycle_labels(cycles: Iterable[IcbhiCycle]) -> list[str]:
    return [cycle.label for cycle in cycles]
