"""Masked-spectrogram pretraining of the network's stems and blocks (``pretrain.epochs`` > 0).

After HeAR (health acoustic representations learned from 2-s clips by masked autoencoding), made
causal for the streaming model: masked spans, longer than the look-ahead so that most of a span is
predicted from the past, are filled with the flush frame. Labels are not used; the reconstruction
head is dropped afterwards."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from training.data.recordings import Recording, collate, random_example
from training.models.sed import SedNet
from training.recipe.config import RunConfig


def mask_spans(n: int, ratio: float, span: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Mask of ``n`` output frames: random spans (lengths in ``span``, inclusive) to ~``ratio``."""
    masked = np.zeros(n, dtype=bool)
    lo, hi = span
    for _ in range(4 * n):
        if masked.mean() >= ratio:
            break
        length = min(n, int(rng.integers(lo, hi + 1)))
        start = int(rng.integers(0, n - length + 1))
        masked[start : start + length] = True
    return masked


def pretrain(
    model: SedNet,
    recs: list[Recording],
    flush: np.ndarray,
    run: RunConfig,
    rng: np.random.Generator,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[float]:
    """Pretrain ``model`` in place; returns the mean loss per epoch."""
    mcfg, cfg, data = model.config, run.pretrain, run.data
    stride, look = mcfg.stride, mcfg.lookahead_frames
    k, f = mcfg.n_kinds, mcfg.n_bands
    head = torch.nn.Conv1d(mcfg.channels, k * f, 1)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=run.optim.lr, weight_decay=run.optim.weight_decay)
    steps = math.ceil(len(recs) / run.optim.batch_size) * cfg.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=run.optim.lr, total_steps=steps, pct_start=run.optim.warmup
    )
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        t1 = time.time()
        losses = []
        perm = rng.permutation(len(recs))
        for s in range(0, len(perm), run.optim.batch_size):
            exs = [
                random_example(recs[i], rng, data.max_start_frames, data.max_frames)
                for i in perm[s : s + run.optim.batch_size]
            ]
            bt = collate(exs, stride, look, flush, transform)
            n = bt.n_frames
            clean = torch.from_numpy(bt.features.copy())
            masks = np.zeros((len(exs), n), dtype=np.float32)
            for b, e in enumerate(exs):
                masks[b, : e.n] = mask_spans(e.n, cfg.mask_ratio, cfg.span, rng)
            hidden = np.repeat(masks > 0, stride, axis=1)  # (B, n * stride) input frames
            view = bt.features[:, :, :, : n * stride].transpose(0, 3, 1, 2)  # (B, T, K, F)
            view[hidden] = flush
            target = model.normalise(clean)[..., : n * stride]
            target = target.reshape(len(exs), k, f, n, stride).mean(dim=4).reshape(len(exs), -1, n)
            h, _ = model.embed(torch.from_numpy(bt.features), model.initial_state(len(exs)))
            pred = head(h[:, :, look : look + n])
            w = torch.from_numpy(masks)[:, None, :]
            loss = (((pred - target) ** 2) * w).sum() / (w.sum() * k * f).clamp_min(1.0)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)))
        print(f"pretrain epoch {epoch} mse {history[-1]:.4f} {time.time() - t1:.0f} s", flush=True)
    return history
