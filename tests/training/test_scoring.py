"""Detection scores (sed_eval underneath) on hand-made cases whose answers are worked out by
hand: collars, the family and 4-class views, false events per hour on Normal records."""

from __future__ import annotations

import pytest

pytest.importorskip("sed_eval", reason="sed_eval is in the train extra")

from training.scoring.detection import false_events, score_detection, score_view

ANNOTATED = {
    "a": [(1.0, 2.0, "Wheeze"), (3.0, 3.5, "Fine Crackle")],
    "b": [(0.5, 1.5, "Wheeze+Crackle")],
    "n": [(0.2, 1.2, "Normal")],
}
LABELS = {"a": "CAS & DAS", "b": "CAS & DAS", "n": "Normal"}
DURATIONS = {"a": 10.0, "b": 10.0, "n": 1800.0}  # half an hour of Normal audio


def test_event_scores_apply_the_onset_and_offset_collars() -> None:
    predicted = {
        "a": [
            (1.15, 2.15, "Wheeze"),  # onset 0.15 s late, offset 0.15 s late: a match
            (3.3, 3.6, "Fine Crackle"),  # onset 0.3 s late: no match
            (5.0, 6.0, "Rhonchi"),  # nothing there
        ],
        "b": [(0.6, 1.4, "Wheeze")],  # the CAS half of Wheeze+Crackle
    }
    family = score_view(predicted, ANNOTATED, "family")
    # CAS: refs a-Wheeze, b; est a-Wheeze (hit), a-Rhonchi, b-Wheeze (hit)
    # DAS: refs a-Crackle, b; est a-Crackle (miss) -> TP 2, est 4, ref 4
    assert family.event_precision == pytest.approx(2 / 4)
    assert family.event_recall == pytest.approx(2 / 4)
    assert family.event_f1 == pytest.approx(0.5)
    assert family.class_event_f1["CAS"] == pytest.approx(2 * 2 / (3 + 2))
    assert family.class_event_f1["DAS"] == 0.0


def test_long_events_get_an_offset_collar_of_a_fifth_of_their_length() -> None:
    annotated = {"a": [(1.0, 4.0, "Wheeze")], "n": []}  # 3 s: offset collar 0.6 s
    near = score_view({"a": [(1.0, 4.5, "Wheeze")]}, annotated, "family")
    far = score_view({"a": [(1.0, 4.7, "Wheeze")]}, annotated, "family")
    assert near.event_f1 == pytest.approx(1.0)
    assert far.event_f1 == 0.0


def test_four_class_view_splits_crackles_from_wheezes() -> None:
    predicted = {"b": [(0.5, 1.5, "Coarse Crackle")]}  # a crackle where Wheeze+Crackle is
    four = score_view(predicted, ANNOTATED, "4class")
    # refs: a-Wheeze, a-Crackle, b-Wheeze, b-Crackle; the one estimate hits b-Crackle
    assert four.event_precision == pytest.approx(1.0)
    assert four.event_recall == pytest.approx(1 / 4)
    assert four.class_event_f1["Crackle"] == pytest.approx(2 * 1 / (1 + 2))


def test_segment_scores_use_one_second_segments() -> None:
    annotated = {"a": [(0.0, 3.0, "Wheeze")]}
    predicted = {"a": [(1.2, 1.4, "Wheeze")]}  # active in segment 1 of the 3 segments
    view = score_view(predicted, annotated, "family")
    assert view.segment_f1 == pytest.approx(2 * 1 / (1 + 3))


def test_false_events_count_adventitious_events_on_normal_records_only() -> None:
    predicted = {
        "n": [(10.0, 11.0, "Wheeze"), (20.0, 21.0, "Fine Crackle")],
        "a": [(7.0, 8.0, "Stridor")],  # a false positive, but not on a Normal record
    }
    per_hour, share, hours = false_events(predicted, LABELS, DURATIONS)
    assert hours == pytest.approx(0.5)
    assert per_hour == pytest.approx(4.0)
    assert share == pytest.approx(1.0)
    report = score_detection(predicted, ANNOTATED, LABELS, DURATIONS)
    assert report.false_events_per_hour == pytest.approx(4.0)
    assert set(report.views) == {"family", "4class"}


def test_each_family_gets_its_own_scores_false_rate_and_record_presence() -> None:
    predicted = {
        "a": [(1.15, 2.15, "Wheeze"), (5.0, 6.0, "Rhonchi")],  # CAS: 1 hit, 1 false; no DAS
        "b": [(0.6, 1.4, "Fine Crackle")],  # the DAS half of b (a hit); CAS missed
        "n": [(0.5, 0.9, "Stridor"), (2.0, 2.3, "Stridor")],  # two false CAS events
    }
    report = score_detection(predicted, ANNOTATED, LABELS, DURATIONS)
    cas, das = report.families["CAS"], report.families["DAS"]
    # CAS refs: a-Wheeze, b; est: a-Wheeze (hit), a-Rhonchi, n-Stridor x2 -> P 1/4, R 1/2
    assert (cas.event_precision, cas.event_recall) == pytest.approx((1 / 4, 1 / 2))
    assert cas.event_f1 == pytest.approx(2 * (1 / 4) * (1 / 2) / (1 / 4 + 1 / 2))
    # DAS refs: a-Crackle, b; est: b (hit) -> P 1, R 1/2
    assert (das.event_precision, das.event_recall) == pytest.approx((1.0, 1 / 2))
    assert report.macro_f1 == pytest.approx((cas.event_f1 + das.event_f1) / 2)
    # false events on the half hour of Normal audio: CAS 2 -> 4 per hour, DAS none
    assert (cas.false_events_per_hour, das.false_events_per_hour) == (4.0, 0.0)
    # presence over the good records a, b (both families) and n (neither): CAS called on a and
    # n, DAS on b
    assert (cas.presence_se, cas.presence_sp) == (0.5, 0.0)
    assert (das.presence_se, das.presence_sp) == (0.5, 1.0)
    assert (cas.n_events, cas.n_records) == (2, 2)
    summary = report.summary()
    assert summary["f1_cas"] == cas.event_f1
    assert summary["se_das"] == 0.5
    rows = report.family_table()
    assert rows[1].split()[:2] == ["CAS", f"{cas.event_f1:.3f}"]
    assert rows[-1].split() == ["macro", f"{report.macro_f1:.3f}"]
