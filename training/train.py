"""``lungwatch train --config training/configs/<name>.yaml [--set key=value ...]``.

Trains on the training data with a patient-disjoint validation split carved from it,
selects the best epoch on that validation split (never on a test set), and writes to
``<out_dir>/<name>/``: ``config.yaml`` (the resolved run), ``metrics.jsonl`` (one line per
epoch), ``best.pt`` and ``last.pt`` (resumable with ``--resume``).

``torchrun --nproc-per-node N -m training.train --config ...`` runs the same config with
DistributedDataParallel on the gloo backend (CPU); rank 0 validates and writes.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from edge.config import to_mapping
from edge.errors import ConfigError
from firmware_bridge.cliparse import ArgumentParser
from training.checkpoint import read_checkpoint, save_checkpoint
from training.config import RunConfig, load_run_config
from training.data import TrainingData, build_training_data
from training.metrics import icbhi_scores, sprsound_scores
from training.models import LungNet, build_model
from training.objective import Objective


@dataclass
class Context:
    """Process-level facts: distributed rank/size and where output goes."""

    rank: int
    world: int
    run_dir: Path

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(run: RunConfig) -> Context:
    """Seeds, threads and (under torchrun) the gloo process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    torch.set_num_threads(run.optim.threads)
    random.seed(run.seed)
    np.random.seed(run.seed)
    torch.manual_seed(run.seed)
    torch.use_deterministic_algorithms(True)
    return Context(rank, world, run.run_dir)


def make_loader(data: TrainingData, run: RunConfig, ctx: Context) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(run.seed)
    sampler: DistributedSampler[Any] | None = (
        DistributedSampler(
            data.train,
            num_replicas=ctx.world,
            rank=ctx.rank,
            shuffle=True,
            seed=run.seed,
            drop_last=True,
        )
        if ctx.world > 1
        else None
    )
    return DataLoader(
        data.train,
        batch_size=run.optim.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator,
        drop_last=True,
        num_workers=0,
    )


