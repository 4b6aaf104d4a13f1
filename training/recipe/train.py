"""``lungwatch train --config training/configs/sed.yaml [--set key=value ...]``: the recipe.

From the recordings to a checkpoint the export reads, in one run: the steps, the outputs
under ``<out_dir>/<name>/`` and the options are in docs/training.md, "train".
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from edge.bed.detector import FrameGrid
from edge.datapaths import sprsound_root
from lungwatch.cli import ArgumentParser
from lungwatch.config import to_mapping
from training.data.features import FeatureStore
from training.data.icbhi import IcbhiRecording, training_share
from training.data.recordings import (
    Recording,
    collate,
    flush_value,
    load_icbhi_recordings,
    load_recordings,
    random_example,
    whole_example,
)
from training.data.sprsound import load_sprsound, patient_disjoint_split
from training.data.targets import OUTPUTS
from training.models.checkpoint import Checkpoint, save_checkpoint
from training.models.sed import SedNet, count_parameters
from training.recipe.augment import patch_mix, spec_augment
from training.recipe.config import RunConfig, load_run
from training.recipe.fit import events_of, fit_rules, fit_start, frame_grid, recording_truth
from training.recipe.inputs import InputView, Transform
from training.recipe.losses import distill_loss, frame_loss, phase_loss
from training.recipe.margin import QualityReference, frame_margins
from training.recipe.pretrain import pretrain
from training.scoring.detection import score_detection

SUMMARY_KEYS = ("macro_f1", "f1_cas", "f1_das", "fa_per_hour_cas", "fa_per_hour_das")
FAMILIES = ("CAS", "DAS")
PREDICT_BATCH = 32  # recordings per forward pass of predict


@dataclass
class TrainingData:
    train: list[Recording]
    val: list[Recording]
    mean: np.ndarray  # (K, F) per-band input statistics of the training recordings
    std: np.ndarray
    grid: FrameGrid
    view: InputView  # the stored features -> the model's input

    @property
    def flush(self) -> np.ndarray:
        return flush_value(self.mean)


def load_data(run: RunConfig) -> TrainingData:
    records = load_sprsound(sprsound_folder(run))
    store = feature_store(run)
    recs = load_recordings(
        records, store, run.kinds, frame_grid(run), run.model.stride, run.data.unannotated_weight
    )
    _, val_records = patient_disjoint_split(records, run.data.val_fraction, run.data.split_seed)
    held_out = {r.record_id for r in val_records}
    icbhi = training_share(run.data.icbhi_dir, run.data.icbhi_fraction, run.data.icbhi_seed)
    return training_data(run, store, recs, held_out, icbhi)


def sprsound_folder(run: RunConfig) -> Path:
    return Path(run.data.train_dir) if run.data.train_dir else sprsound_root() / "train"


def feature_store(run: RunConfig) -> FeatureStore:
    """Caches the run's kinds only (computing every kind for a log-mel run costs minutes)."""
    raw = InputView.raw_spec(run.features)
    return FeatureStore(raw, run.kinds, Path(run.data.cache_dir) / "features")


def training_data(
    run: RunConfig,
    store: FeatureStore,
    recs: list[Recording],
    held_out: set[str],
    icbhi: tuple[list[IcbhiRecording], set[str]],
) -> TrainingData:
    """``held_out``: ``val``'s record ids; ``icbhi``: recordings and their patients that train."""
    grid, stride = frame_grid(run), run.model.stride
    train = [r for r in recs if r.record_id not in held_out]
    val = [r for r in recs if r.record_id in held_out]
    view = InputView(run.features, run.kinds)
    mean, std = input_stats(train, view.transform)  # of real recordings only
    recordings, chosen = icbhi
    mine = [r for r in recordings if r.patient_id in chosen]
    train += load_icbhi_recordings(mine, store, run.kinds, grid, stride)
    return TrainingData(train, val, mean, std, grid, view)


