"""FrameDetector at the real output hop (40 ms: stride 4 x 10-ms front-end frames at 8 kHz):
frame grid, hysteresis, minimum duration and merge gap in milliseconds, chunking
invariance, suppression, finishing, and the outputs that are never events."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edge.bed.detector import (
    DetectedEvent,
    DetectorConfig,
    DetectorError,
    FrameDetector,
    FrameGrid,
    detect_events,
)
from edge.bed.rules import ClassThreshold, PhaseRule
from lungwatch.config import ConfigError
from lungwatch.labels import DETECTED_CLASSES

OUTPUTS = (*DETECTED_CLASSES, "Breath", "Poor Quality")
GRID = FrameGrid.of(8000, 80, 256, 4)  # the shipped front end and stride


def config(**kw: object) -> DetectorConfig:
    base = {"on_threshold": 0.6, "off_threshold": 0.4, "min_event_ms": 0.0, "merge_gap_ms": 0.0}
    return DetectorConfig(**{**base, "latching": (), **kw})  # type: ignore[arg-type]


def probs(n: int, **on: list[tuple[int, int, float]]) -> np.ndarray:
    """(n, O) zeros with ``value`` on frames [first, last] of each named output."""
    p = np.zeros((n, len(OUTPUTS)), np.float32)
    for name, spans in on.items():
        for first, last, value in spans:
            p[first : last + 1, OUTPUTS.index(name.replace("_", " "))] = value
    return p


def test_grid_is_the_40_ms_hop_centred_on_its_front_end_frames() -> None:
    assert GRID.frame_samples == 320
    assert GRID.hop_ms == pytest.approx(40.0)
    # frame j summarises front-end frames 4j..4j+3, whose centres lie at 80 i + 128
    centres = [80 * i + 128 for i in range(4 * 7, 4 * 7 + 4)]
    middle = (GRID.start_sample(7) + GRID.end_sample(7)) / 2
    assert middle == pytest.approx(np.mean(centres))
    assert GRID.end_sample(7) == GRID.start_sample(8)  # spans tile the timeline


def test_one_event_lies_on_its_frames() -> None:
    events = detect_events(probs(50, Wheeze=[(10, 19, 0.9)]), OUTPUTS, config(), GRID)
    assert events == [
        DetectedEvent("Wheeze", GRID.start_sample(10), GRID.end_sample(19), pytest.approx(0.9))
    ]


def test_hysteresis_keeps_an_event_between_the_thresholds() -> None:
    p = probs(40, Wheeze=[(5, 9, 0.7), (10, 20, 0.5), (21, 21, 0.3), (22, 25, 0.5)])
    events = detect_events(p, OUTPUTS, config(), GRID)
    # on at 0.7, held at 0.5 (>= off 0.4), off at 0.3; 0.5 alone never turns it on again
    assert [(e.start_sample, e.end_sample) for e in events] == [
        (GRID.start_sample(5), GRID.end_sample(20))
    ]


@pytest.mark.parametrize(("min_ms", "kept"), [(200.0, True), (240.0, False)])
def test_minimum_duration_in_milliseconds(min_ms: float, kept: bool) -> None:
    p = probs(30, Stridor=[(3, 7, 0.9)])  # 5 frames = 200 ms
    events = detect_events(p, OUTPUTS, config(min_event_ms=min_ms), GRID)
    assert bool(events) is kept


@pytest.mark.parametrize(("gap_ms", "n_events"), [(120.0, 1), (80.0, 2)])
def test_merge_gap_in_milliseconds(gap_ms: float, n_events: int) -> None:
    p = probs(40, Wheeze=[(5, 9, 0.9), (13, 17, 0.9)])  # 3 off frames = 120 ms between
    events = detect_events(p, OUTPUTS, config(merge_gap_ms=gap_ms), GRID)
    assert len(events) == n_events
    assert events[0].start_sample == GRID.start_sample(5)
    assert events[-1].end_sample == GRID.end_sample(17)


def test_per_class_rules_override_the_defaults() -> None:
    rules = (ClassThreshold("Wheeze", 0.8, 0.5, min_event_ms=400.0),)
    p = probs(60, Wheeze=[(2, 8, 0.9), (20, 40, 0.7)], Stridor=[(30, 32, 0.7)])
    events = detect_events(p, OUTPUTS, config(thresholds=rules), GRID)
    # Wheeze: 7 frames (280 ms) < 400 ms, the 0.7 run never reaches 0.8; Stridor uses 0.6
    assert [e.type for e in events] == ["Stridor"]


def test_breath_and_quality_outputs_are_never_events() -> None:
    p = probs(30, Breath=[(0, 29, 0.99)], Poor_Quality=[(0, 29, 0.99)])
    assert detect_events(p, OUTPUTS, config(), GRID) == []


def test_an_event_open_at_the_end_is_closed_at_its_last_frame() -> None:
    events = detect_events(probs(20, Wheeze=[(12, 19, 0.9)]), OUTPUTS, config(), GRID)
    assert [(e.start_sample, e.end_sample) for e in events] == [
        (GRID.start_sample(12), GRID.end_sample(19))
    ]


def transitions_in_chunks(p: np.ndarray, sizes: list[int], cfg: DetectorConfig) -> list[tuple]:
    det = FrameDetector(OUTPUTS, cfg, GRID)
    out, first = [], 0
    for size in sizes:
        out += det.update(first, p[first : first + size])
        first += size
    out += det.update(first, p[first:]) + det.finish()
    return [(t.type, t.state, t.start_sample, t.end_sample) for t in out]


def test_any_chunking_gives_the_same_transitions() -> None:
    rng = np.random.default_rng(3)
    p = rng.random((400, len(OUTPUTS))).astype(np.float32) ** 3  # sparse, ragged activity
    cfg = config(min_event_ms=120.0, merge_gap_ms=80.0)
    whole = transitions_in_chunks(p, [], cfg)
    assert any(state == "onset" for _, state, _, _ in whole)
    for _ in range(5):
        sizes = list(rng.integers(0, 9, size=80))
        assert transitions_in_chunks(p, sizes, cfg) == whole


def test_onset_waits_for_the_minimum_duration_then_reports_the_start() -> None:
    det = FrameDetector(OUTPUTS, config(min_event_ms=200.0), GRID)
    p = probs(10, Wheeze=[(2, 9, 0.9)])
    assert det.update(0, p[:6]) == []  # frames 2..5: 160 ms, not yet
    (onset,) = det.update(6, p[6:7])  # frame 6: 200 ms
    assert (onset.state, onset.start_sample) == ("onset", GRID.start_sample(2))


def test_suppression_ends_open_events_and_blocks_new_ones() -> None:
    det = FrameDetector(OUTPUTS, config(), GRID)
    p = probs(30, Wheeze=[(0, 29, 0.9)])
    assert [t.state for t in det.update(0, p[:10])] == ["onset"]
    (ended,) = det.suppress(True)
    assert (ended.state, ended.end_sample) == ("ended", GRID.end_sample(9))
    assert det.update(10, p[10:20]) == []
    det.suppress(False)
    (again,) = det.update(20, p[20:])
    assert (again.state, again.start_sample) == ("onset", GRID.start_sample(20))


def test_high_priority_events_latch_until_acknowledged() -> None:
    det = FrameDetector(OUTPUTS, config(latching=("high",)), GRID)
    states = [(t.state, t.latched) for t in det.update(0, probs(10, Stridor=[(2, 4, 0.9)]))]
    assert states == [("onset", False), ("ongoing", True)]  # gone from the signal, latched
    assert det.active_keys == ("Stridor@728",)
    (ended,) = det.acknowledge("Stridor")
    assert (ended.state, ended.end_sample) == ("ended", GRID.end_sample(4))
    assert det.active_keys == ()


def test_bad_shapes_and_unknown_classes_are_named() -> None:
    det = FrameDetector(OUTPUTS, config(), GRID)
    with pytest.raises(DetectorError, match=r"\(n, 7\)"):
        det.update(0, np.zeros((4, 3), np.float32))
    with pytest.raises(ConfigError, match="Crackle"):
        FrameDetector(OUTPUTS, config(thresholds=(ClassThreshold("Crackle", 0.6, 0.4),)), GRID)


# Phase mode: events are breath phases whose mean class probability reaches the class's
# on_threshold (SPRSound annotates adventitious sounds by breath phase).

PHASES = PhaseRule(on_threshold=0.6, off_threshold=0.4, min_phase_ms=200.0)  # 5 frames


def test_a_phase_with_crackles_is_one_event_from_its_start_to_its_end() -> None:
    # breath phase on frames 10..29; crackle probability 0.8 inside it, wheeze 0.3
    p = probs(50, Breath=[(10, 29, 0.9)], Fine_Crackle=[(10, 29, 0.8)], Wheeze=[(10, 29, 0.3)])
    events = detect_events(p, OUTPUTS, config(phases=PHASES, on_threshold=0.5), GRID)
    assert events == [
        DetectedEvent(
            "Fine Crackle", GRID.start_sample(10), GRID.end_sample(29), pytest.approx(0.8)
        )
    ]


def test_the_phase_mean_decides_not_a_single_peak() -> None:
    # a 2-frame spike of 0.95 in a 20-frame phase: mean 0.095 + ... stays below 0.5
    p = probs(40, Breath=[(5, 24, 0.9)], Fine_Crackle=[(12, 13, 0.95)])
    assert detect_events(p, OUTPUTS, config(phases=PHASES, on_threshold=0.5), GRID) == []
    # without phases the same spike is an event of its own
    assert len(detect_events(p, OUTPUTS, config(on_threshold=0.5), GRID)) == 1


def test_phase_onset_waits_for_the_minimum_phase_then_reports_the_phase_start() -> None:
    det = FrameDetector(OUTPUTS, config(phases=PHASES, on_threshold=0.5), GRID)
    p = probs(12, Breath=[(2, 11, 0.9)], Wheeze=[(2, 11, 0.9)])
    assert det.update(0, p[:6]) == []  # 4 phase frames < 5
    onset = det.update(6, p[6:7])
    assert [(t.type, t.state, t.start_sample) for t in onset] == [
        ("Wheeze", "onset", GRID.start_sample(2))
    ]
    ended = det.update(7, p[7:]) + det.update(12, probs(1))  # breath falls: the phase ends
    assert [(t.state, t.end_sample) for t in ended] == [("ended", GRID.end_sample(11))]


def test_phase_mode_any_chunking_gives_the_same_transitions() -> None:
    rng = np.random.default_rng(5)
    p = rng.random((400, len(OUTPUTS))).astype(np.float32)
    breath = OUTPUTS.index("Breath")
    p[:, breath] = np.repeat(rng.random(40) > 0.5, 10) * 0.9  # 0.4-s phases
    cfg = config(phases=PHASES, on_threshold=0.55)
    whole = transitions_in_chunks(p, [], cfg)
    assert sum(state == "onset" for _, state, _, _ in whole) >= 3
    for _ in range(5):
        sizes = list(rng.integers(0, 9, size=80))
        assert transitions_in_chunks(p, sizes, cfg) == whole


def test_phase_output_must_be_a_model_output() -> None:
    with pytest.raises(ConfigError, match=r"detector\.phases\.output: 'Phase'"):
        FrameDetector(OUTPUTS, config(phases=PhaseRule(0.6, 0.4, 0.0, "Phase")), GRID)
    with pytest.raises(ConfigError, match="off_threshold"):
        PhaseRule(0.5, 0.7)


def test_lead_reports_the_start_earlier_but_announces_at_the_same_frame() -> None:
    lead = dataclasses.replace(PHASES, lead_ms=2 * GRID.hop_ms)  # two frames
    p = probs(30, Breath=[(8, 19, 0.9)], Wheeze=[(8, 19, 0.9)])
    plain = FrameDetector(OUTPUTS, config(phases=PHASES, on_threshold=0.5), GRID)
    early = FrameDetector(OUTPUTS, config(phases=lead, on_threshold=0.5), GRID)
    for j in range(30):  # frame by frame: the onset comes with the same frame in both
        a, b = plain.update(j, p[j : j + 1]), early.update(j, p[j : j + 1])
        assert [t.state for t in a] == [t.state for t in b]
        for x, y in zip(a, b, strict=True):
            if x.state == "onset":
                assert x.start_sample == GRID.start_sample(8)
                assert y.start_sample == GRID.start_sample(6)
            assert x.end_sample == y.end_sample


def test_lead_never_reaches_before_the_stream_or_the_previous_event() -> None:
    lead = dataclasses.replace(PHASES, lead_ms=10 * GRID.hop_ms)
    # phases on frames 2..9 and 12..21: the lead would reach before frame 0 and into the
    # first event
    p = probs(30, Breath=[(2, 9, 0.9), (12, 21, 0.9)], Wheeze=[(2, 9, 0.9), (12, 21, 0.9)])
    events = detect_events(p, OUTPUTS, config(phases=lead, on_threshold=0.5), GRID)
    assert [(e.start_sample, e.end_sample) for e in events] == [
        (0, GRID.end_sample(9)),
        (GRID.end_sample(9), GRID.end_sample(21)),
    ]
    with pytest.raises(ConfigError, match="lead_ms"):
        PhaseRule(0.6, 0.4, lead_ms=-40.0)


def test_frames_never_described_are_not_fed() -> None:
    # a phase on frames 10..29 whose frames 15..17 the model never described (NaN rows, a
    # state reset): as on the device, the real frames are fed in two runs and the phase
    # stays open across the gap
    p = probs(40, Breath=[(10, 29, 0.9)], Fine_Crackle=[(10, 29, 0.8)])
    p[15:18] = np.nan
    cfg = config(phases=PHASES, on_threshold=0.5)
    events = detect_events(p, OUTPUTS, cfg, GRID)
    det = FrameDetector(OUTPUTS, cfg, GRID)
    fed = det.update(0, p[:15]) + det.update(18, p[18:]) + det.finish()
    ended = [t for t in fed if t.state == "ended"]
    assert [(e.type, e.start_sample, e.end_sample) for e in events] == [
        (t.type, t.start_sample, t.end_sample) for t in ended
    ]
    assert [(e.start_sample, e.end_sample) for e in events] == [
        (GRID.start_sample(10), GRID.end_sample(29))
    ]
    # zeros instead would close the phase at frame 15
    zeros = detect_events(np.nan_to_num(p), OUTPUTS, cfg, GRID)
    assert [(e.start_sample, e.end_sample) for e in zeros] != [
        (GRID.start_sample(10), GRID.end_sample(29))
    ]


def test_frame_classes_keep_their_own_hysteresis_inside_phase_mode() -> None:
    """With PhaseRule.frame_classes, Wheeze events are the Wheeze output's own spans while
    crackles still follow the breath phases (and their lead)."""
    from edge.bed.detector import detect_events
    from edge.bed.rules import PhaseRule

    outputs = ("Fine Crackle", "Wheeze", "Breath")
    grid = FrameGrid(8000, 320)
    p = np.zeros((100, 3), np.float32)
    p[10:60, 2] = 0.9  # one breath phase, frames 10-59
    p[10:60, 0] = 0.8  # crackles over the whole phase
    p[30:40, 1] = 0.9  # a wheeze of 10 frames inside it
    rules = (ClassThreshold("Fine Crackle", 0.5), ClassThreshold("Wheeze", 0.5, 0.4, 80.0, 0.0))
    phases = PhaseRule(0.5, 0.4, 80.0, "Breath", lead_ms=40.0, frame_classes=("Wheeze",))
    events = detect_events(p, outputs, DetectorConfig(thresholds=rules, phases=phases), grid)
    spans = {e.type: (e.start_sample, e.end_sample) for e in events}
    assert spans["Wheeze"] == (grid.start_sample(30), grid.end_sample(39))  # its own span
    assert spans["Fine Crackle"] == (grid.start_sample(10) - 320, grid.end_sample(59))  # phase
    every = PhaseRule(0.5, 0.4, 80.0, "Breath", lead_ms=40.0)
    phased = detect_events(p, outputs, DetectorConfig(thresholds=rules, phases=every), grid)
    assert {e.type for e in phased} == {"Fine Crackle"}  # the wheeze's phase mean is 0.18


BOX_OUTPUTS = ("Fine Crackle", "Wheeze", "Breath")
BOX_GRID = FrameGrid(8000, 320)  # 40-ms frames, no offset
BOXES = PhaseRule(0.5, 0.4, 80.0, "Breath", box_classes=("Wheeze",), box_filter_ms=960.0)


def box_events(p: np.ndarray, on: float = 0.5, rule: PhaseRule = BOXES) -> list[tuple]:
    rules = (ClassThreshold("Fine Crackle", 0.5), ClassThreshold("Wheeze", on))
    found = detect_events(p, BOX_OUTPUTS, DetectorConfig(thresholds=rules, phases=rule), BOX_GRID)
    return [(e.type, e.start_sample // 320, e.end_sample // 320, e.confidence) for e in found]


def test_box_classes_are_cut_on_their_own_change_points() -> None:
    """A box class's event runs from its output's rise to its fall, whether longer or shorter
    than half the filter (12 frames), scores its highest output, and needs no breath phase;
    the phase classes still need one (no Breath here: no crackle event)."""
    p = np.zeros((300, 3), np.float32)
    p[50:100, 1] = 0.7
    p[70, 1] = 0.9  # a spike inside: one box, its peak
    p[150:156, 1] = 0.6  # shorter than half the filter
    p[200:260, 0] = 0.9  # crackles, but no breath phase
    assert box_events(p) == [
        ("Wheeze", 50, 100, pytest.approx(0.9)), ("Wheeze", 150, 156, pytest.approx(0.6))
    ]  # fmt: skip


def test_a_box_goes_on_over_a_shallow_gap_and_ends_at_a_deep_one() -> None:
    p = np.zeros((300, 3), np.float32)
    p[20:50, 1] = 0.8
    p[50:56, 1] = 0.5  # stays above half the peak: the same event
    p[56:80, 1] = 0.8
    p[150:180, 1] = 0.8
    p[180:210, 1] = 0.1  # drops below it: two events (a gap longer than the filter)
    p[210:240, 1] = 0.8
    spans = [(s, e) for _, s, e, _ in box_events(p)]
    assert spans == [(20, 80), (150, 180), (210, 240)]
    merged_all = dataclasses.replace(BOXES, box_merge=0.1)  # 0.1 >= 0.1 x 0.8: one event
    assert [(s, e) for _, s, e, _ in box_events(p, rule=merged_all)][1:] == [(150, 240)]


def test_a_box_is_announced_once_its_peak_reaches_the_threshold() -> None:
    p = np.zeros((200, 3), np.float32)
    p[40:80, 1] = 0.45
    p[120:160, 1] = 0.45
    p[140, 1] = 0.55
    assert [(s, e) for _, s, e, _ in box_events(p)] == [(120, 160)]
    assert box_events(p, on=0.6) == []
    assert len(box_events(p, on=0.4)) == 2


def test_box_transitions_do_not_depend_on_the_chunking() -> None:
    rng = np.random.default_rng(3)
    p = np.zeros((600, 3), np.float32)
    for start in range(10, 560, 45):  # boxes of random height and length over a noise floor
        p[start : start + rng.integers(4, 40), 1] = rng.uniform(0.3, 1.0)
    p[:, 1] += rng.uniform(0.0, 0.1, 600).astype(np.float32)
    rules = DetectorConfig(thresholds=(ClassThreshold("Wheeze", 0.5),), phases=BOXES)

    def transitions(chunk: int) -> list[tuple]:
        detector = FrameDetector(BOX_OUTPUTS, rules, BOX_GRID)
        out = []
        for first in range(0, 600, chunk):
            out += detector.update(first, p[first : first + chunk])
        out += detector.finish()
        return [(t.state, t.start_sample, t.end_sample, t.confidence) for t in out]

    whole = transitions(600)
    assert sum(state == "onset" for state, *_ in whole) >= 5
    for chunk in (1, 7, 25):
        assert transitions(chunk) == whole


def test_a_box_starts_at_the_steepest_rise_of_its_first_stretch() -> None:
    """A faint onset followed within the filter's length by a steep one: the box starts at the
    steep one (the offline rule's strongest change of a run), and is announced only once that
    start is settled; a steeper rise later than that stays inside the box."""
    p = np.zeros((300, 3), np.float32)
    p[50:70, 1] = 0.2  # a faint start, 0.8 s before the sound
    p[70:110, 1] = 0.9
    assert box_events(p) == [("Wheeze", 70, 110, pytest.approx(0.9))]
    late = np.zeros((300, 3), np.float32)
    late[50:90, 1] = 0.3  # 1.6 s faint, then loud: too late to move the start
    late[90:130, 1] = 0.9
    assert box_events(late) == [("Wheeze", 50, 130, pytest.approx(0.9))]
    rules = DetectorConfig(thresholds=(ClassThreshold("Wheeze", 0.5),), phases=BOXES)
    detector = FrameDetector(BOX_OUTPUTS, rules, BOX_GRID)
    onsets: dict[str, int] = {}
    states = []
    for first in range(0, 300):
        for t in detector.update(first, p[first : first + 1]):
            onsets.setdefault(t.state, first)
            states.append(t.state)
    assert states.count("onset") == 1
    # boundaries are judged 12 frames late; the start settles 24 frames after the faint rise:
    # announced at frame 50 + 24 + 12, not when the loud part's peak is first judged (82)
    assert onsets["onset"] == 50 + 24 + 12


def test_a_box_still_unsettled_when_the_stream_ends_is_announced_and_ended() -> None:
    p = np.zeros((80, 3), np.float32)
    p[60:, 1] = 0.8  # rises 0.8 s before the end: its start not settled yet
    assert [(s, e) for _, s, e, _ in box_events(p)] == [(60, 80)]
    rules = DetectorConfig(thresholds=(ClassThreshold("Wheeze", 0.5),), phases=BOXES)
    detector = FrameDetector(BOX_OUTPUTS, rules, BOX_GRID)
    assert detector.update(0, p) == []  # heard, not yet announced
    ended = [(t.state, t.start_sample // 320) for t in detector.suppress(True)]
    assert ended == [("onset", 60), ("ended", 60)]  # poor signal drops nothing heard


def test_an_open_box_ends_with_the_stream() -> None:
    p = np.zeros((100, 3), np.float32)
    p[60:, 1] = 0.8  # still sounding when the recording ends
    assert [(s, e) for _, s, e, _ in box_events(p)] == [(60, 100)]


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"box_classes": ("Wheeze",), "frame_classes": ("Wheeze",)}, "box_classes"),
        ({"box_filter_ms": 0.0}, "box_filter_ms"),
        ({"box_merge": 1.5}, "box_merge"),
    ],
)
def test_bad_box_settings_name_the_key(kw: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        PhaseRule(0.5, 0.4, 80.0, "Breath", **kw)
