"""Research trainer of the frame-level model (SedNet), the one behind the numbers in
docs/sed-experiments.md; the YAML-configured `lungwatch train` will take it over.

    python -m training.sed_train '{"name": "base", "epochs": 20, "ema": 0.995}'
    lungwatch train --config training/configs/sed.yaml --set seed=1 --set name=base_s1

Needs the feature cache of every SPRSound train record (out/cache/features, built by
`lungwatch train` or FeatureStore) and writes out/proto/<name>/{log.jsonl,best.pt,val_probs.npy}.
Validation: patient-disjoint 20 % of SPRSound train (seed 0); each epoch sweeps the on-threshold
and scores the events with sed_eval through edge.detector.detect_events (the device's converter),
and the best epoch is kept. With `train_on_validation` the validation records join training,
the epoch `fixed_epoch` is kept instead, and the checkpoint says so: calibration, export and
distillation (``export.streaming_model.load_checkpoint(held_out=True)``) refuse it.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edge.datapaths import sprsound_root
from edge.detector import DetectorConfig, FrameGrid, detect_events
from edge.features import FEATURE_KINDS, FeatureSpec
from training.datasets.sprsound import load_sprsound, patient_disjoint_split
from training.features_cache import FeatureStore
from training.models.sed import SedConfig, SedNet, count_parameters
from training.recordings import (
    RECORD_OUTPUTS,
    Batch,
    Recording,
    collate,
    flush_value,
    random_example,
    whole_example,
)
from training.scoring import score_detection
from training.sed_margin import QualityReference, apply_margin, frame_margins
from training.targets import BREATH_INDEX, OUTPUTS

ALL_KINDS = FEATURE_KINDS


@dataclass
class Proto:
    trainer: str = "sed"  # the run YAML's switch: `lungwatch train` runs this trainer for it
    name: str = "proto"
    seed: int = 0
    kinds: tuple[str, ...] = ("logmel",)
    epochs: int = 20
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-2
    unannotated_weight: float = 0.5
    record_aware_weights: bool = False  # the record label decides unannotated class frames
    max_start_frames: int = 50
    max_frames: int = 400
    record_weight: float = 0.0
    spec_augment: bool = True
    freq_masks: int = 2
    freq_width: int = 8
    time_masks: int = 2
    time_width: int = 20
    cutmix_prob: float = 0.0
    class_weight: float = 1.0
    pos_weight_rare: float = 1.0
    pos_weight_wheeze: float = 1.0  # BCE weight of Wheeze positives (1.5 % of frames)
    # on-thresholds of the epoch selection's sweep (a model whose outputs run higher, e.g.
    # with pos_weight_wheeze, needs 0.9 to find a setting within 20 false events per hour)
    selection_on: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    model: SedConfig = field(default_factory=SedConfig)
    threads: int = 2
    ema: float = 0.0
    cutmix_frames: int = 50
    std_floor: float = 0.0  # per-band input std is at least this (log units)
    gain_db: float = 0.0  # random gain of each example, uniform in +-gain_db (power)
    # > 0: a phase loss beside the frame loss, this weight: each annotated phase's class
    # probabilities averaged over its frames (what the detector's phase mode judges) against
    # the phase's labels
    phase_weight: float = 0.5  # the shipped recipe (docs/models/sed.md); 0 turns it off
    # > 0: the quality-adaptive margin (training.sed_margin), in logits at quality 1, on the
    # class outputs' labelled BCE; it grows by quality_margin_gain x (1 - quality)
    quality_margin: float = 0.0
    quality_margin_gain: float = 1.0
    # > 0: the ICBHI train recordings (cycle labels, training.targets.cycle_targets) join the
    # training set, their frame weights scaled by this; validation stays SPRSound only
    icbhi_weight: float = 0.0
    # > 0: masked-spectrogram pretraining (HeAR-style, causal form) for this many epochs on
    # the training set's audio (labels unused; ICBHI's too with icbhi_weight) first
    pretrain_epochs: int = 0
    pretrain_mask_ratio: float = 0.4  # share of output frames masked per example
    pretrain_span: tuple[int, int] = (10, 25)  # masked span lengths, output frames (0.4-1 s)
    # knowledge distillation: checkpoints whose mean frame probabilities over each training
    # recording (whole-recording pass) become soft targets; the loss is (1 - distill_weight)
    # x the labelled loss + distill_weight x the BCE against the teachers on every frame
    teachers: tuple[str, ...] = ()
    distill_weight: float = 0.0
    # true: the validation records join training and the checkpoint is the one after epoch
    # `fixed_epoch` (chosen beforehand on a held-out run); the validation scores the run still
    # logs are then not held out, and nothing may be fitted on them
    train_on_validation: bool = False
    fixed_epoch: int = -1  # with train_on_validation: the epoch kept (-1: the last)

    def __post_init__(self) -> None:
        from edge.config import check

        w = self.distill_weight
        check(0.0 <= w <= 1.0, "distill_weight", w, "a number in [0, 1]")
        check(w == 0 or bool(self.teachers), "teachers", self.teachers,
              "one or more checkpoint paths when distill_weight > 0")  # fmt: skip
        check(-1 <= self.fixed_epoch < self.epochs, "fixed_epoch", self.fixed_epoch,
              f"-1 (the last) or an epoch in [0, epochs - 1 = {self.epochs - 1}]")  # fmt: skip
        check(self.fixed_epoch == -1 or self.train_on_validation, "fixed_epoch",
              self.fixed_epoch, "-1 unless train_on_validation is true")  # fmt: skip
        check(self.quality_margin >= 0, "quality_margin", self.quality_margin, "a number >= 0")
        check(self.quality_margin_gain >= 0, "quality_margin_gain", self.quality_margin_gain,
              "a number >= 0")  # fmt: skip


def feature_store() -> FeatureStore:
    """The on-disk feature cache every recording set of this trainer is read through."""
    return FeatureStore(FeatureSpec(), ALL_KINDS, Path("out/cache/features"))


def load_all(kinds, grid, stride, unannotated_weight, split="train", record_aware=False):
    store = feature_store()
    records = load_sprsound(sprsound_root() / split)
    from training.recordings import load_recordings

    return records, load_recordings(
        records, store, kinds, grid, stride, unannotated_weight, record_aware
    )


def load_icbhi_extra(
    kinds, grid, stride, fill, weight: float, std: np.ndarray | None = None
) -> list[Recording]:
    """The ICBHI train recordings with cycle targets, frame weights scaled by ``weight``."""
    from edge.datapaths import icbhi_root
    from training.datasets.icbhi import load_icbhi
    from training.recordings import load_icbhi_recordings

    recs = load_icbhi_recordings(
        load_icbhi(icbhi_root() / "train"), feature_store(), kinds, grid, stride, fill, std
    )
    for r in recs:
        r.weights *= np.float32(weight)
    return recs


def attach_teachers(
    recs: list[Recording], teachers: tuple[str, ...], student: SedConfig, kinds: tuple[str, ...]
) -> None:
    """Set every recording's ``soft`` to the teachers' mean frame probabilities (O, N), each
    teacher run over the whole recording as :func:`predict` does (its own input statistics and
    flush frame). A teacher must read the same kinds at the same stride and give the same
    outputs as the student; a mismatch is a :class:`~edge.errors.ConfigError` naming it."""
    from edge.errors import ConfigError
    from export.streaming_model import load_checkpoint

    total: list[np.ndarray] | None = None
    for path in teachers:
        model, t_kinds = load_checkpoint(Path(path), held_out=True)
        tc = model.config
        if tuple(t_kinds) != tuple(kinds) or tc.stride != student.stride:
            raise ConfigError(
                f"teachers: {path} reads kinds {list(t_kinds)} at stride {tc.stride}, the student "
                f"reads {list(kinds)} at stride {student.stride}"
            )
        if tc.n_outputs != student.n_outputs:
            raise ConfigError(
                f"teachers: {path} has {tc.n_outputs} outputs, the student {student.n_outputs}"
            )
        probs = predict(model, recs, flush_value(model.input_mean.numpy()))
        total = probs if total is None else [a + b for a, b in zip(total, probs, strict=True)]
    if total is None:
        raise ConfigError("teachers: no checkpoint given")
    for r, p in zip(recs, total, strict=True):
        r.soft = np.ascontiguousarray((p / len(teachers)).T, dtype=np.float32)


def mask_spans(n: int, ratio: float, span: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of ``n`` output frames: random spans (lengths in ``span``, inclusive)
    until about ``ratio`` of the frames are covered."""
    masked = np.zeros(n, dtype=bool)
    lo, hi = span
    for _ in range(4 * n):
        if masked.mean() >= ratio:
            break
        length = min(n, int(rng.integers(lo, hi + 1)))
        start = int(rng.integers(0, n - length + 1))
        masked[start : start + length] = True
    return masked


