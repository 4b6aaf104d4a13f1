"""The detection benchmark's split of the device's latency: which output frame decided an
onset, found with the device's own detector fed one frame at a time."""

from __future__ import annotations

import numpy as np

from bench.detection import decision_frames
from edge.bed.detector import DetectorConfig, FrameGrid
from edge.bed.rules import ClassThreshold, PhaseRule

OUTPUTS = ("Fine Crackle", "Coarse Crackle", "Wheeze", "Rhonchi", "Stridor", "Breath")
GRID = FrameGrid(sample_rate_hz=1000, frame_samples=40)


def test_the_deciding_frame_is_where_the_phase_mean_reaches_the_threshold() -> None:
    p = np.full((40, len(OUTPUTS)), 0.01, np.float32)
    p[5:30, OUTPUTS.index("Breath")] = 0.9  # one phase, frames 5..29
    fine = OUTPUTS.index("Fine Crackle")
    p[5:15, fine] = 0.1
    p[15:30, fine] = 0.95  # the phase mean: 8.6 / 18 = 0.478 at frame 22, 9.55 / 19 = 0.503 at 23
    rules = tuple(ClassThreshold(t, 0.99, 0.9) for t in OUTPUTS[:5] if t != "Fine Crackle")
    config = DetectorConfig(
        thresholds=(ClassThreshold("Fine Crackle", 0.5, 0.4), *rules),
        phases=PhaseRule(0.6, 0.5, min_phase_ms=120.0, lead_ms=40.0),
    )
    means = np.cumsum(p[5:30, fine]) / np.arange(1, 26)
    expected = 5 + int(np.argmax((means >= 0.5) & (np.arange(1, 26) >= 3)))
    start = GRID.start_sample(5) - 40  # the reported start: 40 ms of lead
    assert decision_frames(OUTPUTS, config, GRID, p) == {("Fine Crackle", start): expected}
    assert expected == 23
    # announcing later would need a higher threshold: no onset at all at 0.95
    strict = DetectorConfig(
        thresholds=(ClassThreshold("Fine Crackle", 0.95, 0.9), *rules), phases=config.phases
    )
    assert decision_frames(OUTPUTS, strict, GRID, p) == {}


def test_frames_never_described_are_skipped_not_zeroed() -> None:
    p = np.full((40, len(OUTPUTS)), 0.01, np.float32)
    p[5:30, OUTPUTS.index("Breath")] = 0.9
    p[5:30, OUTPUTS.index("Fine Crackle")] = 0.9
    p[6:8] = np.nan  # a state reset inside the phase, before the minimum phase is reached
    config = DetectorConfig(
        thresholds=(ClassThreshold("Fine Crackle", 0.5, 0.4),),
        phases=PhaseRule(0.6, 0.5, min_phase_ms=120.0),
    )
    # the phase stays open across the gap: frames 5, 8, 9 are its first three real frames
    assert decision_frames(OUTPUTS, config, GRID, p) == {("Fine Crackle", GRID.start_sample(5)): 9}
