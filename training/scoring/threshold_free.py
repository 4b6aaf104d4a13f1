"""Threshold-free detection scores of a model's frame outputs, computed with sed_scores_eval: every
operating point at once (PSDS in DCASE's two scenarios, best per-class event F1), so two models can
be compared without the thresholds in between. The two score sets (``phases``: the device's phase
rule at every threshold; ``frames``: the bare outputs), where ``phases`` differs from the device,
and the adaptations to sed_scores_eval: docs/metrics.md, "Threshold-free detection scores" and
"Operating points"."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.bed.detector import DetectorConfig, FrameGrid, detect_events
from edge.bed.rules import ClassThreshold
from lungwatch.errors import ConfigError
from lungwatch.labels import DETECTED_CLASSES
from training.recipe.fit import events_of, rule
from training.scoring.detection import SCORES_COLLARS, VIEWS, Event, score_detection

PHASE_FLOOR = 1e-9  # every class's on-threshold when every phase must become an event
# DCASE's PSDS scenarios (DTC, GTC, CTTC, alpha_CT as sed_scores_eval's psds keywords)
SCENARIOS: dict[str, dict[str, float | None]] = {
    "psds1": dict(dtc_threshold=0.7, gtc_threshold=0.7, cttc_threshold=None, alpha_ct=0.0),
    "psds2": dict(dtc_threshold=0.1, gtc_threshold=0.1, cttc_threshold=0.3, alpha_ct=0.5),
}
PSDS_COMMON: dict[str, Any] = dict(alpha_st=1.0, unit_of_time="hour", max_efpr=100.0)
SWEEP = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # on-thresholds of operating_points
TOUCH_GAP_S = 0.001  # between touching annotated events of a class (see disjoint)


@dataclass
class ThresholdFree:
    """The threshold-free scores of one score set in one view."""

    psds1: float
    psds2: float
    best_event_f1: float  # micro, each class at its best threshold
    best_precision: float
    best_recall: float
    best_thresholds: dict[str, float] = field(default_factory=dict)
    classes: tuple[str, ...] = ()  # the view's classes scored
    left_out: tuple[str, ...] = ()  # the view's classes without an annotated event


def view_events(
    events: Sequence[Event], mapping: Mapping[str, tuple[str, ...]]
) -> list[tuple[float, float, str]]:
    """SPRSound-typed events as the view's classes (Wheeze+Crackle in both of its)."""
    return [(float(s), float(e), label) for s, e, t in events for label in mapping.get(t, ())]