def pretrain(model: SedNet, recs: list[Recording], flush: np.ndarray, cfg: Proto, rng) -> list:
    """Masked-spectrogram pretraining of ``model``'s stems and blocks (in place).

    Spans of output frames (longer than the look-ahead, so most of a span is predicted from
    the past, as the streaming model must) are replaced by the flush frame (the training mean:
    zero after the input normalisation); a 1x1 convolution on the aligned frame embeddings
    predicts the normalised, stride-averaged input of every frame, scored by the mean squared
    error over the masked frames. The reconstruction head is dropped afterwards. Gives the
    mean loss per epoch."""
    mcfg = model.config
    stride, look = mcfg.stride, mcfg.lookahead_frames
    k, f = mcfg.n_kinds, mcfg.n_bands
    head = torch.nn.Conv1d(mcfg.channels, k * f, 1)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = math.ceil(len(recs) / cfg.batch_size) * cfg.pretrain_epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1
    )
    history = []
    for epoch in range(cfg.pretrain_epochs):
        model.train()
        t1 = time.time()
        losses = []
        perm = rng.permutation(len(recs))
        for s in range(0, len(perm), cfg.batch_size):
            exs = [
                random_example(recs[i], rng, cfg.max_start_frames, cfg.max_frames)
                for i in perm[s : s + cfg.batch_size]
            ]
            bt = collate(exs, stride, look, flush)
            n = bt.n_frames
            clean = torch.from_numpy(bt.features.copy())
            masks = np.zeros((len(exs), n), dtype=np.float32)
            for b, e in enumerate(exs):
                masks[b, : e.n] = mask_spans(e.n, cfg.pretrain_mask_ratio, cfg.pretrain_span, rng)
            hidden = np.repeat(masks > 0, stride, axis=1)  # (B, n * stride) input frames
            view = bt.features[:, :, :, : n * stride].transpose(0, 3, 1, 2)  # (B, T, K, F)
            view[hidden] = flush
            target = model.normalise(clean)[..., : n * stride]
            target = (
                target.reshape(len(exs), k, f, n, stride).mean(dim=4).reshape(len(exs), k * f, n)
            )
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
        print(f"pretrain ep {epoch} mse {history[-1]:.4f} {time.time() - t1:.0f}s", flush=True)
    return history


