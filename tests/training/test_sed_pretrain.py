"""Masked-spectrogram pretraining of the frame-level model."""

from __future__ import annotations

import numpy as np
import torch

from training.data.recordings import Recording
from training.models.sed import SedConfig, SedNet
from training.recipe.config import DataConfig, OptimConfig, PretrainConfig, RunConfig
from training.recipe.pretrain import mask_spans, pretrain

TINY = SedConfig(
    n_kinds=1, n_bands=8, n_outputs=7, stride=2, channels=8, dilations=(1, 2), lookahead_frames=2
)


def test_mask_spans_cover_the_ratio_with_spans_of_the_given_lengths() -> None:
    rng = np.random.default_rng(0)
    for n in (40, 100, 400):
        masked = mask_spans(n, 0.4, (10, 25), rng)
        assert 0.4 <= masked.mean() <= 0.4 + 25 / n
        # every run of masked frames is at least one span long
        edges = np.flatnonzero(np.diff(np.r_[0, masked.astype(int), 0]))
        runs = edges[1::2] - edges[::2]
        assert runs.min() >= 10
    assert not mask_spans(30, 0.0, (10, 25), rng).any()


def _recordings(n: int, frames: int, rng: np.random.Generator) -> list[Recording]:
    """Recordings whose bands follow a slow sine: the past predicts a masked span."""
    out = []
    for i in range(n):
        t = np.arange(frames * TINY.stride)
        phase = rng.uniform(0, 2 * np.pi)
        x = (
            np.sin(2 * np.pi * t / 37.0 + phase)[None, None, :]
            * np.linspace(1, 2, 8)[None, :, None]
        )
        targets = np.zeros((7, frames), np.float32)
        out.append(
            Recording(
                f"r{i}", "p", "Normal", x.astype(np.float16), targets, np.ones_like(targets), ()
            )
        )
    return out


def test_pretraining_learns_to_fill_masked_spans_and_changes_the_encoder() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    recs = _recordings(16, 60, rng)
    model = SedNet(TINY)
    before = [p.detach().clone() for p in model.stems.parameters()]
    cfg = RunConfig(
        optim=OptimConfig(batch_size=8, lr=1e-2),
        pretrain=PretrainConfig(epochs=30, mask_ratio=0.3, span=(3, 6)),
        data=DataConfig(max_frames=60, max_start_frames=0),
    )
    flush = np.zeros((1, 8), np.float32)
    history = pretrain(model, recs, flush, cfg, rng)
    assert len(history) == 30
    assert np.all(np.isfinite(history))
    # predicting the mean of a masked sine scores its variance (~1.2 here); the model must
    # learn to continue it from the past
    assert history[-1] < 0.5 * history[0]
    after = list(model.stems.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
