"""Benchmark scores: SPRSound challenge, ICBHI 2017, per-class P/R/F1, event-based F1
(definitions: docs/metrics.md). A ratio with an empty denominator is 0.0, never NaN. Only numpy
and scipy (no torch), so the device side can import it too."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import linear_sum_assignment

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

ONSET_TOLERANCE_S = 0.2  # DCASE t_collar
OFFSET_TOLERANCE_S = 0.2  # DCASE t_collar, applied to offsets
OFFSET_FRACTION = 0.2  # DCASE percentage_of_length
TIME_EPSILON_S = 1e-9  # makes the tolerance bounds inclusive despite float rounding


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


@dataclass(frozen=True)
class Event:
    start_s: float
    end_s: float
    label: str

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start_s) and math.isfinite(self.end_s)):
            raise EvaluationError(f"event {self}: times must be finite")
        if self.end_s <= self.start_s:
            raise EvaluationError(f"event {self}: end_s must be after start_s")


@dataclass(frozen=True)
class EventScores:
    per_class: dict[str, PRF]
    micro: PRF
    macro: PRF


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


@dataclass(frozen=True)
class EventTolerance:
    """When an estimate may match a reference event; ``offset_s=None`` scores onsets only."""

    onset_s: float = ONSET_TOLERANCE_S
    offset_s: float | None = OFFSET_TOLERANCE_S
    offset_fraction: float = OFFSET_FRACTION


DEFAULT_TOLERANCE = EventTolerance()


def events_match(reference: Event, estimate: Event, tolerance: EventTolerance) -> bool:
    if reference.label != estimate.label:
        return False
    if abs(estimate.start_s - reference.start_s) > tolerance.onset_s + TIME_EPSILON_S:
        return False
    if tolerance.offset_s is None:
        return True
    duration_s = reference.end_s - reference.start_s
    offset_bound_s = max(tolerance.offset_s, tolerance.offset_fraction * duration_s)
    return abs(estimate.end_s - reference.end_s) <= offset_bound_s + TIME_EPSILON_S


def match_events(
    reference: Sequence[Event], estimated: Sequence[Event], tolerance: EventTolerance
) -> list[tuple[int, int]]:
    """A maximum one-to-one matching (Hungarian algorithm, so no matching order can cost a true
    positive): ``(reference index, estimate index)`` pairs."""
    if not reference or not estimated:
        return []
    allowed = np.array([[events_match(r, e, tolerance) for e in estimated] for r in reference])
    rows, cols = linear_sum_assignment(allowed, maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if allowed[r, c]]


def event_f1(
    reference: Sequence[Event],
    estimated: Sequence[Event],
    classes: Sequence[str] | None = None,
    *,
    onset_tolerance_s: float = ONSET_TOLERANCE_S,
    offset_tolerance_s: float | None = OFFSET_TOLERANCE_S,
    offset_fraction: float = OFFSET_FRACTION,
) -> EventScores:
    """One recording's event scores; ``offset_tolerance_s=None`` scores onsets only."""
    tolerance = EventTolerance(onset_tolerance_s, offset_tolerance_s, offset_fraction)
    return event_f1_recordings({"": reference}, {"": estimated}, classes, tolerance)


def event_f1_recordings(
    reference: Mapping[str, Sequence[Event]],
    estimated: Mapping[str, Sequence[Event]],
    classes: Sequence[str] | None = None,
    tolerance: EventTolerance = DEFAULT_TOLERANCE,
) -> EventScores:
    """Counts summed over recordings, then P/R/F1; events match only within recording and class."""
    extra = sorted(set(estimated) - set(reference))
    if extra:
        raise EvaluationError(f"{len(extra)} estimated recording(s) have no reference: {extra[:3]}")
    chosen = _event_classes(reference, estimated, classes)
    counts = {label: np.zeros(3, dtype=np.int64) for label in chosen}  # tp, fp, fn
    for recording, refs in reference.items():
        ests = estimated.get(recording, ())
        for label, tp_fp_fn in counts.items():
            ref_c = [e for e in refs if e.label == label]
            est_c = [e for e in ests if e.label == label]
            tp = len(match_events(ref_c, est_c, tolerance))
            tp_fp_fn += (tp, len(est_c) - tp, len(ref_c) - tp)
    per_class = {label: prf(*(int(n) for n in counts[label])) for label in chosen}
    return EventScores(per_class, micro_average(per_class), macro_average(per_class))


def _event_classes(
    reference: Mapping[str, Sequence[Event]],
    estimated: Mapping[str, Sequence[Event]],
    classes: Sequence[str] | None,
) -> list[str]:
    labels = {e.label for events in (*reference.values(), *estimated.values()) for e in events}
    chosen = sorted(labels) if classes is None else list(classes)
    if labels - set(chosen):
        raise EvaluationError(f"event labels {sorted(labels - set(chosen))} not among {chosen}")
    return chosen


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
