"""The detector's event lifecycle on hand-built probability sequences, one output frame at a
time: hysteresis, minimum duration, merge gap, latching and acknowledgement, ongoing messages,
suppression, configuration errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from edge.bed.detector import (
    DetectorConfig,
    DetectorError,
    FrameDetector,
    FrameGrid,
    Transition,
    hysteresis_step,
)
from edge.bed.rules import ClassThreshold
from lungwatch.config import ConfigError, from_mapping

OUTPUTS = ("Wheeze", "Stridor", "Breath", "Poor Quality")
RATE_HZ = 1000  # one sample per millisecond keeps the arithmetic readable
HOP = 200
GRID = FrameGrid(RATE_HZ, HOP, 300)  # frame k speaks for [300 + 200 k, 500 + 200 k)


def span_start(k: int) -> int:
    return 300 + HOP * k


def detector(**config: object) -> FrameDetector:
    cfg = DetectorConfig(**{"min_event_ms": 0.0, "merge_gap_ms": 0.0, **config})  # type: ignore[arg-type]
    return FrameDetector(OUTPUTS, cfg, GRID)


def frame(wheeze: float, stridor: float = 0.0, poor: float = 0.0) -> np.ndarray:
    return np.array([[wheeze, stridor, 0.5, poor]], np.float32)


def feed(
    det: FrameDetector, wheeze: list[float], stridor: list[float] | None = None, first: int = 0
) -> list[tuple[int, Transition]]:
    """Feed frames first..first+n-1; returns (frame index, transition) pairs."""
    stridor = stridor or [0.0] * len(wheeze)
    out = []
    for k, (w, s) in enumerate(zip(wheeze, stridor, strict=True), start=first):
        out += [(k, t) for t in det.update(k, frame(w, s))]
    return out


def test_hysteresis_primitive() -> None:
    assert hysteresis_step(False, 0.5, 0.6, 0.4) is False
    assert hysteresis_step(True, 0.5, 0.6, 0.4) is True
    assert hysteresis_step(True, 0.39, 0.6, 0.4) is False


def test_event_spans_the_spans_of_its_frames() -> None:
    got = feed(detector(), [0.1, 0.7, 0.5, 0.45, 0.3, 0.1])
    assert [(k, t.state, t.start_sample, t.end_sample) for k, t in got] == [
        (1, "onset", span_start(1), None),
        (4, "ended", span_start(1), span_start(4)),  # windows 1..3 active: [500, 1100)
    ]
    onset, ended = got[0][1], got[1][1]
    assert onset.key == ended.key == f"Wheeze@{span_start(1)}"
    assert (onset.kind, onset.priority, onset.type) == ("physiological", "medium", "Wheeze")
    assert onset.confidence == pytest.approx(0.7)
    assert ended.confidence == pytest.approx(0.7)


def test_minimum_duration_hides_short_events_and_delays_onset() -> None:
    det = detector(min_event_ms=600.0)  # three frames' spans
    assert feed(det, [0.9, 0.9, 0.1, 0.1]) == []  # two frames: never announced
    got = feed(detector(min_event_ms=600.0), [0.1, 0.9, 0.8, 0.7, 0.1])
    assert [(k, t.state, t.start_sample, t.end_sample) for k, t in got] == [
        (3, "onset", span_start(1), None),
        (4, "ended", span_start(1), span_start(4)),
    ]
    assert got[0][1].confidence == pytest.approx(0.9)  # the peak so far, not the current value


def test_merge_gap_continues_the_event() -> None:
    seq = [0.9, 0.1, 0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1]
    got = feed(detector(merge_gap_ms=200.0), seq)  # one frame off merges, two do not
    assert [(k, t.state, t.start_sample, t.end_sample) for k, t in got] == [
        (0, "onset", span_start(0), None),
        (4, "ended", span_start(0), span_start(3)),
        (5, "onset", span_start(5), None),
        (7, "ended", span_start(5), span_start(6)),
    ]
    # Merging comes before the minimum duration: two short blips make one long enough event.
    merged = feed(detector(merge_gap_ms=200.0, min_event_ms=600.0), [0.9, 0.1, 0.9, 0.1, 0.1])
    assert [(k, t.state) for k, t in merged] == [(2, "onset"), (4, "ended")]
    assert merged[1][1].end_sample - merged[1][1].start_sample == 600


def test_breath_and_poor_quality_never_make_events() -> None:
    det = detector()
    for k in range(5):
        assert det.update(k, np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)) == []


def test_latching_priority_stays_active_until_acknowledged() -> None:
    det = detector()
    got = feed(det, [0.0] * 4, stridor=[0.9, 0.9, 0.1, 0.1])
    assert [(k, t.state, t.latched, t.end_sample) for k, t in got] == [
        (0, "onset", False, None),
        (2, "ongoing", True, span_start(2)),  # condition over, alarm still latched
    ]
    key = got[0][1].key
    assert got[0][1].priority == "high"
    assert det.active_keys == (key,)
    assert det.acknowledge("Wheeze") == []
    (ended,) = det.acknowledge("Stridor")
    assert (ended.state, ended.key, ended.end_sample) == ("ended", key, span_start(2))
    assert det.active_keys == ()


def test_acknowledged_live_event_ends_on_its_own() -> None:
    det = detector()
    (onset,) = [t for _, t in feed(det, [0.0, 0.0], stridor=[0.9, 0.9])]
    assert det.acknowledge(onset.key) == []
    ended = det.update(2, frame(0.0))
    assert [(t.state, t.latched) for t in ended] == [("ended", False)]


def test_low_priority_does_not_latch_unless_configured() -> None:
    det = detector(latching=("high", "medium"))
    got = feed(det, [0.9, 0.1])
    assert [(t.state, t.latched) for _, t in got] == [("onset", False), ("ongoing", True)]
    assert [t.state for t in det.finish()] == ["ended"]  # the stream is over: released


def test_ongoing_is_repeated_while_the_condition_lasts() -> None:
    got = feed(detector(ongoing_every_ms=400.0), [0.9] * 6 + [0.1])
    assert [(k, t.state) for k, t in got] == [
        (0, "onset"),
        (2, "ongoing"),
        (4, "ongoing"),
        (6, "ended"),
    ]
    assert all(t.end_sample is None for _, t in got[:3])


def test_suppression_ends_open_events_and_blocks_new_ones() -> None:
    det = detector()
    feed(det, [0.9, 0.9])
    (ended,) = det.suppress(True)
    assert (ended.state, ended.end_sample) == ("ended", span_start(2))
    for k in range(2, 5):
        assert det.update(k, frame(0.9)) == []
    assert det.suppress(False) == []
    # After suppression the class must cross the onset threshold again.
    assert det.update(5, frame(0.5)) == []
    (onset,) = det.update(6, frame(0.9))
    assert onset.start_sample == span_start(6)


def test_per_class_thresholds() -> None:
    det = detector(thresholds=(ClassThreshold("Wheeze", 0.8, 0.7),))
    assert feed(det, [0.75, 0.1]) == []
    got = feed(detector(thresholds=(ClassThreshold("Wheeze", 0.8, 0.7),)), [0.85, 0.72, 0.65])
    assert [(k, t.state) for k, t in got] == [(0, "onset"), (2, "ended")]


@dataclass(frozen=True)
class Runtime:
    detector: DetectorConfig = field(default_factory=DetectorConfig)


def test_config_errors_name_the_key() -> None:
    with pytest.raises(
        ConfigError, match=r"^run.yaml: detector.on_threshold must be in \(0, 1\), got 1.5$"
    ):
        from_mapping(Runtime, {"detector": {"on_threshold": 1.5}}, source="run.yaml")
    with pytest.raises(ConfigError, match=r"detector.thresholds\[0\].off_threshold must be"):
        from_mapping(
            Runtime,
            {
                "detector": {
                    "thresholds": [{"type": "Wheeze", "on_threshold": 0.5, "off_threshold": 0.6}]
                }
            },
            source="run.yaml",
        )
    with pytest.raises(ConfigError, match=r"detector.priorities\[0\].priority must be one of"):
        from_mapping(
            Runtime, {"detector": {"priorities": [{"type": "Wheeze", "priority": "urgent"}]}}
        )
    with pytest.raises(ConfigError, match=r"detector\.min_event_ms must be a number >= 0"):
        from_mapping(Runtime, {"detector": {"min_event_ms": -1}})
    loaded = from_mapping(
        Runtime, {"detector": {"latching": ["high", "medium"], "merge_gap_ms": 100}}
    )
    assert loaded.detector.latching == ("high", "medium")
    assert loaded.detector.merge_gap_ms == 100.0


def test_thresholds_for_unknown_classes_and_bad_shapes_are_refused() -> None:
    cfg = DetectorConfig(thresholds=(ClassThreshold("Crackle", 0.5, 0.4),))
    with pytest.raises(ConfigError, match="'Crackle' is not a model output"):
        FrameDetector(OUTPUTS, cfg, GRID)
    with pytest.raises(DetectorError, match=r"expected \(n, 4\) probabilities, got \(3,\)"):
        detector().update(0, np.zeros(3))
