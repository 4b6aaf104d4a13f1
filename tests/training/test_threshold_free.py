"""Threshold-free scores (sed_scores_eval underneath) on hand-made frame outputs: the score
tables, the phase scores against the device's own detector at each threshold, and the best
collar-based F1 against sed_eval's F1 of the device's events."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sed_eval", reason="sed_eval is in the train extra")
pytest.importorskip("sed_scores_eval", reason="sed_scores_eval is in the train extra")

from edge.bed.detector import DetectorConfig, FrameGrid, detect_events
from edge.bed.rules import ClassThreshold, PhaseRule
from lungwatch.errors import ConfigError
from lungwatch.labels import DETECTED_CLASSES
from training.scoring.detection import VIEWS, score_detection, score_view
from training.scoring.threshold_free import (
    SWEEP,
    TOUCH_GAP_S,
    disjoint,
    event_table,
    frame_table,
    operating_points,
    phase_events,
    threshold_free,
)

OUTPUTS = ("Fine Crackle", "Coarse Crackle", "Wheeze", "Rhonchi", "Stridor", "Breath")
GRID = FrameGrid(sample_rate_hz=1000, frame_samples=40)  # 40-ms output frames
RULE = PhaseRule(0.6, 0.5, min_phase_ms=120.0, lead_ms=80.0)  # 3 frames; 2 frames of lead
FAMILY, FAMILY_CLASSES = VIEWS["family"]


def at(threshold: float, phases: PhaseRule | None = RULE) -> DetectorConfig:
    """Every detected class's on-threshold at ``threshold``."""
    rules = tuple(ClassThreshold(t, threshold, threshold / 2) for t in DETECTED_CLASSES)
    return DetectorConfig(thresholds=rules, phases=phases)


def outputs_with(n: int, breath: list[tuple[int, int]], **classes: np.ndarray) -> np.ndarray:
    """(n, O) outputs: Breath 0.9 on the [first, last) frame spans, 0.1 elsewhere; the named
    classes (underscores for spaces) as given, the others 0.001."""
    p = np.full((n, len(OUTPUTS)), 0.001, np.float32)
    b = OUTPUTS.index("Breath")
    p[:, b] = 0.1
    for first, last in breath:
        p[first:last, b] = 0.9
    for name, values in classes.items():
        p[:, OUTPUTS.index(name.replace("_", " "))] = values
    return p


def test_a_frame_table_spans_the_grid_and_takes_the_highest_member() -> None:
    grid = FrameGrid(sample_rate_hz=1000, frame_samples=40, offset_samples=20)
    p = np.zeros((4, len(OUTPUTS)), np.float32)
    p[:, OUTPUTS.index("Fine Crackle")] = [0.2, 0.9, np.nan, 0.5]
    p[:, OUTPUTS.index("Coarse Crackle")] = [0.4, 0.1, 0.3, 0.6]
    p[:, OUTPUTS.index("Rhonchi")] = [0.7, 0.0, 0.0, 0.0]
    # frames start at 0.02, 0.06, 0.10, 0.14 s; the recording ends at 0.12 s
    stamps, scores = frame_table(p, OUTPUTS, grid, 0.12, FAMILY, FAMILY_CLASSES)
    np.testing.assert_allclose(stamps, [0.0, 0.02, 0.06, 0.10, 0.12])
    cas, das = FAMILY_CLASSES.index("CAS"), FAMILY_CLASSES.index("DAS")
    np.testing.assert_allclose(scores[:, das], [0.0, 0.4, 0.9, 0.3], rtol=1e-6)  # NaN: 0
    np.testing.assert_allclose(scores[:, cas], [0.0, 0.7, 0.0, 0.0], rtol=1e-6)
    with pytest.raises(ConfigError, match=r"\(n, 6\)"):
        frame_table(p[:, :3], OUTPUTS, grid, 0.12, FAMILY, FAMILY_CLASSES)


