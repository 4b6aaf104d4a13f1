"""Knowledge distillation of the frame-level model: teachers' soft targets, their crops, the
mixed loss."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from export.streaming_model import load_checkpoint
from tests.streaming_fixture import tiny_checkpoint
from training.models.sed import SedConfig
from training.recordings import Example, Recording, collate, flush_value
from training.sed_train import Proto, attach_teachers, frame_loss, predict

TINY = SedConfig(
    n_kinds=1, n_bands=8, n_outputs=7, stride=2, channels=8, dilations=(1, 2), lookahead_frames=2
)


def _recording(name: str, frames: int, rng: np.random.Generator) -> Recording:
    x = rng.normal(size=(1, 8, frames * TINY.stride)).astype(np.float16)
    targets = (rng.random((7, frames)) > 0.8).astype(np.float32)
    return Recording(name, "p", "Normal", x, targets, np.ones_like(targets), ())


def test_collate_carries_each_crops_soft_targets_and_masks_recordings_without() -> None:
    rng = np.random.default_rng(0)
    with_soft, without = _recording("a", 30, rng), _recording("b", 20, rng)
    with_soft.soft = rng.random((7, 30)).astype(np.float32)
    bt = collate([Example(with_soft, 3, 12), Example(without, 0, 20)], 2, 2, np.zeros((1, 8)))
    assert bt.soft is not None
    assert bt.soft_mask is not None
    assert bt.soft.shape == (2, 7, 20)
    np.testing.assert_array_equal(bt.soft[0, :, :12], with_soft.soft[:, 3:15])
    np.testing.assert_array_equal(bt.soft_mask[0], np.r_[np.ones(12), np.zeros(8)])
    assert not bt.soft_mask[1].any()  # no teacher output: no soft loss there
    plain = collate([Example(without, 0, 20)], 2, 2, np.zeros((1, 8)))
    assert plain.soft is None
    assert plain.soft_mask is None


def test_attach_teachers_gives_the_mean_of_the_teachers_whole_pass(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    recs = [_recording("a", 25, rng), _recording("b", 40, rng)]
    t1, _ = load_checkpoint(tiny_checkpoint(tmp_path / "t1.pt", 1, TINY))
    t2, _ = load_checkpoint(tiny_checkpoint(tmp_path / "t2.pt", 2, TINY))
    flush = flush_value(t1.input_mean.numpy())  # the teachers' training mean
    p1, p2 = predict(t1, recs, flush), predict(t2, recs, flush)
    assert not np.allclose(p1[0], p2[0])  # two different teachers
    attach_teachers(recs, (str(tmp_path / "t1.pt"), str(tmp_path / "t2.pt")), TINY, ("logmel",))
    for r, a, b in zip(recs, p1, p2, strict=True):
        assert r.soft is not None
        assert r.soft.shape == (7, r.n_frames)
        np.testing.assert_allclose(r.soft, ((a + b) / 2).T, atol=1e-6)


def test_attach_teachers_refuses_a_teacher_at_another_stride(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    other = SedConfig(**{**asdict(TINY), "stride": 4})
    tiny_checkpoint(tmp_path / "s4.pt", 0, other)
    with pytest.raises(
        ValueError,
        match=r"teachers: .*s4\.pt reads .* at stride 4, the student reads .* at stride 2",
    ):
        attach_teachers([_recording("a", 20, rng)], (str(tmp_path / "s4.pt"),), TINY, ("logmel",))
    tiny_checkpoint(tmp_path / "k.pt", 0, TINY)
    with pytest.raises(ValueError, match="kinds"):
        attach_teachers([_recording("a", 20, rng)], (str(tmp_path / "k.pt"),), TINY, ("cwt",))


def test_proto_refuses_a_distill_weight_out_of_range_or_without_teachers() -> None:
    with pytest.raises(ValueError, match=r"distill_weight must be a number in \[0, 1\], got 1.5"):
        Proto(teachers=("t.pt",), distill_weight=1.5)
    with pytest.raises(ValueError, match="teachers must be one or more checkpoint paths"):
        Proto(distill_weight=0.5)
    assert Proto(teachers=("t.pt",), distill_weight=0.5).distill_weight == 0.5


def test_frame_loss_mixes_labels_and_teachers_and_pulls_towards_the_teacher() -> None:
    rng = np.random.default_rng(3)
    rec = _recording("a", 16, rng)
    rec.soft = rng.uniform(0.05, 0.95, (7, 16)).astype(np.float32)
    bt = collate([Example(rec, 0, 16)], 2, 2, np.zeros((1, 8)))
    ones = torch.ones(7)
    logits = torch.from_numpy(rng.normal(size=(1, 7, 16)).astype(np.float32)).requires_grad_()
    hard, soft, mixed = (
        float(frame_loss(logits, bt, a, ones, ones).detach()) for a in (0.0, 1.0, 0.25)
    )
    assert mixed == pytest.approx(0.75 * hard + 0.25 * soft, rel=1e-6)
    assert soft != pytest.approx(hard)
    # gradient descent on the teacher's loss alone moves the probabilities to the teacher's
    opt = torch.optim.SGD([logits], lr=50.0)
    for _ in range(300):
        opt.zero_grad()
        frame_loss(logits, bt, 1.0, ones, ones).backward()
        opt.step()
    np.testing.assert_allclose(torch.sigmoid(logits).detach().numpy()[0], rec.soft, atol=0.02)
