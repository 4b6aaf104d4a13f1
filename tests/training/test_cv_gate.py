"""The quality gate's threshold fitted out of fold: the replay of the gate's model switch on
stored output frames (training.cv.gate) against the device's own gate, and the fit's rule."""

from __future__ import annotations

import numpy as np
import pytest

from edge.bed.gate import GateConfig, QualityGate
from edge.sources.base import SourceChunk
from tests.edge.test_gate import RATE_HZ, Run, breath
from training.cv.gate import ON_GRID, GateCounts, cross_fit_gate, fit_gate, poor_spans

HOP = 2000  # samples per window hop in tests.edge.test_gate's pipeline
HOP_S = HOP / RATE_HZ


def device_spans(probs: list[float], on: float, off: float) -> list[float]:
    """Durations (s) of the poor_signal events the device's gate raises for one Poor Quality
    probability per hop (breath-like audio, so only the model's switch can raise it)."""
    config = GateConfig(poor_quality_on_threshold=on, poor_quality_off_threshold=off)
    run = Run(QualityGate(config, RATE_HZ))
    x = breath(len(probs) * HOP_S + 2.0)
    # the first window completes with the fifth chunk and spans the stream from its start:
    # five chunks of good readings first, so that every reading replayed speaks for one hop
    sequence = [0.0] * 5 + probs + [0.0] * 4
    for k, p in enumerate(sequence):
        run.push(SourceChunk(x[k * HOP : (k + 1) * HOP], k * HOP), poor_prob=p)
    run.transitions += run.gate.finish()
    ended = [t for t in run.transitions if t.type == "poor_signal" and t.state == "ended"]
    assert all(t.end_sample is not None for t in ended)
    return [(t.end_sample - t.start_sample) / RATE_HZ for t in ended]


@pytest.mark.parametrize("seed", range(6))
def test_the_replay_raises_the_events_the_devices_gate_raises(seed: int) -> None:
    """Random runs of high, middling and low Poor Quality readings: the replay finds the
    device's events (how many, and how long to within one hop) for several thresholds."""
    rng = np.random.default_rng(seed)
    probs: list[float] = []
    while len(probs) < 60:
        level = rng.choice([0.05, 0.45, 0.65, 0.8, 0.95])
        probs += [float(level)] * int(rng.integers(1, 9))
    for on in (0.6, 0.75, 0.9):
        off = round(on - 0.2, 3)
        device = device_spans(probs, on, off)
        replayed = poor_spans(np.array(probs), on, off, window_frames=1, frame_s=HOP_S)
        assert len(replayed) == len(device), (on, device, replayed)
        for (start, end), length in zip(replayed, device, strict=True):
            assert abs((end - start) - length) <= HOP_S + 1e-9, (on, device, replayed)


def test_windows_read_the_mean_of_their_frames() -> None:
    quality = np.r_[np.full(12, 0.9), np.full(12, 0.3), np.full(36, 0.7), np.full(24, 0.1)]
    # windows: 0.9, 0.3, 0.7 x3, 0.1 x2 at 0.48 s each; on 0.6 / off 0.4; min 1 s, pause 1 s
    spans = poor_spans(quality, 0.6, 0.4, window_frames=12, frame_s=0.04)
    assert spans == [(0.0, pytest.approx(2.4))]  # the 0.48-s pause is bridged
    assert poor_spans(quality, 0.95, 0.75, window_frames=12, frame_s=0.04) == []


def counts(flagged: list[list[bool]], kind: list[int], poor_s: list[list[float]]) -> GateCounts:
    n = len(kind)
    return GateCounts(
        [str(i) for i in range(n)],
        np.array(kind),
        np.arange(n) % 2,
        np.full(n, 10.0),
        np.array(flagged),
        np.array(poor_s, np.float64),
    )


def test_the_fit_takes_the_lowest_threshold_within_both_budgets() -> None:
    t = len(ON_GRID)
    # a good record flagged below grid index 4, a Poor Quality record flagged below 10, an
    # ICBHI recording under poor_signal 5 s of 10 below index 6, 0.5 s from there on
    good = [i < 4 for i in range(t)]
    poor = [i < 10 for i in range(t)]
    other = [5.0 if i < 6 else 0.5 for i in range(t)]
    c = counts([good, poor, [s > 0 for s in other]], [0, 1, 2], [[0.0] * t, [0.0] * t, other])
    every = np.ones(3, bool)
    assert fit_gate(c, every, max_good_share=0.0, max_other_time_share=0.1) == 6
    assert fit_gate(c, every, max_good_share=0.0, max_other_time_share=0.6) == 4
    assert fit_gate(c, every, max_good_share=1.0, max_other_time_share=0.6) == 0
    # nothing within budget: the highest threshold of the grid
    assert fit_gate(c, every, max_good_share=0.0, max_other_time_share=0.01) == t - 1


def test_cross_fitting_judges_each_fold_at_the_threshold_of_the_others() -> None:
    t = len(ON_GRID)
    # fold 0: a good record flagged below index 8; fold 1: a good record never flagged, a Poor
    # Quality record flagged below index 5
    c = counts(
        [[i < 8 for i in range(t)], [False] * t, [False] * t, [i < 5 for i in range(t)]],
        [0, 0, 0, 1],
        [[0.0] * t] * 4,
    )
    fit = cross_fit_gate(c, max_good_share=0.0, max_other_time_share=1.0, k=2)
    # fold 0's threshold from fold 1 (index 0), fold 1's from fold 0 (index 8)
    assert fit.thresholds == [ON_GRID[0], ON_GRID[8]]
    assert fit.held_out["good"] == pytest.approx(1 / 3)  # fold 0's good record at index 0
    assert fit.held_out["poor_quality"] == 0.0  # fold 1's Poor record at index 8: missed
