"""The quality-adaptive margin of the frame-level model (``quality_margin``): per-frame quality
from level and spectral entropy, margins on the output frames, and the loss they change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lungwatch.config import ConfigError
from training.data.recordings import Batch
from training.data.targets import BREATH_INDEX, OUTPUTS
from training.recipe.config import LossConfig
from training.recipe.losses import frame_loss
from training.recipe.margin import QualityReference, apply_margin, frame_margins, level_and_entropy

F_BANDS = 16
FLAT_QUIET = np.full(F_BANDS, -8.0)  # log power: every band alike, little of it
PEAKED_LOUD = np.full(F_BANDS, -6.0)
PEAKED_LOUD[3] = 2.0  # one loud band


def test_level_and_entropy_of_flat_and_peaked_frames() -> None:
    frames = np.stack([FLAT_QUIET, PEAKED_LOUD], axis=-1)  # (F, 2)
    level, entropy = level_and_entropy(frames)
    assert level[0] == pytest.approx(np.log(F_BANDS * np.exp(-8.0)))
    assert level[1] == pytest.approx(np.log(np.exp(2.0) + (F_BANDS - 1) * np.exp(-6.0)))
    assert entropy[0] == pytest.approx(1.0)  # flat: the most entropy
    assert 0.0 < entropy[1] < 0.05  # one band holds nearly all the power


def test_extreme_log_floors_stay_finite() -> None:
    frames = np.full((F_BANDS, 3), np.log(1e-10))  # the front end's floor
    frames[0, 1] = 30.0
    level, entropy = level_and_entropy(frames)
    assert np.isfinite(level).all()
    assert np.isfinite(entropy).all()


def _reference() -> QualityReference:
    rng = np.random.default_rng(0)
    recordings = []
    for _ in range(4):  # a mix of both kinds of frame, with a little noise
        frames = np.stack([FLAT_QUIET, PEAKED_LOUD] * 20, axis=-1)
        recordings.append((frames + rng.normal(0, 0.3, frames.shape))[None])
    return QualityReference.fit(recordings)


def test_quiet_flat_frames_score_lower_than_loud_peaked_ones() -> None:
    q = _reference().quality(np.stack([FLAT_QUIET, PEAKED_LOUD], axis=-1))
    # each is one standard deviation from the mix's means on both measures: sigmoid(+-1)^2
    assert q[0] == pytest.approx(1 / (1 + np.e) ** 2, abs=0.02)
    assert q[1] == pytest.approx(1 / (1 + np.exp(-1)) ** 2, abs=0.02)


def test_margins_follow_each_output_frames_own_input_frames() -> None:
    stride, n_frames, lookahead = 4, 3, 2
    seq = [PEAKED_LOUD] * stride + [FLAT_QUIET] * stride + [PEAKED_LOUD] * stride
    seq += [FLAT_QUIET] * (lookahead * stride)  # look-ahead frames: not any output's own
    features = np.stack(seq, axis=-1)[None, None]  # (B=1, K=1, F, T)
    m = frame_margins(features, _reference(), stride, n_frames, base=0.5, gain=1.0)
    assert m.shape == (1, n_frames)
    assert m[0, 0] == pytest.approx(m[0, 2])
    q_peaked, q_flat = _reference().quality(np.stack([PEAKED_LOUD, FLAT_QUIET], axis=-1))
    assert m[0, 0] == pytest.approx(0.5 * (1 + (1 - q_peaked)))  # base x (1 + gain x (1 - q))
    assert m[0, 1] == pytest.approx(0.5 * (1 + (1 - q_flat)))
    assert m[0, 0] < m[0, 1]
    flat = frame_margins(features, _reference(), stride, n_frames, base=0.5, gain=0.0)
    np.testing.assert_allclose(flat, 0.5)  # no gain: a constant margin


def test_bad_settings_are_named() -> None:
    features = np.zeros((1, 1, F_BANDS, 8))
    with pytest.raises(ConfigError, match="quality_margin"):
        frame_margins(features, _reference(), 4, 2, base=-0.1, gain=1.0)
    with pytest.raises(ConfigError, match="features"):
        frame_margins(features, _reference(), 4, 3, base=0.5, gain=1.0)
    with pytest.raises(ConfigError, match="quality_margin_gain"):
        LossConfig(quality_margin=0.5, quality_margin_gain=-1.0)


def test_the_margin_moves_class_logits_against_their_targets_only() -> None:
    logits = torch.zeros(1, len(OUTPUTS), 2)
    targets = torch.zeros(1, len(OUTPUTS), 2)
    targets[0, 0, 0] = 1.0  # a Fine Crackle frame
    targets[0, BREATH_INDEX] = 1.0
    moved = apply_margin(logits, targets, torch.tensor([[0.5, 1.0]]), BREATH_INDEX)
    assert moved[0, 0].tolist() == [-0.5, 1.0]  # positive lowered, negative raised
    assert moved[0, 1].tolist() == [0.5, 1.0]
    assert (moved[0, BREATH_INDEX:] == 0).all()  # Breath and the quality output untouched


def _batch(n: int = 6) -> Batch:
    targets = np.zeros((1, len(OUTPUTS), n), np.float32)
    targets[0, 0, :3] = 1.0
    targets[0, BREATH_INDEX, :4] = 1.0
    return Batch(
        features=np.zeros((1, 1, F_BANDS, n * 4), np.float32),
        targets=targets,
        weights=np.ones_like(targets),
        mask=np.ones((1, n), np.float32),
        n_frames=n,
    )


def test_the_margin_makes_the_labelled_loss_ask_for_more_confidence() -> None:
    bt = _batch()
    right = torch.from_numpy(np.where(bt.targets > 0, 1.0, -1.0).astype(np.float32))
    plain = frame_loss(right, bt)
    margined = frame_loss(right, bt, np.full((1, 6), 0.8, np.float32))
    zero = frame_loss(right, bt, np.zeros((1, 6), np.float32))
    assert margined > plain
    assert zero.item() == pytest.approx(plain.item())
    grads = []
    for margins in (None, np.full((1, 6), 0.8, np.float32)):
        logits = right.clone().requires_grad_(True)
        frame_loss(logits, bt, margins).backward()
        assert logits.grad is not None
        grads.append(logits.grad)
    assert torch.equal(grads[0][:, BREATH_INDEX:], grads[1][:, BREATH_INDEX:])
    # the class outputs are pushed further from the boundary: positives up, negatives down
    assert (grads[1][0, 0, :3] < grads[0][0, 0, :3]).all()
    assert (grads[1][0, 1] > grads[0][0, 1]).all()