def frame_loss(
    logits: torch.Tensor,
    batch: Batch,
    distill_weight: float,
    pos_weight: torch.Tensor,
    output_weight: torch.Tensor,
    margins: np.ndarray | None = None,
) -> torch.Tensor:
    """The frame loss: BCE against the batch's labelled targets, weighted per frame and output
    (mean over the weights); with ``distill_weight`` > 0 and teacher probabilities in the
    batch, mixed with the BCE against them over every real frame of the examples that have
    them: ``(1 - distill_weight) * labelled + distill_weight * teachers``. ``margins``
    (B, N): the quality-adaptive margin on the class outputs of the labelled BCE
    (:mod:`training.sed_margin`)."""
    weights = torch.from_numpy(batch.weights)
    targets = torch.from_numpy(batch.targets)
    labelled = logits
    if margins is not None:
        labelled = apply_margin(logits, targets, torch.from_numpy(margins), BREATH_INDEX)
    per_frame = F.binary_cross_entropy_with_logits(
        labelled,
        targets,
        reduction="none",
        pos_weight=pos_weight[None, :, None],
    )
    loss = (per_frame * weights * output_weight[None, :, None]).sum() / weights.sum().clamp_min(1.0)
    if distill_weight > 0 and batch.soft is not None and batch.soft_mask is not None:
        m = torch.from_numpy(batch.soft_mask)[:, None, :]
        soft = F.binary_cross_entropy_with_logits(
            logits, torch.from_numpy(batch.soft), reduction="none"
        )
        soft_loss = (soft * m).sum() / (m.sum() * logits.shape[1]).clamp_min(1.0)
        loss = (1 - distill_weight) * loss + distill_weight * soft_loss
    return loss


