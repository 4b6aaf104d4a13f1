"""Frame targets from strong labels. :data:`OUTPUTS`: the five adventitious classes
(SPRSound's ``Wheeze+Crackle`` is both ``Wheeze`` and ``Fine Crackle``, the crackle it most
often is); ``Breath``, inside any annotated event, Normal ones included (every annotated event
is a breath phase); ``Poor Quality``, the record's label on every frame. A frame's target is
the share of its span (:class:`edge.bed.detector.FrameGrid`) the class's events cover. SPRSound
annotates some breath phases of a record, not all, so frames outside every annotated event
weigh ``unannotated_weight`` for the class and Breath outputs; a Poor Quality record's Breath
targets are unknown (weight 0) and its class targets 0."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge.bed.detector import FrameGrid
from lungwatch.labels import DETECTED_CLASSES, POOR_QUALITY, SOUND_CLASSES

BREATH = "Breath"
OUTPUTS: tuple[str, ...] = (*DETECTED_CLASSES, BREATH, POOR_QUALITY)
BREATH_INDEX = OUTPUTS.index(BREATH)
QUALITY_INDEX = OUTPUTS.index(POOR_QUALITY)
#: annotated event type -> the outputs it switches on (Normal: only Breath)
TYPE_OUTPUTS: dict[str, tuple[str, ...]] = {c.name: c.raised_as for c in SOUND_CLASSES}

Event = tuple[float, float, str]  # (start_s, end_s, SPRSound type)
Cycle = tuple[float, float, bool, bool]  # (start_s, end_s, crackles, wheezes): ICBHI


def coverage(spans_s: Sequence[tuple[float, float]], grid: FrameGrid, n_frames: int) -> np.ndarray:
    covered = np.zeros(n_frames, dtype=np.float64)
    if n_frames == 0 or not spans_s:
        return covered.astype(np.float32)
    frame_s = grid.frame_samples / grid.sample_rate_hz
    starts = (np.arange(n_frames) * grid.frame_samples + grid.offset_samples) / grid.sample_rate_hz
    merged: list[list[float]] = []
    for start, end in sorted(spans_s):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    for start, end in merged:
        overlap = np.minimum(starts + frame_s, end) - np.maximum(starts, start)
        covered += np.clip(overlap, 0.0, None)
    return np.clip(covered / frame_s, 0.0, 1.0).astype(np.float32)


def frame_targets(
    events: Sequence[Event],
    record_label: str,
    grid: FrameGrid,
    n_frames: int,
    unannotated_weight: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Targets and weights of one recording, each (len(OUTPUTS), n_frames) float32."""
    unknown = sorted({t for _, _, t in events if t not in TYPE_OUTPUTS})
    if unknown:
        raise ValueError(f"unknown event types {unknown}; known: {sorted(TYPE_OUTPUTS)}")
    targets = np.zeros((len(OUTPUTS), n_frames), dtype=np.float32)
    weights = np.ones((len(OUTPUTS), n_frames), dtype=np.float32)
    annotated = coverage([(s, e) for s, e, _ in events], grid, n_frames)
    for c, name in enumerate(DETECTED_CLASSES):
        spans = [(s, e) for s, e, t in events if name in TYPE_OUTPUTS[t]]
        targets[c] = coverage(spans, grid, n_frames)
    targets[BREATH_INDEX] = annotated
    poor = record_label == POOR_QUALITY
    targets[QUALITY_INDEX] = 1.0 if poor else 0.0
    outside = unannotated_weight + (1.0 - unannotated_weight) * annotated
    if poor:
        weights[BREATH_INDEX] = 0.0
    else:
        weights[: len(DETECTED_CLASSES)] = outside
        weights[BREATH_INDEX] = outside
    return targets, weights


def cycle_targets(
    cycles: Sequence[Cycle], grid: FrameGrid, n_frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`frame_targets`, from ICBHI cycles (docs/training.md, "data.icbhi_fraction"): a
    cycle is a Breath "phase" at weight 0 (cycles are whole in-and-out breaths), so the phase
    loss judges its mean; outside the cycles nothing is known."""
    targets = np.zeros((len(OUTPUTS), n_frames), dtype=np.float32)
    weights = np.zeros((len(OUTPUTS), n_frames), dtype=np.float32)
    inside = coverage([(s, e) for s, e, _, _ in cycles], grid, n_frames)
    crackles = coverage([(s, e) for s, e, c, _ in cycles if c], grid, n_frames)
    wheezes = coverage([(s, e) for s, e, _, w in cycles if w], grid, n_frames)
    no_crackles, no_wheezes = np.clip(inside - crackles, 0, 1), np.clip(inside - wheezes, 0, 1)
    for name, target, known in (
        ("Fine Crackle", crackles, no_crackles),
        ("Coarse Crackle", None, no_crackles),
        ("Wheeze", wheezes, no_wheezes),
        ("Rhonchi", None, no_wheezes),
        ("Stridor", None, inside),
    ):
        c = OUTPUTS.index(name)
        if target is not None:
            targets[c] = target
        weights[c] = known
    targets[BREATH_INDEX] = inside
    weights[QUALITY_INDEX] = inside
    return targets, weights
