"""Tests of training.scoring.challenge against hand-computed cases."""

from __future__ import annotations

import math
from dataclasses import astuple

import numpy as np
import pytest

from lungwatch.labels import EVENT_LABELS, ICBHI_LABELS, RECORD_LABELS
from training.data.icbhi import IcbhiCycle
from training.data.sprsound import SprEvent
from training.scoring.challenge import (
    DEFAULT_TOLERANCE,
    OFFSET_FRACTION,
    OFFSET_TOLERANCE_S,
    ONSET_TOLERANCE_S,
    PRF,
    TASK_LABELS,
    TASK_NORMAL,
    TASKS,
    EvaluationError,
    Event,
    IcbhiScores,
    SprScores,
    confusion,
    event_f1,
    event_f1_recordings,
    event_task_labels,
    icbhi_cycle_labels,
    icbhi_scores,
    macro_average,
    match_events,
    micro_average,
    per_class_scores,
    prf,
    record_task_label,
    sprsound_scores,
)

N, W, R, FC, CC = "Normal", "Wheeze", "Rhonchi", "Fine Crackle", "Coarse Crackle"
JUST_OVER_S = 1e-4  # beyond the inclusive tolerance bound


def _approx(scores: SprScores, se: float, sp: float, as_: float, hs: float, score: float) -> None:
    got = (scores.se, scores.sp, scores.as_, scores.hs, scores.score)
    assert got == pytest.approx((se, sp, as_, hs, score))


def _values(scores: PRF) -> tuple[float, ...]:
    return astuple(scores)


# --- SPRSound and ICBHI scores ------------------------------------------------------------


def test_sprsound_scores_hand_computed() -> None:
    y_true = [N, N, N, N, W, W, FC, R]
    y_pred = [N, N, N, W, W, R, FC, N]  # 3/4 normal right; W and FC right, W->R and R->N wrong
    scores = sprsound_scores(y_true, y_pred)
    _approx(scores, se=0.5, sp=0.75, as_=0.625, hs=0.6, score=0.6125)
    assert (scores.n_normal, scores.n_abnormal) == (4, 4)


def test_sprsound_se_needs_the_exact_class() -> None:
    scores = sprsound_scores([W, FC, N], [R, CC, N])  # adventitious, but the wrong class
    _approx(scores, se=0.0, sp=1.0, as_=0.5, hs=0.0, score=0.25)


def test_poor_quality_counts_in_se() -> None:
    y_true = ["Normal", "Poor Quality", "CAS", "Poor Quality"]
    y_pred = ["Normal", "Poor Quality", "Normal", "Normal"]
    scores = sprsound_scores(y_true, y_pred)
    assert (scores.n_normal, scores.n_abnormal) == (1, 3)
    _approx(scores, se=1 / 3, sp=1.0, as_=2 / 3, hs=0.5, score=7 / 12)


def test_no_normal_items() -> None:
    scores = sprsound_scores([W, W], [W, N])
    _approx(scores, se=0.5, sp=0.0, as_=0.25, hs=0.0, score=0.125)
    assert scores.n_normal == 0


def test_no_abnormal_items() -> None:
    scores = sprsound_scores([N, N, N], [N, N, W])
    _approx(scores, se=0.0, sp=2 / 3, as_=1 / 3, hs=0.0, score=1 / 6)
    assert scores.n_abnormal == 0


def test_all_wrong_and_all_right() -> None:
    _approx(sprsound_scores([N, W, FC], [W, N, W]), 0.0, 0.0, 0.0, 0.0, 0.0)
    _approx(sprsound_scores([N, W, FC], [N, W, FC]), 1.0, 1.0, 1.0, 1.0, 1.0)


def test_normal_label_parameter() -> None:
    scores = sprsound_scores(["normal", "x"], ["normal", "normal"], normal_label="normal")
    _approx(scores, se=0.0, sp=1.0, as_=0.5, hs=0.0, score=0.25)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "message"),
    [([N, W], [N], "2 true labels but 1 predicted"), ([], [], "no items to score")],
)
def test_scores_reject_bad_lengths(y_true: list[str], y_pred: list[str], message: str) -> None:
    with pytest.raises(EvaluationError, match=message):
        sprsound_scores(y_true, y_pred)


def test_icbhi_scores_hand_computed() -> None:
    y_true = ["normal"] * 4 + ["crackle", "wheeze", "both", "both"]
    y_pred = ["normal", "normal", "normal", "crackle", "crackle", "both", "both", "wheeze"]
    scores = icbhi_scores(y_true, y_pred)
    assert scores == IcbhiScores(se=0.5, sp=0.75, score=0.625, n_normal=4, n_abnormal=4)


