"""fit_detector: per-class rules (and the phase rule) fitted on hand-made frame probabilities.

Records are built at the shipped model's hop (40-ms output frames, 8 kHz): a crackle record
whose Fine Crackle output is high over its annotated span, Normal records with a lower bump.
The fit must find the threshold between the two levels; the false-alarm budget must rule out
settings that only look good on F1.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge.bed.detector import DetectorConfig, FrameGrid, detect_events
from edge.bed.rules import PhaseRule
from training.data.targets import BREATH_INDEX, OUTPUTS
from training.recipe.fit import Limits, events_of, fit_detector

GRID = FrameGrid(sample_rate_hz=8000, frame_samples=320)  # 40-ms frames
SECONDS = 10.0
FRAMES = int(SECONDS * 1000 / GRID.hop_ms)
FC = OUTPUTS.index("Fine Crackle")


def frames(start_s: float, end_s: float) -> slice:
    return slice(round(start_s * 1000 / GRID.hop_ms), round(end_s * 1000 / GRID.hop_ms))


def record(spans: list[tuple[float, float, float]], breath: list[tuple[float, float]]):
    """(FRAMES, O) probabilities: Fine Crackle at each span's level, Breath 0.9 over phases."""
    p = np.full((FRAMES, len(OUTPUTS)), 0.02, np.float32)
    for start, end, level in spans:
        p[frames(start, end), FC] = level
    for start, end in breath:
        p[frames(start, end), BREATH_INDEX] = 0.9
    return p


def dataset(normal_level: float, crackle_level: float = 0.85):
    """Four crackle records (two annotated phases each) and four Normal records with bumps."""
    probs, annotated, labels = [], {}, {}
    for i in range(4):
        spans = [(1.0, 2.0, crackle_level), (5.0, 6.2, crackle_level)]
        probs.append(record(spans, [(1.0, 2.0), (5.0, 6.2)]))
        annotated[f"cas{i}"] = [(1.0, 2.0, "Fine Crackle"), (5.0, 6.2, "Fine Crackle")]
        labels[f"cas{i}"] = "CAS"
    for i in range(4):
        probs.append(record([(3.0, 3.8, normal_level)], [(3.0, 3.8)]))
        annotated[f"normal{i}"] = [(3.0, 3.8, "Normal")]
        labels[f"normal{i}"] = "Normal"
    durations = {r: SECONDS for r in annotated}
    return probs, annotated, labels, durations


def base(phases: PhaseRule | None = None) -> DetectorConfig:
    return DetectorConfig(
        on_threshold=0.3, off_threshold=0.15, min_event_ms=40, merge_gap_ms=0, phases=phases
    )


def test_fit_finds_the_threshold_between_false_bumps_and_true_events():
    probs, annotated, labels, durations = dataset(normal_level=0.55)
    before = events_of(probs, list(annotated), OUTPUTS, base(), GRID)
    assert before["normal0"], "the starting setting must raise the false bump"
    fit = fit_detector(probs, annotated, labels, durations, OUTPUTS, GRID, base())
    rule = fit.config.rule_of("Fine Crackle")
    assert 0.55 < rule.on_threshold <= 0.85
    family = fit.report.views["family"]
    assert family.event_f1 == pytest.approx(1.0)
    assert fit.report.false_events_per_hour == 0.0
    # the fitted config is what the device runs: its events are the annotated ones
    got = events_of(probs, list(annotated), OUTPUTS, fit.config, GRID)
    assert all(not got[r] for r in annotated if r.startswith("normal"))
    assert [(round(s, 1), round(e, 1)) for s, e, _ in got["cas0"]] == [(1.0, 2.0), (5.0, 6.2)]


def test_a_setting_over_the_false_alarm_budget_ranks_below_every_one_within_it():
    # Normal bumps as high as the crackles: no threshold separates them, and every setting
    # that detects the crackles raises one false event per Normal record (360 per hour)
    probs, annotated, labels, durations = dataset(normal_level=0.85)
    fit = fit_detector(probs, annotated, labels, durations, OUTPUTS, GRID, base())
    assert fit.report.false_events_per_hour == 0.0
    assert fit.report.views["family"].event_f1 == 0.0
    # with a budget that allows them, the same data fits to full recall
    loose = Limits(max_false_per_hour=1e6, max_normal_share=1.0)
    fit = fit_detector(probs, annotated, labels, durations, OUTPUTS, GRID, base(), loose)
    assert fit.report.views["family"].event_recall == pytest.approx(1.0)


def test_phase_mode_fits_the_class_threshold_on_the_phase_mean():
    # crackle probability flickers inside the phase (mean 0.6, half the frames at 0.3):
    # per-frame hysteresis breaks it up, the phase mean sees one event per phase
    probs, annotated, labels, durations = dataset(normal_level=0.33)
    for p in probs[:4]:
        idx = np.flatnonzero(p[:, FC] > 0.5)
        p[idx[::2], FC] = 0.33
    start = base(PhaseRule(0.6, 0.5, 120.0))
    fit = fit_detector(probs, annotated, labels, durations, OUTPUTS, GRID, start)
    assert fit.config.phases is not None
    # above the Normal phases' mean (0.33), at most the flickering crackle phases' (0.59)
    assert 0.33 < fit.config.rule_of("Fine Crackle").on_threshold <= 0.59
    assert fit.report.views["family"].event_f1 == pytest.approx(1.0)
    events = detect_events(probs[0], OUTPUTS, fit.config, GRID)
    assert [(e.start_sample, e.end_sample) for e in events] == [
        (GRID.start_sample(frames(1.0, 2.0).start), GRID.start_sample(frames(1.0, 2.0).stop)),
        (GRID.start_sample(frames(5.0, 6.2).start), GRID.start_sample(frames(5.0, 6.2).stop)),
    ]


def test_each_family_keeps_within_its_own_budget():
    """A setting whose false events are all of one family is over budget even when the two
    families' total would fit twice that budget."""
    from training.scoring.detection import score_detection

    annotated = {"n": [(0.2, 1.2, "Normal")], "c": [(1.0, 2.0, "Wheeze")]}
    labels = {"n": "Normal", "c": "CAS"}
    hour = {"n": 3600.0, "c": 10.0}
    four_wheezes = {"n": [(float(i), i + 0.5, "Wheeze") for i in range(4)]}
    report = score_detection(four_wheezes, annotated, labels, hour)
    limits = Limits(max_false_per_hour=3.0, max_normal_share=1.0)
    assert report.false_events_per_hour == 4.0 < 2 * limits.max_false_per_hour
    assert not limits.within(report)
    assert limits.excess(report) == pytest.approx(1.0)
    split = {"n": [(0.0, 0.5, "Wheeze"), (1.0, 1.5, "Wheeze"), (2.0, 2.5, "Fine Crackle")]}
    assert limits.within(score_detection(split, annotated, labels, hour))
