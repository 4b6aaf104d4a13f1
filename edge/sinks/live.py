"""The live strip: per bed, the model's class probabilities and the signal quality at <= 1 Hz
(docs/events.md, "The live topic"). :class:`LiveStrip` keeps each output's maximum since the
bed's last point, so a short wheeze between two points is not lost."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lungwatch.events import SCHEMA_VERSION, TOPIC_ROOT, check_segment

DECIMALS = 3


def live_topic(site: str, device_id: str, stream_id: str) -> str:
    names = ("site", "device_id", "stream_id")
    parts = [check_segment(v, n) for v, n in zip((site, device_id, stream_id), names, strict=True)]
    return f"{TOPIC_ROOT}/{'/'.join(parts)}/live"


def live_payload(site: str, device_id: str, stream_id: str, point: dict[str, Any]) -> str:
    """The JSON of one point (``point``: utc, interval_s, frames, classes, quality_score)."""
    body = {"schema_version": SCHEMA_VERSION, "site": site, "device_id": device_id}
    body.update(stream_id=check_segment(stream_id, "stream_id"), **point)
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


@dataclass
class _Pending:
    maxima: np.ndarray  # (O,) running maximum since the last point
    frames: int = 0
    quality: float | None = None  # lowest score seen


class LiveStrip:
    def __init__(self, classes: Sequence[str], interval_s: float) -> None:
        self.classes, self.interval_s = tuple(classes), interval_s
        self._pending: dict[str, _Pending] = {}
        self._next_s: dict[str, float] = {}

    def add(self, stream_id: str, probs: np.ndarray, quality_score: float | None) -> None:
        """``probs``: (n, O) output frames or (O,) one window of one bed; n may be 0."""
        frames = np.asarray(probs, dtype=np.float64).reshape(-1, len(self.classes))
        if frames.shape[0] == 0:
            return
        pending = self._pending.setdefault(stream_id, _Pending(np.zeros(len(self.classes))))
        np.maximum(pending.maxima, frames.max(axis=0), out=pending.maxima)
        pending.frames += frames.shape[0]
        if quality_score is not None:
            low = pending.quality
            pending.quality = quality_score if low is None else min(low, quality_score)

    def due(self, now_s: float, utc: str) -> list[tuple[str, dict[str, Any]]]:
        """(stream id, point) of every bed with new frames whose interval has passed."""
        points = []
        for stream_id, pending in list(self._pending.items()):
            if now_s < self._next_s.get(stream_id, now_s):
                continue
            classes = {
                name: round(float(min(max(value, 0.0), 1.0)), DECIMALS)
                for name, value in zip(self.classes, pending.maxima, strict=True)
            }
            quality = None if pending.quality is None else round(float(pending.quality), DECIMALS)
            point = {"utc": utc, "interval_s": self.interval_s, "frames": pending.frames}
            point.update(classes=classes, quality_score=quality)
            points.append((stream_id, point))
            del self._pending[stream_id]
            self._next_s[stream_id] = now_s + self.interval_s
        return points
