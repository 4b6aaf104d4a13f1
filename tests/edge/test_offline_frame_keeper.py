"""edge.runtime.offline.FrameKeeper, the runtime's ``on_frames`` hook that keeps every bed's output
frames (``lungwatch detect --score``) and when they arrived (the latency benchmark)."""

from __future__ import annotations

import numpy as np

from edge.inference.streaming import OutputFrames
from edge.runtime.offline import FrameKeeper


class Bed:
    id = "b1"


def test_frames_and_times_are_placed_and_gaps_stay_unknown() -> None:
    keeper = FrameKeeper()
    keeper(Bed(), OutputFrames(0, np.ones((3, 2), np.float32)))
    keeper(Bed(), OutputFrames(5, np.full((2, 2), 0.5, np.float32)))  # 3, 4: a state reset
    keeper(Bed(), OutputFrames(7, np.zeros((0, 2), np.float32)))  # all look-ahead: nothing
    probs, made = keeper.probs("b1", 2), keeper.times("b1")
    assert probs.shape == (7, 2)
    assert np.isnan(probs[3:5]).all()
    assert (probs[:3] == 1.0).all()
    assert (probs[5:] == 0.5).all()
    assert np.isfinite(made[[0, 1, 2, 5, 6]]).all()
    assert np.isnan(made[3:5]).all()
    assert made[0] == made[2] <= made[5] == made[6]
    assert keeper.probs("other", 2).shape == (0, 2)
    assert keeper.times("other").shape == (0,)