def test_icbhi_edge_cases() -> None:
    assert icbhi_scores(["normal"], ["normal"]) == IcbhiScores(0.0, 1.0, 0.5, 1, 0)
    assert icbhi_scores(["both"], ["both"]) == IcbhiScores(1.0, 0.0, 0.5, 0, 1)
    assert icbhi_scores(["both", "normal"], ["normal", "both"]).score == 0.0


# --- per-class scores ---------------------------------------------------------------------


def test_confusion_rows_true_columns_predicted() -> None:
    matrix = confusion(["a", "a", "a", "b", "b", "c"], ["a", "a", "b", "b", "c", "c"], "abc")
    np.testing.assert_array_equal(matrix, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    assert matrix.dtype == np.int64


def test_confusion_rejects_unknown_label() -> None:
    with pytest.raises(EvaluationError, match=r"\['z'\] are not among \['a', 'b'\]"):
        confusion(["a", "b"], ["a", "z"], ["a", "b"])


def test_per_class_and_averages_hand_computed() -> None:
    per_class = per_class_scores(
        ["a", "a", "a", "b", "b", "c"], ["a", "a", "b", "b", "c", "c"], ["a", "b", "c", "d"]
    )
    assert list(per_class) == ["a", "b", "c", "d"]
    assert _values(per_class["a"]) == pytest.approx((1.0, 2 / 3, 0.8, 2, 0, 1))
    assert per_class["b"] == PRF(0.5, 0.5, 0.5, 1, 1, 1)
    assert _values(per_class["c"]) == pytest.approx((0.5, 1.0, 2 / 3, 1, 1, 0))
    assert per_class["d"] == PRF(0.0, 0.0, 0.0, 0, 0, 0)
    assert per_class["a"].support == 3
    macro = macro_average(per_class)  # "d" (no items at all) is left out of the mean
    assert (macro.precision, macro.recall, macro.f1) == pytest.approx(
        (2 / 3, (2 / 3 + 0.5 + 1.0) / 3, (0.8 + 0.5 + 2 / 3) / 3)
    )
    assert _values(micro_average(per_class)) == pytest.approx((4 / 6, 4 / 6, 4 / 6, 4, 2, 2))


def test_prf_and_macro_of_nothing_are_zero() -> None:
    assert prf(0, 0, 0) == PRF(0.0, 0.0, 0.0, 0, 0, 0)
    assert macro_average({"a": prf(0, 0, 0)}) == PRF(0.0, 0.0, 0.0, 0, 0, 0)


# --- event-based F1 -----------------------------------------------------------------------


def _one(
    reference: Event,
    estimate: Event,
    onset_tolerance_s: float = ONSET_TOLERANCE_S,
    offset_tolerance_s: float | None = OFFSET_TOLERANCE_S,
    offset_fraction: float = OFFSET_FRACTION,
) -> int:
    """True positives of a single reference and a single estimate."""
    scores = event_f1(
        [reference],
        [estimate],
        onset_tolerance_s=onset_tolerance_s,
        offset_tolerance_s=offset_tolerance_s,
        offset_fraction=offset_fraction,
    )
    return scores.micro.tp


@pytest.mark.parametrize(
    ("start_s", "end_s", "expected_tp"),
    [
        (1.2, 2.0, 1),  # onset just inside (+0.2 s)
        (0.8, 2.0, 1),  # onset just inside (-0.2 s)
        (1.2 + JUST_OVER_S, 2.0, 0),
        (0.8 - JUST_OVER_S, 2.0, 0),
        (1.0, 2.2, 1),  # offset just inside: max(0.2, 0.2 * 1 s) = 0.2 s
        (1.0, 1.8, 1),
        (1.0, 2.2 + JUST_OVER_S, 0),
        (1.0, 1.8 - JUST_OVER_S, 0),
    ],
)
def test_event_tolerance_edges(start_s: float, end_s: float, expected_tp: int) -> None:
    assert _one(Event(1.0, 2.0, W), Event(start_s, end_s, W)) == expected_tp


def test_tolerance_bounds_are_inclusive_despite_rounding() -> None:
    reference = Event(1.0, 2.0, W)  # 0.25 is exact in binary floating point
    assert _one(reference, Event(1.25, 2.25, W), 0.25, 0.25) == 1
    assert _one(reference, Event(1.25 + JUST_OVER_S, 2.0, W), 0.25, 0.25) == 0
    # 1.3 - 1.1 == 0.20000000000000018 in floating point, yet it is on the 0.2 s bound
    assert _one(Event(1.1, 2.1, W), Event(1.3, 2.3, W)) == 1


def test_offset_tolerance_grows_with_duration() -> None:
    reference = Event(0.0, 5.0, W)  # offset bound max(0.2, 0.2 * 5 s) = 1.0 s
    assert _one(reference, Event(0.0, 6.0, W)) == 1
    assert _one(reference, Event(0.0, 6.0 + JUST_OVER_S, W)) == 0
    assert _one(reference, Event(0.0, 6.0 + JUST_OVER_S, W), offset_fraction=0.5) == 1


def test_onset_only_and_labels() -> None:
    reference = Event(1.0, 2.0, W)
    assert _one(reference, Event(1.1, 9.0, W), offset_tolerance_s=None) == 1
    assert _one(reference, Event(1.1, 9.0, W)) == 0
    assert _one(reference, Event(1.0, 2.0, R)) == 0  # same times, other class


def test_two_estimates_on_one_reference_give_one_tp_one_fp() -> None:
    scores = event_f1([Event(1.0, 2.0, W)], [Event(1.0, 2.0, W), Event(1.1, 2.1, W)])
    assert _values(scores.per_class[W]) == pytest.approx((0.5, 1.0, 2 / 3, 1, 1, 0))


def test_matching_is_maximal_where_greedy_is_not() -> None:
    # A matches X and Y, B only X: greedy A->X leaves B unmatched; the optimum is A-Y, B-X.
    refs = [Event(1.0, 2.0, W), Event(1.3, 2.3, W)]
    ests = [Event(1.15, 2.15, W), Event(0.85, 1.85, W)]
    pairs = match_events(refs, ests, DEFAULT_TOLERANCE)
    assert sorted(pairs) == [(0, 1), (1, 0)]
    assert event_f1(refs, ests).micro == PRF(1.0, 1.0, 1.0, 2, 0, 0)


def test_event_f1_per_class_micro_macro() -> None:
    refs = [Event(0.0, 1.0, W), Event(2.0, 3.0, W), Event(4.0, 5.0, FC)]
    ests = [Event(0.1, 1.1, W), Event(4.0, 5.0, W), Event(6.0, 7.0, FC)]
    scores = event_f1(refs, ests, classes=[W, FC, R])
    assert scores.per_class[W] == PRF(0.5, 0.5, 0.5, 1, 1, 1)
    assert scores.per_class[FC] == PRF(0.0, 0.0, 0.0, 0, 1, 1)
    assert scores.per_class[R] == PRF(0.0, 0.0, 0.0, 0, 0, 0)
    assert _values(scores.micro) == pytest.approx((1 / 3, 1 / 3, 1 / 3, 1, 2, 2))
    assert scores.macro.f1 == pytest.approx(0.25)  # mean over W and FC; R has no events


def test_event_f1_over_recordings_matches_within_recordings_only() -> None:
    reference = {"a": [Event(0.0, 1.0, W)], "b": [Event(0.0, 1.0, W)]}
    estimated = {"a": [Event(0.0, 1.0, W), Event(0.0, 1.0, W)]}  # nothing for "b"
    scores = event_f1_recordings(reference, estimated)
    assert scores.per_class[W] == PRF(0.5, 0.5, 0.5, 1, 1, 1)


def test_event_f1_errors() -> None:
    with pytest.raises(EvaluationError, match="have no reference"):
        event_f1_recordings({"a": []}, {"z": [Event(0.0, 1.0, W)]})
    with pytest.raises(EvaluationError, match="not among"):
        event_f1([Event(0.0, 1.0, W)], [], classes=[FC])
    with pytest.raises(EvaluationError, match="end_s must be after start_s"):
        Event(1.0, 1.0, W)
    with pytest.raises(EvaluationError, match="finite"):
        Event(math.nan, 1.0, W)


# --- annotations to task labels -----------------------------------------------------------


def test_task_label_helpers() -> None:
    events = [SprEvent(900, 1500, W), SprEvent(100, 800, N), SprEvent(1600, 2000, FC)]
    assert event_task_labels(events, "1-2") == [W, N, FC]  # file order kept
    assert event_task_labels(events, "1-1") == ["Adventitious", "Normal", "Adventitious"]
    assert record_task_label("CAS & DAS", "2-1") == "Adventitious"
    assert record_task_label("Poor Quality", "2-1") == "Poor Quality"
    assert record_task_label("CAS & DAS", "2-2") == "CAS & DAS"
    cycles = [IcbhiCycle(0.0, 1.0, True, False), IcbhiCycle(1.0, 2.0, True, True)]
    assert icbhi_cycle_labels(cycles) == ["crackle", "both"]
    with pytest.raises(EvaluationError, match="not one of 1-1, 1-2"):
        event_task_labels(events, "2-2")
    with pytest.raises(EvaluationError, match="not one of 2-1, 2-2"):
        record_task_label("CAS", "1-1")


def test_task_tables_follow_the_label_table() -> None:
    assert TASKS == ("1-1", "1-2", "2-1", "2-2", "icbhi")
    assert TASK_LABELS["1-2"] == EVENT_LABELS
    assert TASK_LABELS["2-2"] == RECORD_LABELS
    assert TASK_LABELS["icbhi"] == ICBHI_LABELS
    assert all(TASK_NORMAL[task] in TASK_LABELS[task] for task in TASKS)