def input_stats(
    recs: list[Recording], transform: Transform | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (K, F) over every frame of ``recs`` as the model sees them (``transform``)."""
    total = sum(r.features.shape[2] for r in recs)
    k, f = recs[0].features.shape[:2]
    s1 = np.zeros((k, f))
    s2 = np.zeros((k, f))
    for r in recs:
        x = (r.features if transform is None else transform(r.features)).astype(np.float64)
        s1 += x.sum(axis=2)
        s2 += (x**2).sum(axis=2)
    mean = s1 / total
    std = np.sqrt(np.maximum(s2 / total - mean**2, 1e-8))
    return mean.astype(np.float32), std.astype(np.float32)


def predict(
    model: SedNet, recs: list[Recording], flush: np.ndarray, transform: Transform | None = None
) -> list[np.ndarray]:
    """Every recording's frame probabilities (n, O), each as one stream from its start (the
    whole-recording pass, which equals the device's chunked one)."""
    model.eval()
    cfg = model.config
    order = sorted(range(len(recs)), key=lambda i: recs[i].n_frames)
    res: dict[int, np.ndarray] = {}
    with torch.no_grad():
        for s in range(0, len(order), PREDICT_BATCH):
            idx = order[s : s + PREDICT_BATCH]
            examples = [whole_example(recs[i]) for i in idx]
            bt = collate(examples, cfg.stride, cfg.lookahead_frames, flush, transform)
            x = torch.from_numpy(bt.features).to(model.input_mean.device)
            p = torch.sigmoid(model.forward_train(x, bt.n_frames)).cpu()
            for j, i in enumerate(idx):
                res[i] = p[j, :, : recs[i].n_frames].numpy().T.copy()  # (n, O)
    return [res[i] for i in range(len(recs))]


def select(
    probs: list[np.ndarray], recs: list[Recording], data: TrainingData, run: RunConfig
) -> tuple[dict[str, float], dict[str, Any], bool]:
    """The epoch's selection (docs/training.md, "train", step 4): the families' thresholds,
    the summary at them with ``macro_f1``, and whether every family is within budget."""
    ids = [r.record_id for r in recs]
    truth = recording_truth(recs, run.features)
    reports = {}
    for on in run.selection.on_thresholds:
        det = dataclasses.replace(
            fit_start(run), on_threshold=on, off_threshold=max(0.05, on - 0.15)
        )
        reports[on] = score_detection(events_of(probs, ids, OUTPUTS, det, data.grid), *truth)
    budget = run.selection.max_false_per_hour
    chosen: dict[str, float] = {}
    summary: dict[str, Any] = {}
    within = True
    for family in FAMILIES:
        fa = {on: r.families[family].false_events_per_hour for on, r in reports.items()}
        ok = [on for on in reports if fa[on] <= budget]
        within &= bool(ok)
        if ok:
            on = max(ok, key=lambda v: reports[v].families[family].event_f1)
        else:
            on = min(fa, key=lambda v: fa[v])
        chosen[family] = on
        scores = reports[on].families[family]
        key = family.lower()
        summary |= {f"on_{key}": on, f"f1_{key}": scores.event_f1 if ok else 0.0,
                    f"recall_{key}": scores.event_recall, f"fa_per_hour_{key}": fa[on]}  # fmt: skip
    summary["macro_f1"] = float(np.mean([summary[f"f1_{f.lower()}"] for f in FAMILIES]))
    return chosen, summary, within


def frame_ap(probs: list[np.ndarray], recs: list[Recording]) -> dict[str, float]:
    """Average precision of each output over the validation frames of known target."""
    from sklearn.metrics import average_precision_score

    out = {}
    for c, name in enumerate(OUTPUTS):
        y = np.concatenate([r.targets[c] >= 0.5 for r in recs])
        w = np.concatenate([r.weights[c] for r in recs])
        p = np.concatenate([pp[:, c] for pp in probs])
        keep = w > 0
        if y[keep].sum() > 0:
            out[name] = float(average_precision_score(y[keep], p[keep]))
    return out


def train_epoch(
    model: SedNet,
    data: TrainingData,
    run: RunConfig,
    opt: Any,
    sched: Any,
    reference: QualityReference | None,
    rng: np.random.Generator,
) -> float:
    model.train()
    mcfg, cfg = model.config, run.data
    view = data.view.transform
    perm = rng.permutation(len(data.train))
    losses = []
    for s in range(0, len(perm), run.optim.batch_size):
        exs = [
            random_example(data.train[i], rng, cfg.max_start_frames, cfg.max_frames)
            for i in perm[s : s + run.optim.batch_size]
        ]
        bt = collate(exs, mcfg.stride, mcfg.lookahead_frames, data.flush, view)
        aug = run.augment
        if aug.patch_mix_prob > 0 and rng.random() < aug.patch_mix_prob:
            patch_mix(bt, mcfg.stride, aug.patch_mix_frames, rng)
        margins = None
        if reference is not None:  # measured on the input before the masks
            margins = frame_margins(
                bt.features,
                reference,
                mcfg.stride,
                bt.n_frames,
                run.loss.quality_margin,
                run.loss.quality_margin_gain,
            )
        if aug.spec_augment:
            spec_augment(bt.features, data.flush, aug, rng)
        device = model.input_mean.device
        x = torch.from_numpy(bt.features).to(device)
        logits = model.forward_train(x, bt.n_frames)
        loss = frame_loss(logits, bt, margins)
        if run.loss.phase_weight > 0:
            loss = loss + run.loss.phase_weight * phase_loss(logits, bt)
        if run.distill.weight > 0:
            taught = run.distill.weight
            loss = (1.0 - taught) * loss + taught * distill_loss(logits, bt)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


@dataclass
class Kept:
    epoch: int = -1
    score: float = -1.0
    state: dict[str, torch.Tensor] | None = None
    summary: dict[str, Any] | None = None
    probs: list[np.ndarray] | None = None


def train(
    run: RunConfig,
    model: SedNet,
    data: TrainingData,
    rng: np.random.Generator,
    choose_epoch: bool = True,
    log_path: Path | None = None,
) -> Kept:
    """The supervised epochs; ``choose_epoch=False`` judges nothing between them and keeps the
    last (cross-validation, whose held-out records must not choose anything)."""
    opt = torch.optim.AdamW(
        model.parameters(), lr=run.optim.lr, weight_decay=run.optim.weight_decay
    )
    steps = math.ceil(len(data.train) / run.optim.batch_size) * run.optim.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=run.optim.lr, total_steps=steps, pct_start=run.optim.warmup
    )
    reference = None
    if run.loss.quality_margin > 0:
        view = data.view.transform  # measured on what the model sees
        reference = QualityReference.fit(
            [r.features if view is None else view(r.features) for r in data.train]
        )
    kept = Kept()
    with (log_path or run.run_dir / "log.jsonl").open("w") as log:
        for epoch in range(run.optim.epochs):
            t0 = time.time()
            loss = train_epoch(model, data, run, opt, sched, reference, rng)
            t1 = time.time()
            if not choose_epoch:
                log.write(json.dumps({"epoch": epoch, "loss": loss, "train_s": t1 - t0}) + "\n")
                log.flush()
                print(f"epoch {epoch} loss {loss:.4f} {t1 - t0:.0f} s", flush=True)
                continue
            probs = predict(model, data.val, data.flush, transform=data.view.transform)
            ons, summary, ok = select(probs, data.val, data, run)
            record = {
                "epoch": epoch,
                "loss": loss,
                "train_s": t1 - t0,
                "eval_s": time.time() - t1,
                "ap": frame_ap(probs, data.val),
                "on": ons,
                "within_budget": ok,
                "validation": summary,
            }
            log.write(json.dumps(record) + "\n")
            log.flush()
            value = summary["macro_f1"]
            print(
                f"epoch {epoch} loss {loss:.4f} {t1 - t0:.0f} s | macro F1 {value:.3f}: CAS "
                f"{summary['f1_cas']:.3f} (on {ons['CAS']}) DAS {summary['f1_das']:.3f} "
                f"(on {ons['DAS']}) | AP {json.dumps(record['ap'])}",
                flush=True,
            )
            if value > kept.score:  # the first epoch reaching the best is kept
                kept = Kept(epoch, value, copy.deepcopy(model.state_dict()), summary, probs)
    if not choose_epoch:
        kept = Kept(run.optim.epochs - 1, 0.0, copy.deepcopy(model.state_dict()), {}, None)
    return kept


