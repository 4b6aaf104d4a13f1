"""The rolling bed verdict (edge.bed.verdict): Task 2-2's decision over the last window_s of a
stream, with hysteresis; on a recording shorter than the window its last label is the Task 2
label of the whole recording."""

from __future__ import annotations

import numpy as np
import pytest

from edge.bed.detector import FrameGrid
from edge.bed.verdict import ASSESSING, RollingVerdict, VerdictConfig, VerdictRule
from lungwatch.errors import ConfigError

OUTPUTS = (
    "Fine Crackle",
    "Coarse Crackle",
    "Wheeze",
    "Rhonchi",
    "Stridor",
    "Breath",
    "Poor Quality",
)
GRID = FrameGrid(8000, 320)  # 40-ms output frames
RULE = VerdictRule(poor_quality=0.5, cas=0.6, das=0.6, top_frames=3,
                   config=VerdictConfig(window_s=4.0, min_s=1.0, release=0.5))  # fmt: skip
FC, WH, PQ = OUTPUTS.index("Fine Crackle"), OUTPUTS.index("Wheeze"), OUTPUTS.index("Poor Quality")


def frames(n: int, **levels: float) -> np.ndarray:
    p = np.full((n, len(OUTPUTS)), 0.05, np.float32)
    for name, value in levels.items():
        p[:, {"fc": FC, "wh": WH, "pq": PQ}[name]] = value
    return p


def test_assessing_until_min_s_then_normal() -> None:
    v = RollingVerdict(RULE, OUTPUTS, GRID)
    assert v.update(0, frames(20)) is None  # 0.8 s < min_s
    assert v.label == ASSESSING
    assert v.update(20, frames(10)) == "Normal"
    assert v.update(30, frames(10)) is None  # unchanged: nothing new to say


def test_the_families_and_poor_quality_decide() -> None:
    v = RollingVerdict(RULE, OUTPUTS, GRID)
    v.update(0, frames(30))
    assert v.update(30, frames(3, wh=0.9)) == "CAS"
    assert v.update(33, frames(3, fc=0.9)) == "CAS & DAS"
    assert v.update(36, frames(100, pq=0.9)) == "Poor Quality"  # the window is all poor now
    assert v.scores[0] == pytest.approx(0.9)


def test_hysteresis_holds_a_family_until_it_falls_below_release() -> None:
    v = RollingVerdict(RULE, OUTPUTS, GRID)
    v.update(0, frames(30))
    assert v.update(30, frames(3, wh=0.65)) == "CAS"
    # the window moves on: the top frames now 0.4, below the threshold (0.6) but above
    # release x threshold (0.3): still CAS
    assert v.update(33, frames(100, wh=0.4)) is None
    assert v.label == "CAS"
    assert v.update(133, frames(100, wh=0.2)) == "Normal"


def test_frames_never_described_do_not_count() -> None:
    v = RollingVerdict(RULE, OUTPUTS, GRID)
    p = frames(40, wh=0.9)
    p[:] = np.nan
    assert v.update(0, p) is None
    assert v.label == ASSESSING


def test_the_last_label_of_a_short_recording_is_task_2_of_it() -> None:
    """Against the training side's Task 2 rule (training.scoring.tasks.record_label)."""
    tasks = pytest.importorskip("training.scoring.tasks")
    rules = tasks.TaskRules({c: 0.5 for c in OUTPUTS[:5]}, poor_quality=RULE.poor_quality,
                            cas=RULE.cas, das=RULE.das, top_frames=RULE.top_frames)  # fmt: skip
    rng = np.random.default_rng(0)
    config = VerdictConfig(window_s=30.0, min_s=1.0, release=0.8)
    rule = VerdictRule(RULE.poor_quality, RULE.cas, RULE.das, RULE.top_frames, config)
    labels = set()
    for _ in range(40):
        n = int(rng.integers(100, 400))  # 4 to 16 s, shorter than the window
        p = (rng.random((n, len(OUTPUTS))) * rng.uniform(0.3, 1.0, len(OUTPUTS))).astype(np.float32)
        p[:, PQ] *= rng.uniform(0.3, 1.2)
        v = RollingVerdict(rule, OUTPUTS, GRID)
        for start in range(0, n, 12):
            v.update(start, p[start : start + 12])
        expected = tasks.record_label(p, OUTPUTS, rules)
        if v.label != expected:  # only Poor Quality's hysteresis may hold an earlier label
            assert v.label == "Poor Quality"
            assert v.scores[0] > rule.poor_quality * 0.8
        labels.add(expected)
    assert len(labels) >= 3  # the cases cover several labels


def test_a_manifest_without_task_rules_has_no_verdict() -> None:
    assert VerdictRule.of(None, VerdictConfig()) is None
    assert VerdictRule.of({"cas": 1}, VerdictConfig(enabled=False)) is None
    with pytest.raises(ConfigError, match=r"tasks\.rules"):
        VerdictRule.of({"cas": 0.5}, VerdictConfig())
    with pytest.raises(ValueError, match=r"release must be a number in \(0, 1\]"):
        VerdictConfig(release=0.0)


@pytest.mark.parametrize("sizes", [(7, 13, 99, 1, 150, 12), (100,) * 4, (250, 3)])
def test_the_scores_are_those_of_the_last_window_for_any_chunking(sizes: tuple[int, ...]) -> None:
    """However the frames arrive (chunks that wrap the ring's end, one longer than the whole
    window), the scores are those of the last ``window_s`` of frames: the mean poor quality
    and each family's mean of its ``top_frames`` highest frames."""
    rng = np.random.default_rng(sum(sizes))
    p = rng.uniform(0.0, 0.5, (sum(sizes), len(OUTPUTS))).astype(np.float32)
    v = RollingVerdict(RULE, OUTPUTS, GRID)
    start = 0
    for n in sizes:
        v.update(start, p[start : start + n])
        start += n
    last = p[-100:].astype(np.float64)  # window_s 4 s of 40-ms frames
    cas = np.sort(last[:, WH : WH + 3].max(axis=1))[-3:].mean()  # Wheeze, Rhonchi, Stridor
    das = np.sort(last[:, FC : FC + 2].max(axis=1))[-3:].mean()  # Fine, Coarse Crackle
    assert v.scores == pytest.approx((last[:, PQ].mean(), cas, das))