def shuffle_for_epoch(loader: DataLoader[Any], seed: int, epoch: int) -> None:
    """Make epoch ``epoch``'s order a function of (seed, epoch) alone, so a resumed run
    sees exactly the batches the uninterrupted run would have."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    elif loader.generator is not None:
        loader.generator.manual_seed(seed * 100_003 + epoch)


def lr_lambda(run: RunConfig, steps_per_epoch: int) -> Any:
    warmup = max(1, run.optim.warmup_epochs * steps_per_epoch)
    total = max(warmup + 1, run.optim.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    return factor


def train_epoch(
    model: torch.nn.Module,
    loader: DataLoader[Any],
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    progress: Any,
) -> float:
    """One pass over the training windows; returns the mean loss."""
    model.train()
    total, count = 0.0, 0
    for x, y, quality in progress(loader):
        batch = objective.augment(x, y, quality, generator)
        loss = objective.loss(model(batch.x), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        scheduler.step()
        total += float(loss.detach()) * x.shape[0]
        count += x.shape[0]
    return total / max(count, 1)


@torch.no_grad()
def validate(model: LungNet, data: TrainingData, run: RunConfig) -> dict[str, float]:
    """Window-level scores on the validation split: ICBHI Se/Sp/Score for ICBHI classes,
    SPRSound SE/SP/Score otherwise (the selection metric)."""
    model.eval()
    loader = DataLoader(data.val, batch_size=256, shuffle=False, num_workers=0)
    predictions: list[int] = []
    targets: list[int] = []
    for x, y, _ in loader:
        logits, _, _ = model(x)
        predictions += logits.argmax(dim=1).tolist()
        targets += y.tolist()
    names = run.data.classes
    truth, guess = [names[t] for t in targets], [names[p] for p in predictions]
    scores = (
        icbhi_scores(truth, guess) if run.data.dataset == "icbhi" else sprsound_scores(truth, guess)
    )
    accuracy = float(np.mean(np.array(predictions) == np.array(targets))) if targets else 0.0
    return {"se": scores.se, "sp": scores.sp, "score": scores.score, "accuracy": accuracy}


def progress_bar(enabled: bool, desc: str) -> Any:
    """tqdm on a terminal, plain iteration otherwise (CI logs stay readable)."""
    if enabled and sys.stderr.isatty():
        from tqdm import tqdm

        return lambda iterable: tqdm(iterable, desc=desc, leave=False)
    return lambda iterable: iterable


def fit(
    run: RunConfig,
    resume: Path | None = None,
    verbose: bool = True,
    stop_after_epoch: int | None = None,
) -> dict[str, Any]:
    """Train ``run``; returns the best validation scores and where the checkpoints are.

    ``stop_after_epoch`` ends the run early as an interruption would (the resume tests).
    """
    ctx = setup(run)
    data = build_training_data(run)
    model = build_model(run.model_config())
    model.set_input_stats(torch.as_tensor(data.mean), torch.as_tensor(data.std))
    objective = Objective(run, data.class_counts)
    loader = make_loader(data, run, ctx)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=run.optim.lr, weight_decay=run.optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(run, len(loader)))
    generator = torch.Generator().manual_seed(run.seed * 1000 + ctx.rank)
    start_epoch, best = 0, {"score": -1.0, "loss": math.inf, "epoch": -1}
    if resume is not None:
        start_epoch, best = _resume(resume, model, optimizer, scheduler, generator)
    elif run.ssl.enabled:
        _pretrain(model, data, run, ctx, verbose)
    trained: torch.nn.Module = (
        DistributedDataParallel(model, find_unused_parameters=True) if ctx.world > 1 else model
    )
    if ctx.is_main:
        _write_config(run)
    last_epoch = run.optim.epochs if stop_after_epoch is None else stop_after_epoch
    for epoch in range(start_epoch, last_epoch):
        shuffle_for_epoch(loader, run.seed, epoch)
        t0 = time.perf_counter()
        loss = train_epoch(
            trained,
            loader,
            objective,
            optimizer,
            scheduler,
            generator,
            progress_bar(verbose and ctx.is_main, f"epoch {epoch + 1}"),
        )
        if ctx.is_main:
            best = _end_epoch(
                run,
                model,
                epoch,
                loss,
                time.perf_counter() - t0,
                best,
                data,
                optimizer,
                scheduler,
                generator,
                verbose,
            )
        if ctx.world > 1:
            dist.barrier()
    if ctx.world > 1:
        dist.destroy_process_group()
    return {**best, "best": str(run.run_dir / "best.pt"), "last": str(run.run_dir / "last.pt")}


def _end_epoch(
    run: RunConfig,
    model: LungNet,
    epoch: int,
    loss: float,
    seconds: float,
    best: dict[str, Any],
    data: TrainingData,
    optimizer: Any,
    scheduler: Any,
    generator: torch.Generator,
    verbose: bool,
) -> dict[str, Any]:
    scores = validate(model, data, run)
    record = {
        "epoch": epoch + 1,
        "train_loss": loss,
        "seconds": seconds,
        **{f"val_{k}": v for k, v in scores.items()},
    }
    with (run.run_dir / "metrics.jsonl").open("a") as log:
        log.write(json.dumps(record) + "\n")
    improved = (
        scores["score"] > best["score"]
        if run.optim.select_metric == "score"
        else loss < best["loss"]
    )
    if improved:
        best = {"score": scores["score"], "loss": loss, "epoch": epoch + 1, "val": scores}
        save_checkpoint(run.run_dir / "best.pt", model, run, epoch=epoch + 1, val_scores=scores)
    save_checkpoint(
        run.run_dir / "last.pt",
        model,
        run,
        epoch=epoch + 1,
        best=best,
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        rng=generator.get_state(),
        torch_rng=torch.get_rng_state(),
    )
    if verbose:
        print(
            f"epoch {epoch + 1:3d}/{run.optim.epochs}  loss {loss:.4f}  "
            f"val score {scores['score']:.3f} (SE {scores['se']:.3f} SP {scores['sp']:.3f})"
            f"  {seconds:.0f} s" + ("  *" if improved else ""),
            flush=True,
        )
    return best


def _resume(
    path: Path, model: LungNet, optimizer: Any, scheduler: Any, generator: torch.Generator
) -> tuple[int, dict[str, Any]]:
    payload = read_checkpoint(path)
    model.load_state_dict(payload["model"], strict=True)
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    generator.set_state(payload["rng"])
    torch.set_rng_state(payload["torch_rng"])
    return int(payload["epoch"]), dict(payload["best"])


def _pretrain(
    model: LungNet, data: TrainingData, run: RunConfig, ctx: Context, verbose: bool
) -> None:
    from training.ssl import pretrain

    if data.unlabelled is None:
        raise ValueError(
            f"{run.name}: ssl.enabled needs unlabelled recordings "
            f"(dataset {run.data.dataset!r} provides none)"
        )
    losses = pretrain(model, data.unlabelled, run, rank=ctx.rank, world=ctx.world)
    if verbose and ctx.is_main:
        print(f"self-supervised pretraining: loss {losses[0]:.4f} -> {losses[-1]:.4f}")


def _write_config(run: RunConfig) -> None:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(to_mapping(run), sort_keys=False))


def _trainer(path: str, overrides: list[str] | None = None) -> str:
    """The run YAML's ``trainer`` ("sed": the frame-level model; absent: window classifier)."""
    from edge.config import apply_overrides, load_yaml

    data = apply_overrides(load_yaml(path), overrides or [], source=path)
    value = data.get("trainer", "window") if isinstance(data, dict) else "window"
    if value not in ("window", "sed"):
        raise ConfigError(f"{path}: trainer must be 'sed' or absent, got {value!r}")
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="run YAML (training/configs/*.yaml)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key, e.g. optim.epochs=3 (repeatable)",
    )
    parser.add_argument("--resume", type=Path, help="continue from a last.pt checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    if _trainer(args.config, args.set) == "sed":  # the frame-level model (training/sed_train.py)
        from edge.config import load_config
        from training.sed_train import Proto
        from training.sed_train import main as train_sed

        summary = train_sed(load_config(Proto, args.config, args.set))
        print(json.dumps(summary))
        return 0
    run = load_run_config(args.config, args.set)
    result = fit(run, args.resume, verbose=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in result.items() if k != "val"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
