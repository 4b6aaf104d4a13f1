"""The data of a training run: windows, datasets, class counts and input statistics.

Training data only: the validation split is patient-disjoint and carved from the training
folder (``train/`` for SPRSound and ICBHI); test folders are never read here. The dataset
``synthetic`` writes generated recordings in SPRSound's layout (FLAC + JSON) under the cache
folder, so the same code path runs without any real data.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import soundfile as sf

from edge.datapaths import data_root
from edge.labels import EVENT_LABELS, POOR_QUALITY, record_label_from_families
from training.config import RunConfig
from training.datasets.icbhi import IcbhiRecording, load_icbhi
from training.datasets.sprsound import SprRecord, load_sprsound, patient_disjoint_split
from training.datasets.synthetic import synthesize
from training.features_cache import FeatureStore
from training.windows import (
    Window,
    WindowDataset,
    class_counts,
    event_windows,
    feature_stats,
    icbhi_cycle_windows,
    sliding_windows,
)

T = TypeVar("T")
SYNTHETIC_SECONDS = 8.0


@dataclass
class TrainingData:
    train: WindowDataset
    val: WindowDataset
    unlabelled: WindowDataset | None  # sliding windows over training recordings (SSL)
    test: WindowDataset | None  # the held-out fold under cross-validation, else None
    class_counts: list[int]
    mean: np.ndarray  # (n_kinds, n_bands)
    std: np.ndarray


def build_training_data(run: RunConfig) -> TrainingData:
    """Windows and datasets for ``run`` (features come from the edge front end, cached)."""
    store = FeatureStore(run.features, run.kinds, Path(run.data.cache_dir) / "features")
    split = _windows(run, store)
    frames = run.data.window_frames
    train = WindowDataset(store, split.train, frames)
    mean, std = feature_stats(train)
    counts = [int(c) for c in class_counts(split.train, run.data.classes)]
    unlabelled = (
        WindowDataset(store, split.unlabelled, frames, compute_quality=False)
        if split.unlabelled
        else None
    )
    test = WindowDataset(store, split.test, frames) if split.test else None
    return TrainingData(
        train, WindowDataset(store, split.val, frames), unlabelled, test, counts, mean, std
    )


@dataclass
class _Split:
    train: list[Window]
    val: list[Window]
    test: list[Window]  # held-out fold (cross-validation only)
    unlabelled: list[Window]


def _windows(run: RunConfig, store: FeatureStore) -> _Split:
    data = run.data
    if data.dataset == "icbhi":
        items: list[Any] = _first(
            load_icbhi(data_folder(run) / "icbhi" / "train"), data.max_records
        )
        pool, test = held_out_fold(
            items, lambda r: r.patient_id, data.folds, data.fold, data.split_seed
        )
        train, val = group_split(pool, lambda r: r.patient_id, data.val_fraction, data.split_seed)
        return _Split(
            _icbhi_windows(run, train), _icbhi_windows(run, val), _icbhi_windows(run, test), []
        )
    folder = (
        _synthetic_folder(run)
        if data.dataset == "synthetic"
        else data_folder(run) / "sprsound" / "train"
    )
    records = _first(load_sprsound(folder), data.max_records)
    pool, test = held_out_fold(
        records, lambda r: r.patient_id, data.folds, data.fold, data.split_seed
    )
    train_r, val_r = patient_disjoint_split(pool, data.val_fraction, data.split_seed)
    train = _spr_windows(run, store, train_r)
    if data.train_sliding:
        train += _sliding(run, store, [r for r in train_r if r.record_label != POOR_QUALITY], False)
    return _Split(
        train,
        _spr_windows(run, store, val_r),
        _spr_windows(run, store, test),
        _sliding(run, store, train_r, keep_all=True),
    )


def held_out_fold(
    items: list[T], group_of: Callable[[T], str], folds: int, fold: int, seed: int
) -> tuple[list[T], list[T]]:
    """(pool, test): with ``folds`` > 1, the patients of fold ``fold`` (patients dealt to
    folds in a seeded random order) are held out as test; otherwise nothing is."""
    if folds < 2:
        return items, []
    order = _shuffled_groups(items, group_of, seed + 1)
    return _partition(items, group_of, set(order[fold::folds]))


def _shuffled_groups(items: Sequence[T], group_of: Callable[[T], str], seed: int) -> list[str]:
    """The distinct groups of ``items`` in a random order fixed by ``seed``."""
    groups = sorted({group_of(item) for item in items})
    return [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]


def _partition(
    items: Sequence[T], group_of: Callable[[T], str], chosen: set[str]
) -> tuple[list[T], list[T]]:
    """(items outside ``chosen`` groups, items inside), each in the original order."""
    return (
        [i for i in items if group_of(i) not in chosen],
        [i for i in items if group_of(i) in chosen],
    )


def _spr_windows(run: RunConfig, store: FeatureStore, records: list[SprRecord]) -> list[Window]:
    """Event-centred windows (Task 1), plus sliding windows of Poor Quality records when
    that is one of the classes (Task 2 needs the model to recognise them)."""
    spec = run.features
    windows = event_windows(
        records,
        run.data.classes,
        run.data.window_frames,
        spec.hop_samples,
        spec.sample_rate_hz,
        frame_samples=spec.frame_samples,
    )
    if POOR_QUALITY in run.data.classes:
        poor = [r for r in records if r.record_label == POOR_QUALITY]
        windows += _sliding(run, store, poor, keep_all=False)
    return windows


def _sliding(
    run: RunConfig, store: FeatureStore, records: list[SprRecord], keep_all: bool
) -> list[Window]:
    """Sliding windows of ``records``. ``keep_all``: unlabelled use (SSL), so every record
    and event type is kept whatever the run's classes (the labels are never read)."""
    spec = run.features
    classes = (*EVENT_LABELS, POOR_QUALITY) if keep_all else run.data.classes
    return sliding_windows(
        records,
        classes,
        run.data.window_frames,
        run.data.sliding_hop_frames,
        n_frames_of=store.n_frames,
        frame_samples=spec.frame_samples,
        hop_samples=spec.hop_samples,
        sample_rate_hz=spec.sample_rate_hz,
    )


