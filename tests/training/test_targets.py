"""Frame targets from annotated start/end times, on the model's 40-ms grid."""

from __future__ import annotations

import numpy as np
import pytest

from edge.detector import FrameGrid
from training.targets import (
    BREATH_INDEX,
    OUTPUTS,
    QUALITY_INDEX,
    coverage,
    cycle_targets,
    frame_targets,
)

GRID = FrameGrid.of(8000, 80, 256, 4)  # frame j: samples [320 j + 88, 320 j + 408)
FRAME_S = 0.04
OFFSET_S = 88 / 8000


def frame_start_s(j: int) -> float:
    return j * FRAME_S + OFFSET_S


def test_coverage_is_the_covered_share_of_each_frame() -> None:
    # from the middle of frame 2 to a quarter into frame 5
    start, end = frame_start_s(2) + 0.02, frame_start_s(5) + 0.01
    got = coverage([(start, end)], GRID, 8)
    np.testing.assert_allclose(got, [0, 0, 0.5, 1, 1, 0.25, 0, 0], atol=1e-5)


def test_overlapping_spans_are_not_counted_twice() -> None:
    spans = [(frame_start_s(1), frame_start_s(4)), (frame_start_s(2), frame_start_s(3))]
    np.testing.assert_allclose(coverage(spans, GRID, 6), [0, 1, 1, 1, 0, 0], atol=1e-6)


def test_events_switch_on_their_outputs_and_breath() -> None:
    events = [
        (frame_start_s(1), frame_start_s(3), "Fine Crackle"),
        (frame_start_s(5), frame_start_s(7), "Wheeze+Crackle"),
        (frame_start_s(8), frame_start_s(9), "Normal"),
    ]
    targets, weights = frame_targets(events, "CAS & DAS", GRID, 10, unannotated_weight=0.25)
    assert targets.shape == weights.shape == (len(OUTPUTS), 10)
    on = {name: np.flatnonzero(targets[i] > 0.5).tolist() for i, name in enumerate(OUTPUTS)}
    assert on["Fine Crackle"] == [1, 2, 5, 6]  # Wheeze+Crackle is both Wheeze and a crackle
    assert on["Wheeze"] == [5, 6]
    assert on["Breath"] == [1, 2, 5, 6, 8]  # every annotated phase, Normal included
    assert on["Coarse Crackle"] == on["Rhonchi"] == on["Stridor"] == on["Poor Quality"] == []
    # unannotated frames are weighted down for the event and breath outputs, not for quality
    assert weights[0, 0] == pytest.approx(0.25)
    assert weights[0, 1] == pytest.approx(1.0)
    assert weights[BREATH_INDEX, 9] == pytest.approx(0.25)
    assert np.all(weights[QUALITY_INDEX] == 1.0)


@pytest.mark.parametrize(
    ("label", "unknown"),
    [
        ("Normal", set()),
        ("CAS", {"Wheeze", "Rhonchi", "Stridor"}),
        ("DAS", {"Fine Crackle", "Coarse Crackle"}),
        ("CAS & DAS", {"Wheeze", "Rhonchi", "Stridor", "Fine Crackle", "Coarse Crackle"}),
    ],
)
def test_record_aware_weights_follow_the_record_label(label: str, unknown: set[str]) -> None:
    events = [(frame_start_s(2), frame_start_s(4), "Normal")]
    targets, weights = frame_targets(events, label, GRID, 6, 0.5, record_aware=True)
    for c, name in enumerate(OUTPUTS[:5]):
        # inside the annotated phase every class is known; outside, the label decides
        np.testing.assert_allclose(weights[c, 2:4], 1.0)
        outside = 0.0 if name in unknown else 1.0
        np.testing.assert_allclose(weights[c, [0, 1, 4, 5]], outside, err_msg=name)
    np.testing.assert_allclose(weights[BREATH_INDEX, [0, 5]], 0.5)  # Breath as before
    assert np.all(targets[:5] == 0.0)
    plain = frame_targets(events, label, GRID, 6, 0.5)[1]
    np.testing.assert_allclose(plain[:5, [0, 5]], 0.5)  # off by default


def test_poor_quality_records_teach_quality_and_silence() -> None:
    targets, weights = frame_targets([], "Poor Quality", GRID, 5)
    assert np.all(targets[QUALITY_INDEX] == 1.0)
    assert np.all(targets[:QUALITY_INDEX] == 0.0)
    assert np.all(weights[BREATH_INDEX] == 0.0)  # where the breaths are is unknown
    assert np.all(weights[:5] == 1.0)  # no event should be raised on them


def test_unknown_event_types_are_named() -> None:
    with pytest.raises(ValueError, match="Squawk"):
        frame_targets([(0.0, 1.0, "Squawk")], "CAS", GRID, 10)


def test_icbhi_cycles_give_family_targets_and_leave_the_unknown_unweighted() -> None:
    cycles = [
        (frame_start_s(1), frame_start_s(3), True, False),  # crackles
        (frame_start_s(3), frame_start_s(5), False, True),  # wheezes
        (frame_start_s(6), frame_start_s(8), False, False),  # normal, after a gap
    ]
    targets, weights = cycle_targets(cycles, GRID, 9)
    assert targets.shape == weights.shape == (len(OUTPUTS), 9)
    row = {name: i for i, name in enumerate(OUTPUTS)}
    on = {name: np.flatnonzero(targets[i] > 0.5).tolist() for name, i in row.items()}
    assert on["Fine Crackle"] == [1, 2]
    assert on["Wheeze"] == [3, 4]
    assert on["Coarse Crackle"] == on["Rhonchi"] == on["Stridor"] == on["Breath"] == []
    known = {name: np.flatnonzero(weights[i] > 0.5).tolist() for name, i in row.items()}
    cycles_frames = [1, 2, 3, 4, 6, 7]
    assert known["Fine Crackle"] == known["Wheeze"] == known["Stridor"] == cycles_frames
    # ICBHI says "crackles", not which kind: Coarse Crackle is unknown in a crackle cycle
    assert known["Coarse Crackle"] == [3, 4, 6, 7]
    assert known["Rhonchi"] == [1, 2, 6, 7]
    # outside the cycles (frames 0, 5, 8: zero audio in the files) and for Breath and
    # Poor Quality nothing is known
    assert known["Breath"] == known["Poor Quality"] == []
    np.testing.assert_allclose(weights[:, [0, 5, 8]], 0.0, atol=1e-6)