def new_model(
    run: RunConfig, data: TrainingData, rng: np.random.Generator, device: str = "cpu"
) -> SedNet:
    model = SedNet(run.sed_config(len(OUTPUTS)))
    model.set_input_stats(torch.from_numpy(data.mean), torch.from_numpy(data.std))
    model.to(device)
    print(f"{count_parameters(model):,} parameters, state {model.state_size} floats", flush=True)
    if run.pretrain.epochs > 0:
        pretrain(model, data.train, data.flush, run, rng, data.view.transform)
    return model


def fit(run: RunConfig) -> dict[str, Any]:
    torch.manual_seed(run.seed)
    np.random.seed(run.seed)
    torch.set_num_threads(run.threads)
    rng = np.random.default_rng(run.seed)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(to_mapping(run), sort_keys=False))
    t0 = time.time()
    data = load_data(run)
    if run.distill.weight > 0:  # every fold model of the teacher's design teaches
        from training.cv.teacher import attach, teacher_outputs

        soft = teacher_outputs(Path(run.distill.teacher), None, run.distill.temperature)
        attach([r for r in data.train if r.label != "icbhi"], soft, "sprsound")
        attach([r for r in data.train if r.label == "icbhi"], soft, "icbhi")
    print(
        f"{len(data.train)} training, {len(data.val)} validation recordings "
        f"({time.time() - t0:.0f} s)",
        flush=True,
    )
    model = new_model(run, data, rng)
    kept = train(run, model, data, rng)
    if kept.state is None or kept.probs is None:
        raise RuntimeError("no epoch was trained")
    model.load_state_dict(kept.state)
    detector = fit_rules(kept.probs, data.val, data.grid, run)
    ckpt = Checkpoint(
        model.eval(),
        run.features,
        run.kinds,
        OUTPUTS,
        name=run.name,
        epoch=kept.epoch,
        run=to_mapping(run),
        detector=detector,
        quality={"poor_on": run.quality.poor_on, "poor_off": run.quality.poor_off},
        validation=kept.summary or {},
        icbhi_patients=tuple(sorted({r.patient_id for r in data.train if r.label == "icbhi"})),
    )
    path = save_checkpoint(run.run_dir / "best.pt", ckpt)
    val_probs: dict[str, Any] = {r.record_id: p for r, p in zip(data.val, kept.probs, strict=True)}
    np.savez_compressed(run.run_dir / "val_probs.npz", **val_probs)
    summary = {"checkpoint": str(path), "epoch": kept.epoch}
    summary |= {k: kept.summary[k] for k in SUMMARY_KEYS if kept.summary and k in kept.summary}
    summary["fitted"] = detector["validation"]
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch train", description=__doc__)
    parser.add_argument("--config", required=True, type=Path, help="run YAML (training/configs)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key, e.g. optim.epochs=3 (repeatable)",
    )
    args = parser.parse_args(argv)
    summary = fit(load_run(args.config, args.set))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