def _icbhi_windows(run: RunConfig, recordings: list[IcbhiRecording]) -> list[Window]:
    spec = run.features
    return icbhi_cycle_windows(
        recordings,
        run.data.classes,
        run.data.window_frames,
        frame_samples=spec.frame_samples,
        hop_samples=spec.hop_samples,
        sample_rate_hz=spec.sample_rate_hz,
    )


def group_split(
    items: Sequence[T], group_of: Callable[[T], str], val_fraction: float, seed: int
) -> tuple[list[T], list[T]]:
    """Split by group (patient) so no group is on both sides; deterministic per seed."""
    order = _shuffled_groups(items, group_of, seed)
    n_val = min(len(order) - 1, max(1, round(val_fraction * len(order))))
    return _partition(items, group_of, set(order[:n_val]))


def data_folder(run: RunConfig) -> Path:
    """The data root of a run: ``data.data_dir``, else ``$LUNGWATCH_DATA_DIR`` or
    ``../shared/data``; a clear error when it is missing."""
    root = Path(run.data.data_dir) if run.data.data_dir else data_root()
    if not root.is_dir():
        raise FileNotFoundError(
            f"data folder {root} not found (set data.data_dir or "
            "LUNGWATCH_DATA_DIR, or use data.dataset=synthetic)"
        )
    return root


def _first(items: list[T], count: int) -> list[T]:
    return items[:count] if count else items


def _synthetic_folder(run: RunConfig) -> Path:
    """Write (once) ``synthetic_records`` SPRSound-style recordings: 4 patients' worth each
    of normal, wheeze, crackle and mixed records, with exact event annotations."""
    folder = Path(run.data.cache_dir) / f"synthetic-{run.data.synthetic_records}"
    if (folder / "complete").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rate = run.features.sample_rate_hz
    for i in range(run.data.synthetic_records):
        crackles, wheezes = [(0, 0), (0, 2), (3, 0), (2, 2)][i % 4]
        rec = synthesize(SYNTHETIC_SECONDS, rate, seed=i, crackles=crackles, wheezes=wheezes)
        name = f"{9000 + i // 2}_5.0_{i % 2}_p{1 + i % 4}_{i}"
        sf.write(folder / f"{name}.flac", rec.samples, rate)
        (folder / f"{name}.json").write_text(json.dumps(_annotation(rec.events)))
    (folder / "complete").touch()
    return folder


def _annotation(events: Sequence[Any]) -> dict[str, Any]:
    kinds = {e.type for e in events}
    label = record_label_from_families("Wheeze" in kinds, any("Crackle" in k for k in kinds))
    spans = [
        {"start": str(round(e.start_s * 1000)), "end": str(round(e.end_s * 1000)), "type": e.type}
        for e in events
    ]
    # Breath between events is annotated Normal, as SPRSound annotates normal cycles.
    return {
        "record_annotation": label,
        "event_annotation": spans or [{"start": "500", "end": "2500", "type": "Normal"}],
    }
