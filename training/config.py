"""A training run is one YAML file plus ``--set key=value`` overrides, saved with its result.

Sections: ``features`` (the FeatureSpec; ``kinds`` lists the spectrogram branches),
``data``, ``model``, ``augment``, ``loss``, ``optim``, ``ssl``. The model's input and output
sizes are derived from the other sections (:meth:`RunConfig.model_config`), never repeated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edge.config import check, load_config
from edge.features import FEATURE_KINDS, FeatureSpec
from edge.labels import EVENT_LABELS, ICBHI_LABELS, POOR_QUALITY
from training.models import ModelConfig

DEFAULT_CLASSES: tuple[str, ...] = (*EVENT_LABELS, POOR_QUALITY)


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["sprsound", "icbhi", "synthetic"] = "sprsound"
    data_dir: str | None = None  # None: $LUNGWATCH_DATA_DIR, else ../shared/data
    classes: tuple[str, ...] = DEFAULT_CLASSES
    val_fraction: float = 0.2  # patient-disjoint validation carved from the training data
    split_seed: int = 0
    window_frames: int = 200
    sliding_hop_frames: int = 50
    # Also train on sliding windows (every ``sliding_hop_frames``) of every training record,
    # labelled by overlap with the annotated events, as Task 2 and detection see the audio.
    train_sliding: bool = False
    max_records: int = 0  # 0: all; > 0 keeps the first N records (tiny runs and tests)
    folds: int = 0  # > 1: patient-grouped cross-validation, fold ``fold`` held out as test
    fold: int = 0
    synthetic_records: int = 24  # dataset "synthetic" only
    cache_dir: str = "out/cache"

    def __post_init__(self) -> None:
        check(0.0 < self.val_fraction < 0.5, "val_fraction", self.val_fraction, "in (0, 0.5)")
        check(self.window_frames >= 16, "window_frames", self.window_frames, "an integer >= 16")
        check(
            self.sliding_hop_frames >= 1,
            "sliding_hop_frames",
            self.sliding_hop_frames,
            "an integer >= 1",
        )
        check(self.max_records >= 0, "max_records", self.max_records, "an integer >= 0")
        check(self.folds == 0 or self.folds >= 2, "folds", self.folds, "0 (off) or >= 2")
        check(0 <= self.fold < max(self.folds, 1), "fold", self.fold, f"in [0, folds={self.folds})")
        check(
            len(set(self.classes)) == len(self.classes) >= 2,
            "classes",
            self.classes,
            "at least two distinct class names",
        )
        vocabulary = ICBHI_LABELS if self.dataset == "icbhi" else DEFAULT_CLASSES
        for name in self.classes:
            check(name in vocabulary, "classes", name, f"one of {vocabulary}")


@dataclass(frozen=True)
class AugmentConfig:
    spec_augment: bool = True
    time_masks: int = 2
    time_width: int = 20
    freq_masks: int = 2
    freq_width: int = 8
    mixup_alpha: float = 0.0  # 0: off
    patch_mix: bool = False
    patch_mix_prob: float = 0.5  # probability a batch is Patch-Mixed
    patch_bands: int = 16
    patch_frames: int = 20

    def __post_init__(self) -> None:
        check(self.mixup_alpha >= 0.0, "mixup_alpha", self.mixup_alpha, "a number >= 0")
        check(0.0 <= self.patch_mix_prob <= 1.0, "patch_mix_prob", self.patch_mix_prob, "in [0, 1]")


@dataclass(frozen=True)
class LossConfig:
    kind: Literal["ce", "multi_objective", "qlung"] = "multi_objective"
    class_weight_power: float = 0.5  # 0: unweighted; 1: inverse frequency
    binary_weight: float = 0.5  # multi-objective: normal-vs-adventitious head
    label_smoothing: float = 0.0
    contrastive_weight: float = 0.0  # Patch-Mix contrastive term (needs augment.patch_mix)
    contrastive_temperature: float = 0.07
    base_margin: float = 0.2  # qlung
    quality_gain: float = 1.0  # qlung: margin grows by this factor as quality falls to 0
    imbalance_gain: float = 0.0  # qlung: log-scaled margin for rare classes

    def __post_init__(self) -> None:
        check(
            self.class_weight_power >= 0.0,
            "class_weight_power",
            self.class_weight_power,
            "a number >= 0",
        )
        check(
            0.0 <= self.label_smoothing < 0.5,
            "label_smoothing",
            self.label_smoothing,
            "in [0, 0.5)",
        )
        check(
            self.contrastive_weight >= 0.0,
            "contrastive_weight",
            self.contrastive_weight,
            "a number >= 0",
        )


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-2
    warmup_epochs: int = 1
    threads: int = 2  # torch intra-op threads per process
    select_metric: Literal["score", "loss"] = "score"  # on the validation split, never test

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        check(self.batch_size >= 2, "batch_size", self.batch_size, "an integer >= 2")
        check(self.lr > 0.0, "lr", self.lr, "a number > 0")
        check(self.threads >= 1, "threads", self.threads, "an integer >= 1")


@dataclass(frozen=True)
class SslConfig:
    enabled: bool = False
    epochs: int = 5
    lr: float = 1e-3
    mask_ratio: float = 0.6
    patch_frames: int = 8

    def __post_init__(self) -> None:
        check(0.0 < self.mask_ratio < 1.0, "mask_ratio", self.mask_ratio, "in (0, 1)")


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    seed: int = 0
    out_dir: str = "out/runs"
    features: FeatureSpec = field(default_factory=FeatureSpec)
    kinds: tuple[str, ...] = ("logmel",)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ssl: SslConfig = field(default_factory=SslConfig)

    def __post_init__(self) -> None:
        check(
            len(self.kinds) >= 1 and len(set(self.kinds)) == len(self.kinds),
            "kinds",
            self.kinds,
            "one or more distinct feature kinds",
        )
        for kind in self.kinds:
            check(kind in FEATURE_KINDS, "kinds", kind, f"one of {FEATURE_KINDS}")
        qlung = self.loss.kind == "qlung"
        check(
            qlung == (self.model.head == "cosine"),
            "model.head",
            self.model.head,
            "'cosine' exactly when loss.kind is 'qlung'",
        )

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def model_config(self) -> ModelConfig:
        """The model section with sizes derived from the features, kinds and classes."""
        return dataclasses.replace(
            self.model,
            n_branches=len(self.kinds),
            n_bands=self.features.n_bands,
            n_frames=self.data.window_frames,
            n_classes=len(self.data.classes),
        )


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load and validate a run config; errors name the file and the dotted key."""
    return load_config(RunConfig, path, overrides)
