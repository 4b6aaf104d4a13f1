"""Frame targets from annotated start/end times, on the model's 40-ms grid."""

from __future__ import annotations

import numpy as np
import pytest

from edge.bed.detector import FrameGrid
from training.data.targets import (
    BREATH_INDEX,
    OUTPUTS,
    QUALITY_INDEX,
    coverage,
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


def test_poor_quality_records_teach_quality_and_silence() -> None:
    targets, weights = frame_targets([], "Poor Quality", GRID, 5)
    assert np.all(targets[QUALITY_INDEX] == 1.0)
    assert np.all(targets[:QUALITY_INDEX] == 0.0)
    assert np.all(weights[BREATH_INDEX] == 0.0)  # where the breaths are is unknown
    assert np.all(weights[:5] == 1.0)  # no event should be raised on them


def test_unknown_event_types_are_named() -> None:
    with pytest.raises(ValueError, match="Squawk"):
        frame_targets([(0.0, 1.0, "Squawk")], "CAS", GRID, 10)


def test_icbhi_cycles_give_known_negatives_and_cycle_level_positives() -> None:
    from training.data.targets import OUTPUTS, cycle_targets

    grid = FrameGrid(8000, 320, 0)  # 40-ms frames from 0
    cycles = [(0.0, 2.0, True, False), (2.0, 4.0, False, True), (4.0, 6.0, False, False)]
    targets, weights = cycle_targets(cycles, grid, 200)  # 8 s: the last 2 s outside cycles
    fc, cc, wh, rh = (
        OUTPUTS.index(n) for n in ("Fine Crackle", "Coarse Crackle", "Wheeze", "Rhonchi")
    )
    crackle, wheeze, normal, outside = (
        slice(0, 50),
        slice(50, 100),
        slice(100, 150),
        slice(150, 200),
    )
    assert (targets[fc, crackle] == 1).all()
    assert (weights[fc, crackle] == 0).all()
    assert (weights[fc, wheeze] == 1).all()
    assert (targets[fc, wheeze] == 0).all()
    assert (weights[cc, normal] == 1).all()
    assert (weights[rh, crackle] == 1).all()
    assert (targets[wh, wheeze] == 1).all()
    assert (weights[wh, wheeze] == 0).all()
    assert (weights[:, outside] == 0).all()  # nothing known outside the cycles
    pq, breath = OUTPUTS.index("Poor Quality"), OUTPUTS.index("Breath")
    assert (weights[pq, :150] == 1).all()
    assert (targets[pq] == 0).all()
    assert (targets[breath, :150] == 1).all()
    assert (weights[breath] == 0).all()


def test_icbhi_training_patients_are_a_seeded_share() -> None:
    from pathlib import Path

    from training.data.icbhi import IcbhiRecording, training_patients

    recs = [IcbhiRecording(f"{100 + p}_1b1_Al_sc_Meditron", Path("x"), str(100 + p), "1", "Al",
                           "sc", "Meditron", ()) for p in range(20) for _ in range(2)]  # fmt: skip
    chosen = training_patients(recs, 0.5, seed=3)
    assert len(chosen) == 10
    assert chosen == training_patients(recs, 0.5, seed=3)
    assert chosen != training_patients(recs, 0.5, seed=4)
    assert training_patients(recs, 0.0, seed=3) == set()
