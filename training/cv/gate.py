"""The quality gate's model threshold fitted out of fold, on SPRSound and other stethoscopes
(docs/training.md, "The quality gate, fitted out of fold"). :func:`poor_spans` replays the
device gate's model switch on stored output frames, so every threshold is judged on every
recording without the device path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge.bed.gate import GateConfig
from lungwatch.labels import POOR_QUALITY
from training.cv.oof import Truth, icbhi_out_of_fold
from training.data.targets import QUALITY_INDEX

ON_GRID = tuple(round(0.5 + 0.025 * i, 3) for i in range(19))  # 0.5 ... 0.95
GAP = 0.2  # poor_off = poor_on - GAP, as the gate's defaults (0.6 / 0.4)
MIN_S = GateConfig().poor_signal_min_ms / 1e3  # the device gate's defaults
CLEAR_S = GateConfig().clear_after_ms / 1e3


def poor_spans(
    quality: np.ndarray, on: float, off: float, window_frames: int, frame_s: float
) -> list[tuple[float, float]]:
    """``poor_signal`` events (start, end) s of one recording's Poor Quality output (n,)."""
    q = np.asarray(quality, np.float64)
    n_windows = len(q) // window_frames + (1 if len(q) % window_frames else 0)
    window_s = window_frames * frame_s
    runs: list[list[float]] = []
    active = False
    for w in range(n_windows):
        value = float(q[w * window_frames : (w + 1) * window_frames].mean())
        active = value >= off if active else value >= on
        if not active:
            continue
        start, end = w * window_s, min((w + 1) * window_frames, len(q)) * frame_s
        if runs and start - runs[-1][1] <= CLEAR_S:
            runs[-1][1] = end
        else:
            runs.append([start, end])
    return [(s, e) for s, e in runs if e - s >= MIN_S]


@dataclass(frozen=True)
class GateCounts:
    """Per recording and :data:`ON_GRID` threshold: ``poor_signal`` raised, for how many seconds."""

    names: list[str]
    kind: np.ndarray  # (R,) 0 good SPRSound record, 1 Poor Quality record, 2 other stethoscope
    fold: np.ndarray  # (R,) the recording's fold
    duration_s: np.ndarray  # (R,)
    flagged: np.ndarray  # (R, T) bool
    poor_s: np.ndarray  # (R, T)

    def shares(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Per threshold, over ``rows``: shares of good / Poor Quality records flagged and of
        the other stethoscopes' time under ``poor_signal``."""
        out = {}
        for key, k in (("good", 0), ("poor_quality", 1)):
            sel = rows & (self.kind == k)
            out[key] = self.flagged[sel].mean(axis=0) if sel.any() else np.zeros(len(ON_GRID))
        other = rows & (self.kind == 2)
        total = self.duration_s[other].sum()
        out["other_time"] = self.poor_s[other].sum(axis=0) / total if total > 0 else out["good"] * 0
        return out


def replay(
    outputs: Sequence[tuple[str, int, int, float, np.ndarray]], window_frames: int, frame_s: float
) -> GateCounts:
    """``outputs``: (name, kind, fold, duration s, output frames (n, O)) per recording."""
    flagged = np.zeros((len(outputs), len(ON_GRID)), bool)
    poor_s = np.zeros((len(outputs), len(ON_GRID)))
    for i, (_, _, _, _, probs) in enumerate(outputs):
        quality = probs[:, QUALITY_INDEX]
        for t, on in enumerate(ON_GRID):
            spans = poor_spans(quality, on, round(on - GAP, 3), window_frames, frame_s)
            flagged[i, t] = bool(spans)
            poor_s[i, t] = sum(e - s for s, e in spans)
    return GateCounts(
        [o[0] for o in outputs],
        np.array([o[1] for o in outputs]),
        np.array([o[2] for o in outputs]),
        np.array([o[3] for o in outputs], np.float64),
        flagged,
        poor_s,
    )


def fit_gate(
    counts: GateCounts, rows: np.ndarray, max_good_share: float, max_other_time_share: float
) -> int:
    """The lowest :data:`ON_GRID` index within both budgets on ``rows`` (else the highest)."""
    s = counts.shares(rows)
    ok = (s["good"] <= max_good_share) & (s["other_time"] <= max_other_time_share)
    return int(np.argmax(ok)) if ok.any() else len(ON_GRID) - 1


@dataclass(frozen=True)
class GateFit:
    thresholds: list[float]  # per fold, fitted on the other folds
    held_out: dict[str, float]  # pooled over the folds, each at its own threshold
    at: dict[str, dict[str, float]]  # every fold at one threshold: "0.6" -> shares


def cross_fit_gate(
    counts: GateCounts, max_good_share: float, max_other_time_share: float, k: int
) -> GateFit:
    chosen = np.zeros(len(counts.names), int)
    thresholds = []
    for fold in range(k):
        t = fit_gate(counts, counts.fold != fold, max_good_share, max_other_time_share)
        thresholds.append(ON_GRID[t])
        chosen[counts.fold == fold] = t
    rows = np.arange(len(counts.names))
    pick = replace(
        counts,
        flagged=counts.flagged[rows, chosen][:, None],
        poor_s=counts.poor_s[rows, chosen][:, None],
    )
    every = np.ones(len(counts.names), bool)
    held = {key: float(v[0]) for key, v in pick.shares(every).items()}
    whole = counts.shares(every)
    at = {
        f"{on:.3f}": {key: round(float(v[t]), 4) for key, v in whole.items()}
        for t, on in enumerate(ON_GRID)
    }
    return GateFit(thresholds, held, at)


def gate_outputs(
    oof: Mapping[int, Mapping[str, np.ndarray]],
    truth: Truth,
    design: Path,
    icbhi_patients: Mapping[str, str],
    frame_s: float,
) -> list[tuple[str, int, int, float, np.ndarray]]:
    """Every seed's OOF outputs of SPRSound ``train`` and ICBHI (its own ICBHI fold's models)."""
    out = []
    for seed, probs in oof.items():
        for r, p in probs.items():
            kind = int(truth.labels[r] == POOR_QUALITY)
            out.append((f"{seed}/{r}", kind, truth.folds[r], truth.durations[r], p))
        for r, (k, p) in icbhi_out_of_fold(design, icbhi_patients, seed).items():
            out.append((f"{seed}/{r}", 2, k, len(p) * frame_s, p))
    return out
