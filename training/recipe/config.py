"""The run configuration of ``lungwatch train``: one YAML file plus ``--set`` overrides. Every
key is commented in ``training/configs/sed.yaml``, the shipped recipe. The resolved run is saved
beside its checkpoint and inside it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt

from edge.features import FEATURE_KINDS, FeatureSpec
from lungwatch.config import Settings, Share, check, load_config
from training.models.sed import SedConfig


@dataclass(frozen=True)
class DataConfig(Settings):
    train_dir: str = ""  # SPRSound-layout folder; "": <data root>/sprsound/train
    cache_dir: str = "out/cache"  # feature cache (one file per recording and FeatureSpec)
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2  # patient-disjoint validation share
    split_seed: int = 0  # which patients validate (every seed of a recipe shares one split)
    unannotated_weight: Share = 0.5  # weight of frames outside every annotated phase
    max_start_frames: NonNegativeInt = 50  # crops start within 2 s: the model sees stream starts
    max_frames: PositiveInt = 400  # crops of at most 16 s (output frames)
    # ICBHI as training material (docs/training.md, "data.icbhi_fraction")
    icbhi_dir: str = ""  # ICBHI-layout folder; "": <data root>/icbhi/train
    icbhi_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0
    icbhi_seed: int = 0


@dataclass(frozen=True)
class OptimConfig(Settings):
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 16  # recordings per step
    lr: PositiveFloat = 2e-3  # AdamW peak learning rate (one-cycle schedule)
    warmup: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1  # share of steps warming up the lr
    weight_decay: NonNegativeFloat = 1e-2


@dataclass(frozen=True)
class AugmentConfig(Settings):
    spec_augment: bool = True  # frequency and time masks, filled with the training mean
    freq_masks: NonNegativeInt = 2
    freq_width: NonNegativeInt = 8  # bands, at most
    time_masks: NonNegativeInt = 2
    time_width: NonNegativeInt = 20  # front-end frames, at most
    patch_mix_prob: Share = 0.0  # Patch-Mix: share of batches that swap time patches
    patch_mix_frames: PositiveInt = 50  # longest patch, output frames


@dataclass(frozen=True)
class LossConfig(Settings):
    phase_weight: NonNegativeFloat = 0.5  # + this x BCE of each annotated phase's mean class output
    quality_margin: NonNegativeFloat = 0.0  # > 0: QLung-style quality-adaptive margin (logits)
    quality_margin_gain: NonNegativeFloat = 1.0  # the margin grows by this x (1 - quality)


@dataclass(frozen=True)
class DistillConfig(Settings):
    teacher: str = ""  # a cross-validated design's folder whose fold models teach; "": none
    weight: Share = 0.0  # loss = (1 - weight) x the label losses + weight x the teacher's
    temperature: PositiveFloat = 1.0  # < 1 sharpens the averaged teacher outputs

    def __post_init__(self) -> None:
        check(
            self.weight == 0 or bool(self.teacher), "teacher", self.teacher,
            "a design folder when weight > 0",
        )  # fmt: skip


@dataclass(frozen=True)
class PretrainConfig(Settings):
    epochs: NonNegativeInt = 0  # masked-spectrogram pretraining epochs before the supervised ones
    mask_ratio: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.4  # output frames masked per example
    span: tuple[int, int] = (10, 25)  # masked span lengths, output frames

    def __post_init__(self) -> None:
        lo, hi = self.span
        check(1 <= lo <= hi, "span", self.span, "[low, high] with 1 <= low <= high")


@dataclass(frozen=True)
class SelectionConfig(Settings):
    # how the epoch is kept: docs/training.md, "train", step 4
    on_thresholds: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    max_false_per_hour: PositiveFloat = 10.0

    def __post_init__(self) -> None:
        ons = self.on_thresholds
        check(bool(ons) and all(0 < v < 1 for v in ons), "on_thresholds", ons, "values in (0, 1)")


@dataclass(frozen=True)
class DetectorFitConfig(Settings):
    phases: bool = True  # events are breath phases (edge.bed.detector.PhaseRule)
    # families whose classes keep their own hysteresis instead of the phases (CAS: SPRSound
    # marks a wheeze as the span of the sound, a median 0.5 s, not its breath phase)
    frame_families: tuple[str, ...] = ()
    max_false_per_hour: PositiveFloat = 3.0  # per family, on validation Normal records
    max_normal_share: Annotated[float, Field(gt=0, le=1)] = 0.08  # Normal records with false events

    def __post_init__(self) -> None:
        bad = [f for f in self.frame_families if f not in ("CAS", "DAS")]
        check(not bad, "frame_families", self.frame_families, "a list of CAS, DAS")


@dataclass(frozen=True)
class QualityConfig(Settings):
    poor_on: float = 0.6  # the quality output turns poor_signal on at >= this
    poor_off: float = 0.4  # and off below this
    # of good validation records that lungwatch rules' poor_on flags
    max_good_share: Annotated[float, Field(ge=0, lt=1)] = 0.02

    def __post_init__(self) -> None:
        ok = 0.0 < self.poor_off <= self.poor_on < 1.0
        check(ok, "poor_off", self.poor_off, f"in (0, poor_on={self.poor_on}]")


@dataclass(frozen=True)
class ModelOptions:
    """:class:`SedConfig` without the sizes the run derives (kinds, bands, outputs)."""

    stride: int = 4
    channels: int = 96
    dilations: tuple[int, ...] = (1, 2, 4, 8, 1, 2, 4, 8)
    kernel_widths: tuple[int, ...] = (3, 5)
    lookahead_frames: int = 8
    attention_heads: int = 0
    attention_frames: int = 64


@dataclass(frozen=True)
class RunConfig(Settings):
    name: str = "sed"
    seed: int = 0  # initialisation, crops and augmentation
    out_dir: str = "out/runs"  # the run folder is <out_dir>/<name>/
    threads: PositiveInt = 2  # torch intra-op threads
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureSpec = field(default_factory=FeatureSpec)
    kinds: tuple[str, ...] = ("logmel",)
    model: ModelOptions = field(default_factory=ModelOptions)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    detector: DetectorFitConfig = field(default_factory=DetectorFitConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)

    def __post_init__(self) -> None:
        check(bool(self.name) and "/" not in self.name, "name", self.name, "a folder name")
        kinds, kind = self.kinds, self.features.kind
        ok = bool(kinds) and len(set(kinds)) == len(kinds) and set(kinds) <= set(FEATURE_KINDS)
        check(ok, "kinds", kinds, f"distinct names from {FEATURE_KINDS}")
        check(kind == "logmel", "features.kind", kind, "left out (kinds names the front ends)")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def sed_config(self, n_outputs: int) -> SedConfig:
        return SedConfig(
            n_kinds=len(self.kinds),
            n_bands=self.features.n_bands,
            n_outputs=n_outputs,
            **asdict(self.model),
        )


def load_run(path: Path, overrides: list[str] | None = None) -> RunConfig:
    """The run of ``path`` with ``key=value`` overrides; errors name the file and the key."""
    return load_config(RunConfig, path, overrides)