def test_an_event_table_scores_each_stretch_by_the_events_over_it() -> None:
    events = [
        (0.5, 1.0, "Fine Crackle", 0.6),
        (0.5, 1.0, "Coarse Crackle", 0.8),  # the same phase: DAS takes the higher
        (2.0, 3.0, "Wheeze", 0.4),
    ]
    stamps, scores = event_table(events, 4.0, FAMILY, FAMILY_CLASSES)
    np.testing.assert_allclose(stamps, [0.0, 0.5, 1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(scores[:, FAMILY_CLASSES.index("DAS")], [0, 0.8, 0, 0, 0])
    np.testing.assert_allclose(scores[:, FAMILY_CLASSES.index("CAS")], [0, 0, 0, 0.4, 0])


def test_annotated_events_are_made_disjoint_per_class() -> None:
    events = [(1.0, 2.0, "DAS"), (2.0, 3.0, "DAS"), (2.5, 4.0, "DAS"), (1.5, 2.0, "CAS")]
    out = disjoint(events)
    # touching: the earlier ends 1 ms sooner; overlapping: one event, their union
    assert out == [(1.0, 2.0 - TOUCH_GAP_S, "DAS"), (1.5, 2.0, "CAS"), (2.0, 4.0, "DAS")]


PHASES = [(2, 12), (16, 30), (36, 40), (46, 60)]  # gaps of 4+ frames (more than the lead)


def outputs_of_phases(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = 66
    fine = rng.uniform(0.0, 1.0, n).astype(np.float32)
    fine[20:30] = 0.95  # a mean that rises late in the second phase
    wheeze = rng.uniform(0.0, 0.8, n).astype(np.float32)
    return outputs_with(n, PHASES, Fine_Crackle=fine, Wheeze=wheeze)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_phase_scores_at_a_threshold_are_the_devices_events(seed: int) -> None:
    p = outputs_of_phases(seed)
    scored = phase_events(p, OUTPUTS, at(0.5), GRID)
    rate = GRID.sample_rate_hz
    # every phase once per detected class
    assert len(scored) == len(PHASES) * len(DETECTED_CLASSES)
    for threshold in (0.2, 0.35, 0.5, 0.6, 0.75):
        device = {
            (e.start_sample / rate, e.end_sample / rate, e.type)
            for e in detect_events(p, OUTPUTS, at(threshold), GRID)
        }
        passing = {(s, e, t) for s, e, t, score in scored if score >= threshold}
        assert passing == device, threshold
    assert any(score >= 0.5 for *_, t, score in scored if t == "Fine Crackle")


def test_phase_scores_need_a_phase_rule() -> None:
    with pytest.raises(ConfigError, match="phase mode"):
        phase_events(outputs_of_phases(0), OUTPUTS, at(0.5, phases=None), GRID)


def annotated_crackles() -> tuple[dict, dict, dict]:
    """Three records: crackles annotated on some phases (no CAS event anywhere)."""
    rng = np.random.default_rng(7)
    probs, annotated, durations = {}, {}, {}
    for i in range(3):
        n = 66
        fine = rng.uniform(0.0, 1.0, n).astype(np.float32)
        probs[f"r{i}"] = outputs_with(n, PHASES, Fine_Crackle=fine)
        # annotated: every other phase, from the first or the second by record (frame spans
        # in seconds; the detector reports the start 80 ms early, inside the 0.2-s collar)
        annotated[f"r{i}"] = [(a * 0.04, b * 0.04, "Fine Crackle") for a, b in PHASES[i % 2 :: 2]]
        durations[f"r{i}"] = n * 0.04
    return probs, annotated, durations


def device_f1(probs: dict, annotated: dict, threshold: float) -> float:
    rate = GRID.sample_rate_hz
    predicted = {
        r: [
            (e.start_sample / rate, e.end_sample / rate, e.type)
            for e in detect_events(p, OUTPUTS, at(threshold), GRID)
        ]
        for r, p in probs.items()
    }
    return score_view(predicted, annotated, "family").event_f1


def test_the_best_f1_is_the_best_of_sed_evals_scores_of_the_devices_events() -> None:
    probs, annotated, durations = annotated_crackles()
    scores = threshold_free(probs, annotated, durations, OUTPUTS, at(0.5), GRID)
    phases = scores["phases"]["family"]
    assert phases.classes == ("DAS",)
    assert phases.left_out == ("CAS",)
    # every threshold the phase scores can take: sed_eval on the device's events there
    candidates = {
        score
        for p in probs.values()
        for *_, t, score in phase_events(p, OUTPUTS, at(0.5), GRID)
        if t == "Fine Crackle"
    }
    best = max(device_f1(probs, annotated, t) for t in candidates)
    assert phases.best_event_f1 == pytest.approx(best, abs=1e-9)
    assert phases.best_event_f1 < 1.0  # random crackle outputs: not a perfect detector
    assert device_f1(probs, annotated, phases.best_thresholds["DAS"]) == pytest.approx(best)
    assert 0.0 <= phases.psds1 <= 1.0
    assert 0.0 <= phases.psds2 <= 1.0
    frames = scores["frames"]["family"]
    assert frames.classes == ("DAS",)
    assert 0.0 <= frames.best_event_f1 <= 1.0


def on_annotated(annotated: dict, *names: str) -> dict:
    """Each record's outputs with the named classes at 0.9 exactly on its annotated spans."""
    probs = {}
    for r, events in annotated.items():
        values = np.zeros(66, np.float32)
        for s, e, _ in events:
            values[round(s / 0.04) : round(e / 0.04)] = 0.9
        probs[r] = outputs_with(66, PHASES, **dict.fromkeys(names, values))
    return probs


def test_a_perfect_detector_scores_one() -> None:
    _, annotated, durations = annotated_crackles()
    probs = on_annotated(annotated, "Fine_Crackle")
    no_lead = PhaseRule(0.6, 0.5, min_phase_ms=120.0)
    scores = threshold_free(probs, annotated, durations, OUTPUTS, at(0.5, no_lead), GRID)
    for name in ("phases", "frames"):
        tf = scores[name]["family"]
        assert tf.best_event_f1 == pytest.approx(1.0), name
        assert tf.psds1 == pytest.approx(1.0), name
        assert tf.psds2 == pytest.approx(1.0), name


def test_frame_mode_gives_frame_scores_and_missing_records_are_named() -> None:
    probs, annotated, durations = annotated_crackles()
    scores = threshold_free(probs, annotated, durations, OUTPUTS, at(0.5, phases=None), GRID)
    assert set(scores) == {"frames"}
    del probs["r1"]
    with pytest.raises(ConfigError, match="r1"):
        threshold_free(probs, annotated, durations, OUTPUTS, at(0.5), GRID)


def with_a_normal_record() -> tuple[dict, dict, dict, dict]:
    """annotated_crackles plus a Normal record whose crackle output rises in two phases."""
    probs, annotated, durations = annotated_crackles()
    labels = dict.fromkeys(annotated, "DAS")
    fine = np.full(66, 0.05, np.float32)
    fine[16:30], fine[46:60] = 0.65, 0.85
    probs["n"] = outputs_with(66, PHASES, Fine_Crackle=fine)
    annotated["n"], durations["n"], labels["n"] = [], 66 * 0.04, "Normal"
    return probs, annotated, labels, durations


def test_operating_points_are_the_devices_scores_at_each_threshold() -> None:
    probs, annotated, labels, durations = with_a_normal_record()
    rows = operating_points(probs, annotated, labels, durations, OUTPUTS, at(0.5), GRID)
    assert [r["threshold"] for r in rows] == list(SWEEP)
    hours = durations["n"] / 3600
    by_t = {r["threshold"]: r for r in rows}
    # the Normal record's two phases: both false below 0.65, one up to 0.85, none above
    assert by_t[0.6]["false_events_per_hour"] == pytest.approx(2 / hours)
    assert by_t[0.7]["false_events_per_hour"] == pytest.approx(1 / hours)
    assert by_t[0.9]["false_events_per_hour"] == 0.0
    # at the config's own threshold: what the device raises with the config itself
    rate = GRID.sample_rate_hz
    predicted = {
        r: [
            (e.start_sample / rate, e.end_sample / rate, e.type)
            for e in detect_events(p, OUTPUTS, at(0.5), GRID)
        ]
        for r, p in probs.items()
    }
    direct = score_detection(predicted, annotated, labels, durations).summary()
    assert by_t[0.5] == {"threshold": 0.5, **direct}


def test_operating_points_keep_each_class_s_durations() -> None:
    probs, annotated, labels, durations = with_a_normal_record()
    blip = np.full(66, 0.05, np.float32)
    blip[10:13] = 0.95  # 120 ms above every threshold, on the Normal record
    probs["n"] = outputs_with(66, [], Fine_Crackle=blip)
    short = DetectorConfig(thresholds=(ClassThreshold("Fine Crackle", 0.5, 0.4, 80.0, 0.0),))
    long = DetectorConfig(thresholds=(ClassThreshold("Fine Crackle", 0.5, 0.4, 200.0, 0.0),))
    fa = [
        [
            r["false_events_per_hour"]
            for r in operating_points(probs, annotated, labels, durations, OUTPUTS, c, GRID)
        ]
        for c in (short, long)
    ]
    assert all(v > 0 for v in fa[0])  # the blip is an event at every threshold
    assert fa[1] == [0.0] * len(SWEEP)  # too short for the class's 200 ms


def test_records_without_adventitious_events_give_no_threshold_free_view() -> None:
    probs, annotated, labels, durations = with_a_normal_record()
    only_normal = {"n": annotated["n"]}
    scores = threshold_free(probs, only_normal, durations, OUTPUTS, at(0.5), GRID)
    assert scores == {"frames": {}, "phases": {}}
    # the operating points still count the Normal record's false events
    rows = operating_points(probs, only_normal, labels, durations, OUTPUTS, at(0.5), GRID)
    assert rows[0]["false_events_per_hour"] > 0


def test_two_member_classes_in_one_phase_are_one_detection_of_their_view_class() -> None:
    # the documented approximation: Fine and Coarse Crackle both pass on an annotated phase;
    # the device raises two events (sed_eval: one hit, one false positive), the phase scores
    # one DAS detection
    _, annotated, durations = annotated_crackles()
    probs = on_annotated(annotated, "Fine_Crackle", "Coarse_Crackle")
    no_lead = PhaseRule(0.6, 0.5, min_phase_ms=120.0)
    scores = threshold_free(probs, annotated, durations, OUTPUTS, at(0.5, no_lead), GRID)
    assert scores["phases"]["family"].best_event_f1 == pytest.approx(1.0)
    rate = GRID.sample_rate_hz
    predicted = {
        r: [
            (e.start_sample / rate, e.end_sample / rate, e.type)
            for e in detect_events(p, OUTPUTS, at(0.5, no_lead), GRID)
        ]
        for r, p in probs.items()
    }
    assert score_view(predicted, annotated, "family").event_f1 == pytest.approx(2 / 3)


def test_infinite_best_thresholds_are_strings_in_json() -> None:
    from training.scoring.threshold_free import ThresholdFree, as_dict

    tf = ThresholdFree(0.1, 0.2, 0.3, 0.4, 0.5, {"CAS": float("inf"), "DAS": -float("inf")})
    assert as_dict({"phases": {"family": tf}})["phases"]["family"]["best_thresholds"] == {
        "CAS": "inf",
        "DAS": "-inf",
    }
