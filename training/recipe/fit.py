"""Fit the device's detector rules on validation: per-class thresholds and durations, and the
phase rule.

Coordinate ascent on the knobs of each detected class (and, in phase mode, of the phase rule),
every candidate scored through the device's converter :func:`edge.bed.detector.detect_events`
for the best macro event F1 within :class:`Limits` (docs/training.md, "train", step 5). The
budget is per family, so a crackle-heavy validation set cannot buy crackle events with the
wheezes' threshold. Never fitted on a test set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.bed.detector import DetectorConfig, FrameGrid, detect_events
from edge.bed.rules import ClassThreshold, PhaseRule
from lungwatch.labels import DETECTED_CLASSES, FAMILY_CLASSES, POOR_QUALITY
from training.scoring.detection import DetectionReport, Event, score_detection

if TYPE_CHECKING:
    from edge.features import FeatureSpec
    from edge.inference.manifest import Manifest
    from training.data.recordings import Recording
    from training.recipe.config import RunConfig

OFF_GAP = 0.15  # off-threshold = on-threshold - OFF_GAP (at least MIN_OFF)
MIN_OFF = 0.05
ON_GRID = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9, 0.95, 0.99)
MIN_EVENT_GRID_MS = (40.0, 120.0, 200.0, 320.0)
MERGE_GAP_GRID_MS = (0.0, 120.0, 240.0, 400.0)
PHASE_ON_GRID = (0.4, 0.5, 0.6, 0.7)
PHASE_GAP_GRID = (0.1, 0.2, 0.3)  # phase off-threshold = on - gap
MIN_PHASE_GRID_MS = (120.0, 240.0, 400.0)
PHASE_LEAD_GRID_MS = (0.0, 40.0, 80.0, 120.0)  # reported start before the phase's first frame


@dataclass(frozen=True)
class Limits:
    """The false-alarm budget a fitted setting must respect on validation Normal records."""

    # per family, so both together stay below the ward's 10 per hour with room to spare:
    # intra_test has raised about twice validation's rate
    max_false_per_hour: float = 3.0
    max_normal_share: float = 0.08

    def within(self, report: DetectionReport) -> bool:
        return (
            all(
                f.false_events_per_hour <= self.max_false_per_hour for f in report.families.values()
            )
            and report.normal_records_with_false_events <= self.max_normal_share
        )

    def excess(self, report: DetectionReport) -> float:
        """How far over budget (false events per hour above it, summed over families)."""
        return sum(
            max(0.0, f.false_events_per_hour - self.max_false_per_hour)
            for f in report.families.values()
        ) + 100.0 * max(0.0, report.normal_records_with_false_events - self.max_normal_share)


@dataclass(frozen=True)
class Fit:
    config: DetectorConfig
    report: DetectionReport
    evaluations: int


def events_of(
    probs: Sequence[np.ndarray],
    records: Sequence[str],
    outputs: Sequence[str],
    config: DetectorConfig,
    grid: FrameGrid,
) -> dict[str, list[Event]]:
    """``{record: [(start_s, end_s, type), ...]}`` of every record's (n, O) probabilities."""
    rate = grid.sample_rate_hz
    return {
        record: [
            (e.start_sample / rate, e.end_sample / rate, e.type)
            for e in detect_events(p, outputs, config, grid)
        ]
        for record, p in zip(records, probs, strict=True)
    }


def frame_grid(run: RunConfig) -> FrameGrid:
    spec = run.features
    return FrameGrid.of(spec.sample_rate_hz, spec.hop_samples, spec.frame_samples, run.model.stride)


def manifest_grid(manifest: Manifest) -> FrameGrid:
    spec, stride = manifest.feature_spec, manifest.streaming.stride
    return FrameGrid.of(spec.sample_rate_hz, spec.hop_samples, spec.frame_samples, stride)


def with_rule(config: DetectorConfig, rule: ClassThreshold) -> DetectorConfig:
    rules = (*tuple(r for r in config.thresholds if r.type != rule.type), rule)
    return dataclasses.replace(config, thresholds=rules)


def rule(type_: str, on: float, min_ms: float, gap_ms: float) -> ClassThreshold:
    return ClassThreshold(type_, on, max(MIN_OFF, round(on - OFF_GAP, 3)), min_ms, gap_ms)


def fit_detector(
    probs: Sequence[np.ndarray],
    annotated: Mapping[str, Sequence[Event]],
    labels: Mapping[str, str],
    durations_s: Mapping[str, float],
    outputs: Sequence[str],
    grid: FrameGrid,
    base: DetectorConfig,
    limits: Limits = Limits(),
) -> Fit:
    """Per-class rules maximising macro event F1 within ``limits`` (two rounds of ascent at
    most); ``probs[i]`` belongs to the i-th record of ``annotated``."""
    records = list(annotated)
    types = [t for t in outputs if t in DETECTED_CLASSES]
    current = base
    for t in types:
        r = base.rule_of(t)
        current = with_rule(current, rule(t, r.on_threshold, r.min_event_ms, r.merge_gap_ms))
    evaluations = 0

    def score(config: DetectorConfig) -> tuple[float, DetectionReport]:
        nonlocal evaluations
        evaluations += 1
        predicted = events_of(probs, records, outputs, config, grid)
        report = score_detection(predicted, annotated, labels, durations_s)
        # a setting over budget ranks below every one within it, the least over first
        value = report.macro_f1 if limits.within(report) else -limits.excess(report)
        return value, report

    def phase_candidates(config: DetectorConfig) -> list[DetectorConfig]:
        p = config.phases
        if p is None:
            return []
        gap = round(p.on_threshold - p.off_threshold, 3)
        rules = [
            dataclasses.replace(p, on_threshold=v, off_threshold=round(v - gap, 3))
            for v in PHASE_ON_GRID
        ]
        rules += [
            dataclasses.replace(p, off_threshold=round(p.on_threshold - g, 3))
            for g in PHASE_GAP_GRID
            if p.on_threshold - g > 0
        ]
        rules += [dataclasses.replace(p, min_phase_ms=v) for v in MIN_PHASE_GRID_MS]
        rules += [dataclasses.replace(p, lead_ms=v) for v in PHASE_LEAD_GRID_MS]
        return [dataclasses.replace(config, phases=r) for r in rules]

    def knobs(config: DetectorConfig, type_: str) -> tuple[str, ...]:
        """A class of the phases has its on-threshold; one of its own hysteresis all three."""
        p = config.phases
        return ("on", "min", "gap") if p is None or type_ in p.frame_classes else ("on",)

    best, best_report = score(current)
    improved = False

    def consider(config: DetectorConfig) -> None:
        nonlocal best, best_report, current, improved
        if config == current:
            return
        value, report = score(config)
        if value > best + 1e-9:
            best, best_report, current, improved = value, report, config, True

    for _ in range(2):
        improved = False
        for config in phase_candidates(current):
            consider(config)
        for t in types:
            for knob in knobs(current, t):
                r = current.rule_of(t)
                candidates = {
                    "on": [rule(t, v, r.min_event_ms, r.merge_gap_ms) for v in ON_GRID],
                    "min": [rule(t, r.on_threshold, v, r.merge_gap_ms) for v in MIN_EVENT_GRID_MS],
                    "gap": [rule(t, r.on_threshold, r.min_event_ms, v) for v in MERGE_GAP_GRID_MS],
                }[knob]
                for candidate in candidates:
                    consider(with_rule(current, candidate))
        if not improved:
            break
    return Fit(current, best_report, evaluations)


def fit_start(run: RunConfig) -> DetectorConfig:
    """The detector the fit starts from (and the epoch selection sweeps)."""
    framed = tuple(c for f in run.detector.frame_families for c in FAMILY_CLASSES[f])
    phases = (
        PhaseRule(0.6, 0.5, 240.0, lead_ms=120.0, frame_classes=framed)
        if run.detector.phases
        else None
    )
    return DetectorConfig(
        on_threshold=0.7, off_threshold=0.55, min_event_ms=120, merge_gap_ms=120, phases=phases
    )


def fit_rules(
    probs: Sequence[np.ndarray], val: Sequence[Recording], grid: FrameGrid, run: RunConfig
) -> dict[str, Any]:
    """The manifest's ``detector`` section fitted on validation ``val``; ``probs`` (n, O) each."""
    return rules_section(probs, *recording_truth(val, run.features), grid, run)


def recording_truth(
    recs: Sequence[Recording], spec: FeatureSpec
) -> tuple[dict[str, list[Event]], dict[str, str], dict[str, float]]:
    """Per recording: its annotated events, its label and its duration (s)."""
    from training.data.recordings import recording_seconds

    annotated = {r.record_id: list(r.events) for r in recs}
    labels = {r.record_id: r.label for r in recs}
    return (
        annotated,
        labels,
        {r.record_id: recording_seconds(r.features.shape[2], spec) for r in recs},
    )


def rules_section(
    probs: Sequence[np.ndarray],
    annotated: Mapping[str, Sequence[Event]],
    labels: Mapping[str, str],
    durations_s: Mapping[str, float],
    grid: FrameGrid,
    run: RunConfig,
) -> dict[str, Any]:
    """:func:`fit_rules` on records given as annotations, labels and durations (``probs`` order)."""
    from training.data.targets import OUTPUTS

    limits = Limits(run.detector.max_false_per_hour, run.detector.max_normal_share)
    fit = fit_detector(probs, annotated, labels, durations_s, OUTPUTS, grid, fit_start(run), limits)
    phases = {} if fit.config.phases is None else {"phases": dataclasses.asdict(fit.config.phases)}
    return {
        "thresholds": [dataclasses.asdict(t) for t in fit.config.thresholds],
        **phases,
        "fitted_on": f"{len(annotated)} validation records (patient-disjoint, "
        f"{run.data.val_fraction:.0%} of the patients, split seed {run.data.split_seed})",
        "limits": dataclasses.asdict(limits),
        "validation": fit.report.summary(),
    }


QUALITY_ON_GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
QUALITY_GAP = 0.2  # poor_off = poor_on - this


def fit_quality(folder: Path, file: str, records: Sequence[Any], run: RunConfig) -> dict[str, Any]:
    """The manifest's ``quality``: the lowest on-threshold at which at most ``max_good_share`` of
    good validation records raise ``poor_signal`` via the device path, with the shares it flags."""
    from edge.bed.gate import GateConfig
    from edge.runtime.offline import detect_recordings

    audio = {r.record_id: r.audio_path for r in records}
    good = [r.record_id for r in records if r.record_label != POOR_QUALITY]
    poor = [r.record_id for r in records if r.record_label == POOR_QUALITY]
    block: dict[str, Any] = {}
    for on in QUALITY_ON_GRID:
        off = round(on - QUALITY_GAP, 3)
        gate = GateConfig(poor_quality_on_threshold=on, poor_quality_off_threshold=off)
        found = detect_recordings(audio, folder, file, gate=gate)
        flagged = {
            r for r, f in found.items() if any(e["type"] == "poor_signal" for e in f.technical)
        }
        shares = {"good": len(flagged & set(good)) / max(1, len(good)),
                  "poor_quality": len(flagged & set(poor)) / max(1, len(poor))}  # fmt: skip
        block = {"poor_on": on, "poor_off": off, "validation": shares}
        if shares["good"] <= run.quality.max_good_share:
            break
    limit = run.quality.max_good_share
    block["fitted_on"] = f"{len(records)} validation records, <= {limit:.0%} of good ones, {file}"
    return block


def refit(folder: Path, file: str, run: RunConfig, records: Sequence[Any]) -> dict[str, Any]:
    from edge.runtime.offline import detect_recordings
    from training.data.sprsound import scoring_truth

    audio = {r.record_id: r.audio_path for r in records}
    found = detect_recordings(audio, folder, file, keep_probs=True)
    probs = [np.asarray(found[r.record_id].probs) for r in records]
    section = rules_section(probs, *scoring_truth(records), frame_grid(run), run)
    section["fitted_on"] += f", outputs of {file}"
    return section


def main(argv: list[str] | None = None) -> int:
    """``lungwatch rules``: refit a model folder's detector rules and quality hysteresis on
    its run's validation records, from the outputs of the artifact the device runs, and write
    them into its manifest (sections ``detector`` and ``quality``); ``--set`` changes the
    run's keys first (e.g. the false-event budget ``detector.max_false_per_hour``)."""
    import json

    from edge.inference.manifest_write import set_section
    from edge.monitor import resolve_model
    from lungwatch.cli import ArgumentParser
    from lungwatch.config import apply_overrides, from_mapping
    from training.models.checkpoint import load_checkpoint
    from training.recipe.config import RunConfig
    from training.scoring.views import validation_records

    parser = ArgumentParser(prog="lungwatch rules", description=main.__doc__ or "")
    parser.add_argument("--model", type=Path, default=Path("models/sed"), help="folder or file")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a key of the model's run, e.g. detector.frame_families=[CAS]",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print, do not write")
    args = parser.parse_args(argv)
    folder, file = resolve_model(args.model)
    stored = load_checkpoint(folder / "model.pt").run
    run = from_mapping(RunConfig, apply_overrides(stored, args.set, "--set"), source="--set")
    records = validation_records(folder)
    section = refit(folder, file, run, records)
    quality = fit_quality(folder, file, records, run)
    print(json.dumps({"detector": section["validation"], "quality": quality}, indent=1))
    if not args.dry_run:
        set_section(folder / "manifest.json", "detector", section)
        set_section(folder / "manifest.json", "quality", quality)
        print(f"detector -> {folder / 'manifest.json'}; write the verify reference again: "
              f"lungwatch verify --model-dir {folder} --write-reference")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
