"""Tests of training.scoring.challenge against hand-computed cases."""

from __future__ import annotations

from dataclasses import astuple

import numpy as np
import pytest

from lungwatch.labels import EVENT_LABELS, ICBHI_LABELS, RECORD_LABELS
from training.data.icbhi import IcbhiCycle
from training.data.sprsound import SprEvent
from training.scoring.challenge import (
    PRF,
    TASK_LABELS,
    TASK_NORMAL,
    TASKS,
    EvaluationError,
    IcbhiScores,
    SprScores,
    confusion,
    event_task_labels,
    icbhi_cycle_labels,
    icbhi_scores,
    macro_average,
    micro_average,
    per_class_scores,
    prf,
    record_task_label,
    sprsound_scores,
)

N, W, R, FC, CC = "Normal", "Wheeze", "Rhonchi", "Fine Crackle", "Coarse Crackle"


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
