"""The phase loss of the frame-level model (``phase_weight``): annotated phases cut from the
frame targets, each phase's mean class probability against its labels."""

from __future__ import annotations

import numpy as np
import torch

from edge.bed.detector import FrameGrid
from training.data.recordings import Batch
from training.data.targets import BREATH_INDEX, OUTPUTS, frame_targets
from training.recipe.losses import phase_loss, phase_segments

GRID = FrameGrid.of(8000, 80, 256, 4)  # the shipped 40-ms output frames
N = 100  # 4 s
FINE, WHEEZE = OUTPUTS.index("Fine Crackle"), OUTPUTS.index("Wheeze")
EVENTS = [(0.2, 1.0, "Normal"), (1.0, 1.8, "Fine Crackle"), (2.0, 2.6, "Wheeze+Crackle")]


def batch(real_frames: tuple[int, ...] = (N, N)) -> Batch:
    targets, weights = frame_targets(EVENTS, "CAS & DAS", GRID, N)
    mask = np.zeros((len(real_frames), N), np.float32)
    for i, n in enumerate(real_frames):
        mask[i, :n] = 1.0
    stacked = np.stack([targets] * len(real_frames))
    return Batch(
        features=np.zeros((len(real_frames), 1, 4, 4), np.float32),
        targets=stacked,
        weights=np.stack([weights] * len(real_frames)) * mask[:, None, :],
        mask=mask,
        n_frames=N,
    )


def test_phases_are_the_annotated_runs_with_their_labels() -> None:
    ids, labels = phase_segments(batch((N, 55)))  # the second crop ends at 2.2 s
    ids = ids.reshape(2, N)
    assert (ids[0, :5] == -1).all()
    assert (ids[0, 66:] == -1).all()
    assert (ids[:, 45:50] == -1).all()  # the unannotated gap 1.8-2.0 s
    body = {name: int(ids[0, frame]) for name, frame in [("n", 15), ("c", 35), ("w", 58)]}
    assert len(set(body.values())) == 3  # three phases, each one id
    np.testing.assert_array_equal(labels[body["n"]], np.zeros(BREATH_INDEX))
    assert labels[body["c"]][FINE] == 1
    assert labels[body["c"]].sum() == 1
    assert labels[body["w"]][[FINE, WHEEZE]].tolist() == [1, 1]
    assert (ids[1, 55:] == -1).all()  # padding of the short crop is no phase
    assert (ids[1, 50:55] >= 0).all()


def test_the_loss_rewards_the_right_phase_and_touches_only_phase_frames() -> None:
    bt = batch()
    right = torch.full((2, len(OUTPUTS), N), -4.0)
    right[:, FINE, 25:45] = 4.0  # crackles where annotated
    right[:, [FINE, WHEEZE], 50:65] = 4.0
    wrong = torch.full((2, len(OUTPUTS), N), -4.0)
    wrong[:, FINE, 5:25] = 4.0  # crackles in the Normal phase instead
    assert phase_loss(right, bt) < 0.2 < phase_loss(wrong, bt)
    logits = torch.zeros(2, len(OUTPUTS), N, requires_grad=True)
    phase_loss(logits, bt).backward()
    assert logits.grad is not None
    grad = logits.grad.abs().sum(dim=(0, 1))
    assert (grad[:5] == 0).all()
    assert (grad[66:] == 0).all()
    assert (grad[46:50] == 0).all()
    assert (grad[10:40] > 0).all()
    assert (logits.grad[:, BREATH_INDEX:] == 0).all()  # class outputs only


def test_a_batch_without_phases_adds_nothing() -> None:
    bt = batch()
    bt.targets[:, BREATH_INDEX] = 0.0
    logits = torch.randn(2, len(OUTPUTS), N, requires_grad=True)
    loss = phase_loss(logits, bt)
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph
