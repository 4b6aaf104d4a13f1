"""The SPRSound challenge tasks from the device's frame outputs
(:func:`edge.runtime.offline.detect_recordings`); the Task 1 and Task 2 rules and their fit:
docs/training.md ("``tasks`` and ``predict``")."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.bed.detector import FrameGrid
from lungwatch.errors import ConfigError
from lungwatch.labels import (
    DETECTED_CLASSES,
    FAMILY_CLASSES,
    NORMAL,
    POOR_QUALITY,
    record_label_2_1,
    record_label_from_families,
    to_binary,
)
from training.scoring.challenge import sprsound_scores

CAS_CLASSES, DAS_CLASSES = FAMILY_CLASSES["CAS"], FAMILY_CLASSES["DAS"]
WHEEZE_CRACKLE = "Wheeze+Crackle"
POOLS = ("mean", "max")
THRESHOLD_GRID = tuple(round(float(t), 3) for t in np.arange(0.05, 0.96, 0.05))
TOP_FRAMES_GRID = (3, 6, 12, 25, 50, 100, 200)
ROUNDS = 3


@dataclass(frozen=True)
class TaskRules:
    event_thresholds: Mapping[str, float]  # per detected class: pooled probability of "present"
    pool: str = "mean"
    poor_quality: float = 0.5  # mean Poor Quality output above it: a Poor Quality record
    cas: float = 0.5
    das: float = 0.5
    top_frames: int = 12

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"event_thresholds": dict(self.event_thresholds)}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TaskRules:
        """Rules from a manifest's ``tasks`` section; a wrong field is named."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: tasks must be a mapping, got {type(data).__name__}")
        thresholds = data.get("event_thresholds")
        if not isinstance(thresholds, Mapping) or set(thresholds) != set(DETECTED_CLASSES):
            raise ConfigError(
                f"{where}: tasks.event_thresholds must give a number for each of "
                f"{', '.join(DETECTED_CLASSES)}, got {thresholds!r}"
            )
        for key in {"poor_quality", "cas", "das"}:
            if not _is_number(data.get(key)):
                raise ConfigError(f"{where}: tasks.{key} must be a number, got {data.get(key)!r}")
        if not all(_is_number(v) for v in thresholds.values()):
            raise ConfigError(f"{where}: tasks.event_thresholds holds a non-number: {thresholds}")
        if data.get("pool") not in POOLS:
            pool = data.get("pool")
            raise ConfigError(f"{where}: tasks.pool must be one of {POOLS}, got {pool!r}")
        top = data.get("top_frames")
        if not isinstance(top, int) or isinstance(top, bool) or top < 1:
            raise ConfigError(f"{where}: tasks.top_frames must be a positive integer, got {top!r}")
        return cls(
            {str(k): float(v) for k, v in thresholds.items()},
            pool=str(data["pool"]),
            poor_quality=float(data["poor_quality"]),
            cas=float(data["cas"]),
            das=float(data["das"]),
            top_frames=top,
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def _columns(outputs: Sequence[str], names: Sequence[str]) -> list[int]:
    missing = [n for n in names if n not in outputs]
    if missing:
        raise ConfigError(f"model outputs {list(outputs)} lack {', '.join(missing)}")
    return [list(outputs).index(n) for n in names]


def span_frames(grid: FrameGrid, n_frames: int, start_s: float, end_s: float) -> np.ndarray:
    """Indices of the output frames whose centre lies in ``[start_s, end_s]`` (the frame
    nearest the span's middle when none does, e.g. a span shorter than one hop)."""
    rate = grid.sample_rate_hz
    starts = np.arange(n_frames) * grid.frame_samples + grid.offset_samples  # FrameGrid
    centres = (starts + grid.frame_samples / 2) / rate
    inside = np.flatnonzero((centres >= start_s) & (centres <= end_s))
    if inside.size or n_frames == 0:
        return inside
    return np.array([int(np.argmin(np.abs(centres - (start_s + end_s) / 2)))])


def pooled_spans(
    probs: np.ndarray,
    spans: Sequence[tuple[float, float]],
    outputs: Sequence[str],
    grid: FrameGrid,
    pool: str,
) -> np.ndarray:
    """(n_spans, len(DETECTED_CLASSES)) pooled outputs of one record's (n, O) frames; a span
    the model never described (past the end, or frames lost to a reset) pools to 0."""
    cols = _columns(outputs, DETECTED_CLASSES)
    reduce: Callable[..., np.ndarray] = np.nanmean if pool == "mean" else np.nanmax
    out = np.zeros((len(spans), len(cols)), np.float32)
    for i, (start, end) in enumerate(spans):
        frames = span_frames(grid, probs.shape[0], start, end)
        block = probs[frames][:, cols]
        if block.size and not np.isnan(block).all():
            out[i] = reduce(block, axis=0)
    return out


def label_of_pooled(pooled: np.ndarray, thresholds: np.ndarray) -> str:
    ratio = pooled / thresholds
    present = ratio >= 1.0
    if not present.any():
        return NORMAL
    wheeze = present[DETECTED_CLASSES.index("Wheeze")]
    crackle = any(present[DETECTED_CLASSES.index(c)] for c in DAS_CLASSES)
    if wheeze and crackle:
        return WHEEZE_CRACKLE
    return DETECTED_CLASSES[int(np.argmax(np.where(present, ratio, -np.inf)))]


def event_labels(
    probs: np.ndarray,
    spans: Sequence[tuple[float, float]],
    outputs: Sequence[str],
    grid: FrameGrid,
    rules: TaskRules,
) -> list[str]:
    """Task 1-2 labels of a record's annotated spans, in order."""
    pooled = pooled_spans(probs, spans, outputs, grid, rules.pool)
    t = np.array([rules.event_thresholds[c] for c in DETECTED_CLASSES], np.float64)
    return [label_of_pooled(p, t) for p in pooled]


def record_statistics(probs: np.ndarray, outputs: Sequence[str], top_frames: int) -> np.ndarray:
    """(3,): mean Poor Quality output, and the CAS and DAS scores (docs/training.md)."""
    (pq,) = _columns(outputs, (POOR_QUALITY,))
    stats = [float(np.nanmean(probs[:, pq])) if probs.shape[0] else 0.0]
    for family in (CAS_CLASSES, DAS_CLASSES):
        score = np.nanmax(probs[:, _columns(outputs, family)], axis=1) if probs.shape[0] else []
        score = np.sort(np.nan_to_num(np.asarray(score, np.float64), nan=0.0))
        stats.append(float(score[-top_frames:].mean()) if score.size else 0.0)
    return np.array(stats)


def record_label(probs: np.ndarray, outputs: Sequence[str], rules: TaskRules) -> str:
    """Task 2-2 label of one record's (n, O) output frames."""
    return _record_decision(record_statistics(probs, outputs, rules.top_frames), rules)


def _record_decision(stats: np.ndarray, rules: TaskRules) -> str:
    if stats[0] > rules.poor_quality:
        return POOR_QUALITY
    return record_label_from_families(bool(stats[1] > rules.cas), bool(stats[2] > rules.das))


@dataclass(frozen=True)
class TaskRecord:
    record_id: str
    label: str  # SPRSound record label (Task 2-2)
    spans: tuple[tuple[float, float], ...]  # annotated events, seconds
    span_labels: tuple[str, ...]  # their SPRSound types (Task 1-2)


def _score(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    return sprsound_scores(y_true, y_pred).score if y_true else 0.0


def _ascend(
    start: list[float], grid: Sequence[float], score: Callable[[list[float]], float]
) -> tuple[list[float], float]:
    best, best_score = list(start), score(start)
    for _ in range(ROUNDS):
        moved = False
        for i in range(len(best)):
            for value in grid:
                trial = [*best[:i], value, *best[i + 1 :]]
                s = score(trial)
                if s > best_score + 1e-12:
                    best, best_score, moved = trial, s, True
        if not moved:
            break
    return best, best_score


def fit_task_rules(
    probs: Mapping[str, np.ndarray],
    records: Sequence[TaskRecord],
    outputs: Sequence[str],
    grid: FrameGrid,
) -> tuple[TaskRules, dict[str, float]]:
    """Rules maximising the Task 1-2 and 2-2 Scores on validation ``records``; their four Scores."""
    truth = [label for r in records for label in r.span_labels]
    best_event: tuple[float, str, list[float]] = (-1.0, "mean", [])
    for pool in POOLS:
        pooled = np.concatenate(
            [pooled_spans(probs[r.record_id], r.spans, outputs, grid, pool) for r in records]
            or [np.zeros((0, len(DETECTED_CLASSES)), np.float32)]
        )

        def score_1_2(t: list[float], pooled: np.ndarray = pooled) -> float:
            tv = np.array(t)
            return _score(truth, [label_of_pooled(p, tv) for p in pooled])

        t, s = _ascend([0.5] * len(DETECTED_CLASSES), THRESHOLD_GRID, score_1_2)
        if s > best_event[0]:
            best_event = (s, pool, t)
    _, pool, thresholds = best_event
    record_truth = [r.label for r in records]
    best_record: tuple[float, int, list[float]] = (-1.0, TOP_FRAMES_GRID[0], [0.5, 0.5, 0.5])
    for top in TOP_FRAMES_GRID:
        stats = [record_statistics(probs[r.record_id], outputs, top) for r in records]

        def score_2_2(t: list[float], stats: list[np.ndarray] = stats) -> float:
            rules = TaskRules({}, poor_quality=t[0], cas=t[1], das=t[2])
            return _score(record_truth, [_record_decision(s, rules) for s in stats])

        t, s = _ascend([0.5, 0.5, 0.5], THRESHOLD_GRID, score_2_2)
        if s > best_record[0]:
            best_record = (s, top, t)
    _, top, (pq, cas, das) = best_record
    rules = TaskRules(dict(zip(DETECTED_CLASSES, thresholds, strict=True)), pool, pq, cas, das, top)
    return rules, task_scores(probs, records, outputs, grid, rules)


def task_scores(
    probs: Mapping[str, np.ndarray],
    records: Sequence[TaskRecord],
    outputs: Sequence[str],
    grid: FrameGrid,
    rules: TaskRules,
) -> dict[str, float]:
    truth: list[str] = []
    pred: list[str] = []
    for r in records:
        truth += r.span_labels
        pred += event_labels(probs[r.record_id], r.spans, outputs, grid, rules)
    rec_truth = [r.label for r in records]
    rec_pred = [record_label(probs[r.record_id], outputs, rules) for r in records]
    return {
        "1-1": _score([to_binary(x) for x in truth], [to_binary(x) for x in pred]),
        "1-2": _score(truth, pred),
        "2-1": _score(
            [record_label_2_1(x) for x in rec_truth], [record_label_2_1(x) for x in rec_pred]
        ),
        "2-2": _score(rec_truth, rec_pred),
    }


def task_record(record: Any) -> TaskRecord:
    """A :class:`training.data.sprsound.SprRecord` as fitting needs it."""
    return TaskRecord(
        record.record_id,
        record.record_label,
        tuple((e.start_ms / 1000.0, e.end_ms / 1000.0) for e in record.events),
        tuple(e.type for e in record.events),
    )


@dataclass(frozen=True)
class DeviceOutputs:
    probs: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    grid: FrameGrid


def device_outputs(audio: Mapping[str, Any], model_dir: Any, model_file: str) -> DeviceOutputs:
    """Run ``{record: audio path}`` through the device's path and keep the output frames."""
    from edge.inference.manifest import load_manifest
    from edge.runtime.offline import detect_recordings
    from training.recipe.fit import manifest_grid

    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir / "manifest.json")
    found = detect_recordings(dict(audio), model_dir, model_file, keep_probs=True)
    probs = {name: r.probs for name, r in found.items() if r.probs is not None}
    return DeviceOutputs(probs, tuple(manifest.outputs), manifest_grid(manifest))


def rules_of_manifest(model_dir: Any) -> TaskRules | None:
    """The fitted ``tasks`` section of a model folder's manifest (None: not fitted)."""
    from edge.inference.manifest import MANIFEST_NAME, read_json

    block = read_json(Path(model_dir) / MANIFEST_NAME).get("tasks")
    if block is None:
        return None
    where = str(Path(model_dir) / "manifest.json")
    return TaskRules.from_dict(block.get("rules") if isinstance(block, dict) else block, where)


def fit_model(model_dir: Path, model_file: str) -> dict[str, Any]:
    """The ``tasks`` section fitted on its run's validation records, from the model's outputs."""
    from training.data.sprsound import load_sprsound, patient_disjoint_split
    from training.scoring.views import validation_split

    folder, fraction, seed = validation_split(model_dir)
    _, val = patient_disjoint_split(load_sprsound(folder), fraction, seed)
    device = device_outputs({r.record_id: r.audio_path for r in val}, model_dir, model_file)
    rules, scores = fit_task_rules(
        device.probs, [task_record(r) for r in val], device.outputs, device.grid
    )
    return {
        "rules": rules.to_dict(),
        "fitted_on": f"{_shown(folder)}, patient-disjoint validation ({fraction:.0%}, seed "
        f"{seed}), {len(val)} records, outputs of {model_file}",
        "validation": {task: round(s, 4) for task, s in scores.items()},
    }


def _shown(folder: Path) -> str:
    """``folder`` as the manifest shows it: relative to the data root when inside it."""
    from edge.datapaths import data_root

    try:
        return f"<data root>/{folder.resolve().relative_to(data_root().resolve())}"
    except ValueError:
        return str(folder)


def main(argv: list[str] | None = None) -> int:
    import json

    from edge.inference.manifest_write import set_section
    from edge.monitor import resolve_model
    from lungwatch.cli import ArgumentParser

    parser = ArgumentParser(
        prog="lungwatch tasks",
        description="Fit the Task 1/2 rules of a model on its run's validation records and "
        "write them into its manifest (section 'tasks').",
    )
    parser.add_argument(
        "--model", type=Path, default=Path("models/sed/model.int8.onnx"),
        help="the model (a folder or its ONNX file) whose manifest gets the rules",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print, do not write")
    args = parser.parse_args(argv)
    model_dir, model_file = resolve_model(args.model)
    block = fit_model(model_dir, model_file)
    print(json.dumps(block, indent=1))
    if not args.dry_run:
        set_section(model_dir / "manifest.json", "tasks", block)
        print(f"tasks -> {model_dir / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