def disjoint(events: Sequence[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Annotated events as sed_scores_eval takes them (a class's may not touch or overlap):
    overlapping ones merge; touching ones stay two, as in sed_eval (the earlier ends sooner)."""
    out: list[tuple[float, float, str]] = []
    for label in sorted({label for *_, label in events}):
        spans = sorted((s, e) for s, e, lab in events if lab == label)
        merged: list[list[float]] = []
        for s, e in spans:
            if merged and s < merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        for i in range(len(merged) - 1):
            if merged[i][1] == merged[i + 1][0]:
                merged[i][1] -= TOUCH_GAP_S
        out += [(s, e, label) for s, e in merged]
    return sorted(out)


def frame_table(
    probs: np.ndarray,
    outputs: Sequence[str],
    grid: FrameGrid,
    duration_s: float,
    mapping: Mapping[str, tuple[str, ...]],
    classes: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps (S + 1,), scores (S, C)) of one record's frame outputs (n, O) in a view: a view
    class scores the highest of its outputs; NaN frames and time before the first frame score 0."""
    p = np.nan_to_num(np.asarray(probs, np.float64), nan=0.0)
    if p.ndim != 2 or p.shape[1] != len(outputs):
        raise ConfigError(f"expected (n, {len(outputs)}) probabilities, got {p.shape}")
    rate = float(grid.sample_rate_hz)
    starts = (np.arange(p.shape[0]) * grid.frame_samples + grid.offset_samples) / rate
    keep = starts < duration_s
    p, starts = p[keep], starts[keep]
    if not len(starts):  # no frame within the recording: one silent stretch
        return np.array([0.0, max(duration_s, 1e-6)]), np.zeros((1, len(classes)))
    end = min(starts[-1] + grid.frame_samples / rate, max(duration_s, starts[-1] + 1e-6))
    scores = np.zeros((p.shape[0], len(classes)))
    for i, name in enumerate(outputs):
        for label in mapping.get(name, ()):
            c = classes.index(label)
            scores[:, c] = np.maximum(scores[:, c], p[:, i])
    if starts[0] > 0:  # before the first frame: score 0
        starts = np.r_[0.0, starts]
        scores = np.vstack([np.zeros((1, len(classes))), scores])
    return np.r_[starts, end], scores


def event_table(
    events: Sequence[tuple[float, float, str, float]],
    duration_s: float,
    mapping: Mapping[str, tuple[str, ...]],
    classes: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps, scores) of scored events ``(start_s, end_s, type, score)``: each stretch
    between event edges scores, per view class, the highest covering event's score, else 0."""
    end = max([duration_s, *(e for _, e, _, _ in events)])
    edges = np.unique(np.r_[0.0, end, [s for s, _, _, _ in events], [e for _, e, _, _ in events]])
    scores = np.zeros((len(edges) - 1, len(classes)))
    for s, e, t, score in events:
        first, last = np.searchsorted(edges, s), np.searchsorted(edges, e)
        for label in mapping.get(t, ()):
            c = classes.index(label)
            scores[first:last, c] = np.maximum(scores[first:last, c], score)
    return edges, scores


def phase_events(
    probs: np.ndarray, outputs: Sequence[str], config: DetectorConfig, grid: FrameGrid
) -> list[tuple[float, float, str, float]]:
    """Every phase the device's phase rule cuts, once per detected class, with the rule's
    decision statistic as its score, in seconds."""
    if config.phases is None:
        raise ConfigError("threshold-free phase scores need a detector in phase mode (phases)")
    floor = tuple(
        ClassThreshold(t, PHASE_FLOOR, PHASE_FLOOR) for t in outputs if t in DETECTED_CLASSES
    )
    every = dataclasses.replace(config, thresholds=floor)
    rate = float(grid.sample_rate_hz)
    return [
        (e.start_sample / rate, e.end_sample / rate, e.type, e.confidence)
        for e in detect_events(np.asarray(probs, np.float32), outputs, every, grid)
    ]


def score_tables(
    tables: Mapping[str, tuple[np.ndarray, np.ndarray]],
    annotated: Mapping[str, Sequence[Event]],
    durations_s: Mapping[str, float],
    view: str,
) -> ThresholdFree:
    """sed_scores_eval's PSDS (both scenarios) and best collar-based F1 of one view's score
    tables ``{record: (timestamps, scores)}`` (columns: the view's classes, in order)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # dcase_util's pkg_resources notice
        from sed_scores_eval import collar_based, intersection_based
        from sed_scores_eval.base_modules.scores import create_score_dataframe
    mapping, classes = VIEWS[view]
    missing = sorted(set(annotated) - set(tables))
    if missing:
        raise ConfigError(f"no scores for annotated record(s) {missing[:3]}")
    truth = {r: disjoint(view_events(annotated[r], mapping)) for r in sorted(annotated)}
    present = tuple(c for c in classes if any(lab == c for ev in truth.values() for *_, lab in ev))
    left_out = tuple(c for c in classes if c not in present)
    if not present:
        raise ConfigError(f"no annotated {view} event in the records: nothing to score")
    cols = [classes.index(c) for c in present]
    scores = {
        r: create_score_dataframe(tables[r][1][:, cols], tables[r][0], list(present)) for r in truth
    }
    truth = {r: [ev for ev in events if ev[2] in present] for r, events in truth.items()}
    durations = {r: max(float(durations_s[r]), float(tables[r][0][-1])) for r in truth}
    psds = {}
    for name, scenario in SCENARIOS.items():
        if len(present) < 2:  # no other class to cross-trigger (sed_scores_eval needs one)
            scenario = scenario | {"cttc_threshold": None, "alpha_ct": 0.0}
        psds[name] = intersection_based.psds(scores, truth, durations, **scenario, **PSDS_COMMON)[0]
    f, p, r, thresholds, _ = collar_based.best_fscore(scores, truth, **SCORES_COLLARS)
    return ThresholdFree(
        psds1=float(psds["psds1"]),
        psds2=float(psds["psds2"]),
        best_event_f1=float(f["micro_average"]),
        best_precision=float(p["micro_average"]),
        best_recall=float(r["micro_average"]),
        best_thresholds={c: float(thresholds[c]) for c in present},
        classes=present,
        left_out=left_out,
    )


def scored_records(
    probs: Mapping[str, np.ndarray], annotated: Mapping[str, Sequence[Event]]
) -> list[str]:
    records = sorted(annotated)
    missing = [r for r in records if r not in probs]
    if missing:
        raise ConfigError(f"no frame outputs for annotated record(s) {missing[:3]}")
    return records


def threshold_free(
    probs: Mapping[str, np.ndarray],
    annotated: Mapping[str, Sequence[Event]],
    durations_s: Mapping[str, float],
    outputs: Sequence[str],
    config: DetectorConfig,
    grid: FrameGrid,
) -> dict[str, dict[str, ThresholdFree]]:
    """``{"phases" | "frames": {view: ThresholdFree}}`` over the records of ``annotated``;
    ``phases`` only with a phase rule; a view with no annotated class in the records is absent."""
    records = scored_records(probs, annotated)
    out: dict[str, dict[str, ThresholdFree]] = {"frames": {}}
    scored = None
    if config.phases is not None:
        scored = {r: phase_events(probs[r], outputs, config, grid) for r in records}
        out["phases"] = {}
    for view, (mapping, classes) in VIEWS.items():
        if not any(view_events(annotated[r], mapping) for r in records):
            continue  # nothing of this view annotated (e.g. only Normal records): no scores
        frames = {
            r: frame_table(probs[r], outputs, grid, durations_s[r], mapping, classes)
            for r in records
        }
        out["frames"][view] = score_tables(frames, annotated, durations_s, view)
        if scored is not None:
            tables = {r: event_table(scored[r], durations_s[r], mapping, classes) for r in records}
            out["phases"][view] = score_tables(tables, annotated, durations_s, view)
    return out


def operating_points(
    probs: Mapping[str, np.ndarray],
    annotated: Mapping[str, Sequence[Event]],
    labels: Mapping[str, str],
    durations_s: Mapping[str, float],
    outputs: Sequence[str],
    config: DetectorConfig,
    grid: FrameGrid,
    thresholds: Sequence[float] = SWEEP,
) -> list[dict[str, float]]:
    """The device's detector with every detected class's on-threshold at each of ``thresholds``
    (docs/metrics.md, "Operating points"): :meth:`DetectionReport.summary` plus ``threshold``."""
    records = scored_records(probs, annotated)
    types = [t for t in outputs if t in DETECTED_CLASSES]
    frames = [np.asarray(probs[r], np.float32) for r in records]
    rows = []
    for t in thresholds:
        rules = tuple(
            rule(x, t, config.rule_of(x).min_event_ms, config.rule_of(x).merge_gap_ms)
            for x in types
        )
        at_t = dataclasses.replace(config, thresholds=rules)
        predicted = events_of(frames, records, outputs, at_t, grid)
        report = score_detection(predicted, annotated, labels, durations_s)
        rows.append({"threshold": float(t), **report.summary()})
    return rows


def as_dict(scores: Mapping[str, Mapping[str, ThresholdFree]]) -> dict[str, Any]:
    """JSON-ready :func:`threshold_free` result; an infinite best threshold is "inf" or "-inf"."""
    out: dict[str, Any] = {}
    for name, views in scores.items():
        out[name] = {}
        for view, x in views.items():
            item = dataclasses.asdict(x)
            item["best_thresholds"] = {
                c: (t if np.isfinite(t) else ("inf" if t > 0 else "-inf"))
                for c, t in x.best_thresholds.items()
            }
            out[name][view] = item
    return out
