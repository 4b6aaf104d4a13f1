"""A bed's rolling verdict: the record-level decision of SPRSound's Task 2-2 over the last
``window_s`` of the stream, kept as the bed's status. Statistics, decision, hysteresis and window:
docs/runtime.md ("The rolling bed verdict")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from numba import njit
from pydantic import Field, PositiveFloat

from edge.bed.detector import FrameGrid
from lungwatch.config import Settings, check
from lungwatch.errors import ConfigError
from lungwatch.labels import FAMILY_CLASSES, NORMAL, POOR_QUALITY, record_label_from_families

ASSESSING = "assessing"
VERDICTS = (ASSESSING, NORMAL, "CAS", "DAS", "CAS & DAS", POOR_QUALITY)
CAS_CLASSES, DAS_CLASSES = FAMILY_CLASSES["CAS"], FAMILY_CLASSES["DAS"]


@dataclass(frozen=True)
class VerdictConfig(Settings):
    """The rolling window and its hysteresis (the runtime config's ``verdict`` section)."""

    enabled: bool = True  # false: no verdict (also when the manifest has no Task rules)
    window_s: PositiveFloat = 30.0  # the stretch of the stream the decision reads
    min_s: float = 4.0  # "assessing" until the window holds this much
    release: Annotated[float, Field(gt=0, le=1)] = 0.8  # once on, off below this x its threshold

    def __post_init__(self) -> None:
        check(0 <= self.min_s <= self.window_s, "min_s", self.min_s, "in [0, window_s]")


@dataclass(frozen=True)
class VerdictRule:
    """Task 2's thresholds (from the manifest) and the window."""

    poor_quality: float
    cas: float
    das: float
    top_frames: int
    config: VerdictConfig = VerdictConfig()

    @classmethod
    def of(cls, tasks: Mapping[str, Any] | None, config: VerdictConfig) -> VerdictRule | None:
        """The rule of a manifest's ``tasks.rules`` (None: none, or the verdict is off)."""
        if tasks is None or not config.enabled:
            return None
        try:
            return cls(
                float(tasks["poor_quality"]),
                float(tasks["cas"]),
                float(tasks["das"]),
                int(tasks["top_frames"]),
                config,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"manifest tasks.rules: {exc!r} (needs poor_quality, cas, das, top_frames)"
            ) from None


class RollingVerdict:
    def __init__(self, rule: VerdictRule, outputs: Sequence[str], grid: FrameGrid) -> None:
        self.rule = rule
        names = list(outputs)
        self._pq = names.index(POOR_QUALITY)
        self._cas = np.array([names.index(c) for c in CAS_CLASSES if c in names], np.int64)
        self._das = np.array([names.index(c) for c in DAS_CLASSES if c in names], np.int64)
        hop_s = grid.frame_samples / grid.sample_rate_hz
        self._size = max(1, round(rule.config.window_s / hop_s))
        self._min = round(rule.config.min_s / hop_s)
        self._ring = np.zeros((3, self._size), np.float64)  # pq, cas, das of each frame
        self._count = 0  # described frames seen
        self._on = {"pq": False, "cas": False, "das": False}
        self.label = ASSESSING
        self.scores = (0.0, 0.0, 0.0)

    def update(self, first_frame: int, probs: np.ndarray) -> str | None:
        """Take output frames (n, O); the new label when it changed, else None."""
        p = np.asarray(probs)
        if p.shape[0] == 0:
            return None
        count = _take(self._ring, self._count, p, self._pq, self._cas, self._das)
        if count == self._count:  # no described frame
            return None
        self._count = count
        label = self._decide() if self._count >= self._min else ASSESSING
        if label == self.label:
            return None
        self.label = label
        return label

    def _decide(self) -> str:
        filled = min(self._count, self._size)
        pq, cas, das = _statistics(self._ring, filled, min(self.rule.top_frames, filled))
        self.scores = (pq, cas, das)
        rule, release = self.rule, self.rule.config.release
        for key, value, threshold in (("pq", pq, rule.poor_quality), ("cas", cas, rule.cas),
                                      ("das", das, rule.das)):  # fmt: skip
            bar = threshold * release if self._on[key] else threshold
            self._on[key] = value > bar
        if self._on["pq"]:
            return POOR_QUALITY
        return record_label_from_families(self._on["cas"], self._on["das"])


@njit(cache=True)
def _take(
    ring: np.ndarray, count: int, probs: np.ndarray, pq: int, cas: np.ndarray, das: np.ndarray
) -> int:
    """Each finite row of ``probs`` (n, O) into the ring (3, size) at position ``count``
    (modulo its size): Poor Quality and each family's largest output; the new count."""
    size = ring.shape[1]
    for i in range(probs.shape[0]):
        described = True  # no NaN or infinity: a frame the model described
        for j in range(probs.shape[1]):
            if not np.isfinite(probs[i, j]):
                described = False
                break
        if not described:
            continue
        at = count % size
        ring[0, at] = probs[i, pq]
        ring[1, at] = _largest(probs, i, cas)
        ring[2, at] = _largest(probs, i, das)
        count += 1
    return count


@njit(cache=True)
def _largest(probs: np.ndarray, row: int, columns: np.ndarray) -> float:
    best = 0.0 if columns.shape[0] == 0 else -np.inf
    for c in columns:
        best = max(best, float(probs[row, c]))
    return best


@njit(cache=True)
def _statistics(ring: np.ndarray, filled: int, top: int) -> tuple[float, float, float]:
    return ring[0, :filled].mean(), _top_mean(ring[1], filled, top), _top_mean(ring[2], filled, top)


@njit(cache=True)
def _top_mean(x: np.ndarray, filled: int, top: int) -> float:
    """The mean of the ``top`` largest of ``x[:filled]`` (``top`` ≤ ``filled``), kept in
    descending order by insertion: np.partition gives the same and takes 8 s to compile."""
    best = np.empty(top)
    n = 0
    for i in range(filled):
        v = x[i]
        if n < top:
            j = n
            n += 1
        elif v > best[n - 1]:
            j = n - 1
        else:
            continue
        while j > 0 and best[j - 1] < v:
            best[j] = best[j - 1]
            j -= 1
        best[j] = v
    return best[:n].sum() / n if n else np.nan