def phase_segments(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """Segment ids (B * N,), -1 outside, of the batch's annotated phases: maximal runs of real
    frames with the Breath target on and one class-target vector; and each segment's class
    targets (S, C)."""
    classes = batch.targets[:, :BREATH_INDEX]  # (B, C, N)
    inside = (batch.targets[:, BREATH_INDEX] > 0.5) & (batch.mask > 0)  # (B, N)
    starts = inside.copy()  # a phase starts where inside begins or the class vector changes
    starts[:, 1:] &= ~inside[:, :-1] | (classes[:, :, 1:] != classes[:, :, :-1]).any(axis=1)
    ids = np.where(inside, np.cumsum(starts.reshape(-1)).reshape(inside.shape) - 1, -1)
    rows, frames = np.nonzero(starts)  # row-major: the order of the ids
    return ids.reshape(-1), classes[rows, :, frames].astype(np.float32)


def phase_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """BCE of each annotated phase's mean class probability against its labels (mean over
    phases; 0 when the batch has none)."""
    ids, labels = phase_segments(batch)
    if labels.shape[0] == 0:
        return logits.sum() * 0.0
    n_classes = labels.shape[1]
    probs = torch.sigmoid(logits[:, :n_classes]).permute(0, 2, 1).reshape(-1, n_classes)
    keep = torch.from_numpy(ids >= 0)
    index = torch.from_numpy(ids[ids >= 0])
    sums = torch.zeros(labels.shape[0], n_classes).index_add(0, index, probs[keep])
    counts = torch.zeros(labels.shape[0]).index_add(0, index, torch.ones(index.shape[0]))
    pooled = (sums / counts[:, None]).clamp(1e-6, 1 - 1e-6)
    return F.binary_cross_entropy(pooled, torch.from_numpy(labels))


def input_stats(recs: list[Recording]) -> tuple[np.ndarray, np.ndarray]:
    total = sum(r.features.shape[2] for r in recs)
    k, f = recs[0].features.shape[:2]
    s1 = np.zeros((k, f))
    s2 = np.zeros((k, f))
    for r in recs:
        x = r.features.astype(np.float64)
        s1 += x.sum(axis=2)
        s2 += (x**2).sum(axis=2)
    mean = s1 / total
    std = np.sqrt(np.maximum(s2 / total - mean**2, 1e-8))
    return mean.astype(np.float32), std.astype(np.float32)


def augment(x: np.ndarray, flush: np.ndarray, cfg: Proto, rng: np.random.Generator) -> None:
    b, _k, f, t = x.shape
    for i in range(b):
        for _ in range(cfg.freq_masks):
            w = int(rng.integers(0, cfg.freq_width + 1))
            s = int(rng.integers(0, f - w + 1))
            x[i, :, s : s + w, :] = flush[:, s : s + w, None]
        for _ in range(cfg.time_masks):
            w = int(rng.integers(0, cfg.time_width + 1))
            s = int(rng.integers(0, max(1, t - w)))
            x[i, :, :, s : s + w] = flush[:, :, None]


def random_gain(x: np.ndarray, max_db: float, rng: np.random.Generator) -> None:
    """Scale each example's power by a random gain (log features: log(P + offset), in place)."""
    offset = FeatureSpec().log_offset
    for i in range(x.shape[0]):
        g = 10.0 ** (rng.uniform(-max_db, max_db) / 10.0)
        power = np.maximum(np.exp(x[i].astype(np.float64)) - offset, 0.0)
        x[i] = np.log(power * g + offset)


def cutmix(bt, stride: int, max_frames: int, rng) -> None:
    """Time-CutMix: a random stretch of each example is replaced by one of another's."""
    b = bt.features.shape[0]
    perm = rng.permutation(b)
    n = bt.n_frames
    x0, y0, w0 = bt.features.copy(), bt.targets.copy(), bt.weights.copy()
    for i in range(b):
        j = perm[i]
        if j == i:
            continue
        length = int(rng.integers(max_frames // 4, max_frames + 1))
        length = min(length, n)
        a = int(rng.integers(0, n - length + 1))
        bt.features[i, :, :, a * stride : (a + length) * stride] = x0[
            j, :, :, a * stride : (a + length) * stride
        ]
        bt.targets[i, :, a : a + length] = y0[j, :, a : a + length]
        bt.weights[i, :, a : a + length] = w0[j, :, a : a + length]
        bt.record_targets[i] = np.maximum(bt.record_targets[i], bt.record_targets[j])


def split_records(
    recs: list[Recording], val_ids: set[str], train_on_validation: bool
) -> tuple[list[Recording], list[Recording]]:
    """(training, validation) recordings: validation is ``val_ids``; with
    ``train_on_validation`` it joins training too (its scores are then not held out)."""
    val = [r for r in recs if r.record_id in val_ids]
    train = [r for r in recs if r.record_id not in val_ids]
    return (train + val if train_on_validation else train), val


NOTHING_KEPT = -1.0  # the selection's best before the first epoch


def validation_ids(records: list) -> set[str]:
    """Record ids of the validation split: 20 % of the patients, seed 0 (every run's)."""
    return {r.record_id for r in patient_disjoint_split(records, 0.2, 0)[1]}


def kept_best(cfg: Proto, epoch: int, score: float, best: float) -> float | None:
    """The selection's new best when ``epoch`` (validation ``score``) is kept over the epochs
    before it (best so far ``best``, :data:`NOTHING_KEPT` at first); None when it is not.
    The selection maximises the validation score (the first epoch reaching the best is kept),
    or with ``train_on_validation`` 1 for ``fixed_epoch`` (-1: the last) and -1 for every
    other epoch, which no epoch's score beats."""
    value = score
    if cfg.train_on_validation:
        keep = cfg.fixed_epoch if cfg.fixed_epoch >= 0 else cfg.epochs - 1
        value = 1.0 if epoch == keep else -1.0
    return value if value > best else None


def recording_seconds(n_frames: int, spec: FeatureSpec) -> float:
    """Audio length behind ``n_frames`` front-end frames."""
    samples = (n_frames - 1) * spec.hop_samples + spec.frame_samples
    return samples / spec.sample_rate_hz


def predict(
    model: SedNet, recs: list[Recording], flush: np.ndarray, batch: int = 32
) -> list[np.ndarray]:
    model.eval()
    out = []
    cfg = model.config
    with torch.no_grad():
        order = sorted(range(len(recs)), key=lambda i: recs[i].n_frames)
        res: dict[int, np.ndarray] = {}
        for s in range(0, len(order), batch):
            idx = order[s : s + batch]
            bt = collate(
                [whole_example(recs[i]) for i in idx], cfg.stride, cfg.lookahead_frames, flush
            )
            logits, _ = model.forward_train(torch.from_numpy(bt.features), bt.n_frames)
            p = torch.sigmoid(logits).numpy()
            for j, i in enumerate(idx):
                res[i] = p[j, :, : recs[i].n_frames].T.copy()  # (n, O)
        out = [res[i] for i in range(len(recs))]
    return out


def evaluate(probs, recs, grid, det: DetectorConfig):
    pred, ann, labels, durs = {}, {}, {}, {}
    for p, r in zip(probs, recs, strict=False):
        evs = detect_events(p, OUTPUTS, det, grid)
        rate = grid.sample_rate_hz
        pred[r.record_id] = [(e.start_sample / rate, e.end_sample / rate, e.type) for e in evs]
        ann[r.record_id] = list(r.events)
        labels[r.record_id] = r.label
        durs[r.record_id] = recording_seconds(r.features.shape[2], FeatureSpec())
    return score_detection(pred, ann, labels, durs)


def sweep(probs, recs, grid, ons=(0.3, 0.4, 0.5, 0.6, 0.7, 0.8), min_ms=120.0, gap_ms=120.0):
    rows = []
    for on in ons:
        det = DetectorConfig(
            on_threshold=on,
            off_threshold=max(0.05, on - 0.15),
            min_event_ms=min_ms,
            merge_gap_ms=gap_ms,
        )
        rep = evaluate(probs, recs, grid, det).summary()
        rows.append((on, rep))
    return rows


def frame_auc(probs, recs):
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


def main(cfg: Proto) -> dict:
    """Train, keep the epoch the validation selects (or ``fixed_epoch`` with
    ``train_on_validation``); the kept epoch's summary (``held_out``: whether its validation
    scores are)."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    mcfg = replace(
        cfg.model,
        n_kinds=len(cfg.kinds),
        n_outputs=len(OUTPUTS),
        record_outputs=len(RECORD_OUTPUTS) if cfg.record_weight > 0 else 0,
    )
    spec = FeatureSpec()
    grid = FrameGrid.of(spec.sample_rate_hz, spec.hop_samples, spec.frame_samples, mcfg.stride)
    t0 = time.time()
    records, recs = load_all(
        cfg.kinds, grid, mcfg.stride, cfg.unannotated_weight, record_aware=cfg.record_aware_weights
    )
    train, val = split_records(recs, validation_ids(records), cfg.train_on_validation)
    print(f"loaded {len(train)} train {len(val)} val in {time.time() - t0:.0f}s", flush=True)
    mean, std = input_stats(train)
    std = np.maximum(std, np.float32(cfg.std_floor))
    flush = flush_value(mean)
    if cfg.distill_weight > 0:  # SPRSound's training records (ICBHI's get no soft targets)
        t_teach = time.time()
        attach_teachers(train, cfg.teachers, mcfg, cfg.kinds)
        print(f"{len(cfg.teachers)} teachers in {time.time() - t_teach:.0f}s", flush=True)
    if cfg.icbhi_weight > 0:
        # brought into SPRSound's per-band range (training.recordings.match_domain)
        extra = load_icbhi_extra(cfg.kinds, grid, mcfg.stride, flush, cfg.icbhi_weight, std)
        print(f"+ {len(extra)} ICBHI recordings (weight {cfg.icbhi_weight})", flush=True)
        train = train + extra
    reference = (
        QualityReference.fit([r.features for r in train]) if cfg.quality_margin > 0 else None
    )
    model = SedNet(mcfg)
    model.set_input_stats(torch.from_numpy(mean), torch.from_numpy(std))
    print("params", count_parameters(model), "state", model.state_size, flush=True)
    if cfg.pretrain_epochs > 0:
        pretrain(model, train, flush, cfg, rng)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=total, pct_start=0.1
    )
    out_w = torch.ones(len(OUTPUTS))
    out_w[:5] = cfg.class_weight
    pos_w = torch.ones(len(OUTPUTS))
    for name in ("Coarse Crackle", "Rhonchi", "Stridor"):
        pos_w[OUTPUTS.index(name)] = cfg.pos_weight_rare
    pos_w[OUTPUTS.index("Wheeze")] = cfg.pos_weight_wheeze
    import copy

    ema = copy.deepcopy(model) if cfg.ema > 0 else None
    run_dir = Path("out/proto") / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    log = (run_dir / "log.jsonl").open("w")
    best = NOTHING_KEPT
    summary: dict = {}
    for epoch in range(cfg.epochs):
        model.train()
        t1 = time.time()
        perm = rng.permutation(len(train))
        losses = []
        for s in range(0, len(perm), cfg.batch_size):
            exs = [
                random_example(train[i], rng, cfg.max_start_frames, cfg.max_frames)
                for i in perm[s : s + cfg.batch_size]
            ]
            bt = collate(exs, mcfg.stride, mcfg.lookahead_frames, flush)
            if cfg.cutmix_prob > 0 and rng.random() < cfg.cutmix_prob:
                cutmix(bt, mcfg.stride, cfg.cutmix_frames, rng)
            margins = None
            if reference is not None:  # measured on the input before any augmentation
                margins = frame_margins(bt.features, reference, mcfg.stride, bt.n_frames,
                                        cfg.quality_margin, cfg.quality_margin_gain)  # fmt: skip
            if cfg.gain_db > 0:
                random_gain(bt.features, cfg.gain_db, rng)
            if cfg.spec_augment:
                augment(bt.features, flush, cfg, rng)
            x = torch.from_numpy(bt.features)
            logits, rec_logits = model.forward_train(x, bt.n_frames, torch.from_numpy(bt.mask))
            loss = frame_loss(logits, bt, cfg.distill_weight, pos_w, out_w, margins)
            if cfg.phase_weight > 0:
                loss = loss + cfg.phase_weight * phase_loss(logits, bt)
            if rec_logits is not None:
                loss = loss + cfg.record_weight * F.binary_cross_entropy_with_logits(
                    rec_logits, torch.from_numpy(bt.record_targets)
                )
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            if ema is not None:
                with torch.no_grad():
                    for pe, pm in zip(ema.parameters(), model.parameters(), strict=False):
                        pe.mul_(cfg.ema).add_(pm.detach(), alpha=1 - cfg.ema)
                    for be, bm in zip(ema.buffers(), model.buffers(), strict=False):
                        be.copy_(bm)
            losses.append(float(loss.detach()))
        tt = time.time() - t1
        evaluated = ema if ema is not None else model
        probs = predict(evaluated, val, flush)
        aps = frame_auc(probs, val)
        rows = sweep(probs, val, grid, cfg.selection_on)
        ok = [r for r in rows if r[1]["false_events_per_hour"] <= 20]
        sel = (
            max(ok, key=lambda r: r[1]["event_f1_family"])
            if ok
            else min(rows, key=lambda r: r[1]["false_events_per_hour"])
        )
        bestrow = max(rows, key=lambda r: r[1]["event_f1_family"])
        rec = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "train_s": tt,
            "eval_s": time.time() - t1 - tt,
            "ap": aps,
            "sel_on": sel[0],
            "sel": sel[1],
            "best_on": bestrow[0],
            "best": bestrow[1],
        }
        log.write(json.dumps(rec) + "\n")
        log.flush()
        print(
            f"ep {epoch} loss {rec['loss']:.4f} {tt:.0f}s | AP "
            + " ".join(f"{k[:6]}={v:.2f}" for k, v in aps.items())
            + f" | @FA<=20 on={sel[0]} F1={sel[1]['event_f1_family']:.3f}"
            + f" seg={sel[1]['segment_f1_family']:.3f} FA={sel[1]['false_events_per_hour']:.0f}"
            + f" | best on={bestrow[0]} F1={bestrow[1]['event_f1_family']:.3f}"
            + f" FA={bestrow[1]['false_events_per_hour']:.0f}",
            flush=True,
        )
        new_best = kept_best(cfg, epoch, sel[1]["event_f1_family"] if ok else 0.0, best)
        if new_best is not None:
            best = new_best
            torch.save(
                {
                    "model": evaluated.state_dict(),
                    "config": asdict(mcfg),
                    "kinds": list(cfg.kinds),
                    "mean": mean,
                    "std": std,
                    "epoch": epoch,
                    "train_on_validation": cfg.train_on_validation,
                },
                run_dir / "best.pt",
            )
            np.save(run_dir / "val_probs.npy", np.array(probs, dtype=object), allow_pickle=True)
            summary = {"checkpoint": str(run_dir / "best.pt"), "epoch": epoch, "on": sel[0]}
            summary["held_out"] = not cfg.train_on_validation
            summary |= {k: sel[1][k] for k in SUMMARY_KEYS if k in sel[1]}
    if cfg.train_on_validation:
        print(f"kept epoch {summary.get('epoch')}: validation trained on, not held out")
    else:
        print("best", best)
    return summary


SUMMARY_KEYS = (
    "event_f1_family",
    "segment_f1_family",
    "false_events_per_hour",
    "normal_records_with_false_events",
)


if __name__ == "__main__":
    overrides = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    m = overrides.pop("model", {})
    for key in ("dilations", "kernel_widths"):
        if key in m:
            m[key] = tuple(m[key])
    if "kinds" in overrides:
        overrides["kinds"] = tuple(overrides["kinds"])
    main(Proto(**overrides, model=SedConfig(**m)))
