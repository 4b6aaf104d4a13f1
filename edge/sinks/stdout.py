"""A sink that prints one readable line per event (and per metrics report) to a text stream.
Example lines::

    2026-05-09T07:35:25.123Z ward-3/bed-1 Wheeze onset [medium] conf=0.91 samples 16000..
    2026-05-09T07:35:27.003Z ward-3/bed-1 Wheeze ended [medium] conf=0.88 samples 16000..31040
    metrics ward-3/bed-1 frames=12000 windows=59 events=2
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO

from edge.sinks import SinkError
from lungwatch.events import Event


def format_event(event: Event) -> str:
    when = event.end_utc if event.state == "ended" else event.start_utc
    parts = [f"{when} {event.site}/{event.stream_id} {event.type} {event.state} [{event.priority}]"]
    if event.confidence is not None:
        parts.append(f"conf={event.confidence:.2f}")
    if event.start_sample is not None:
        end = "" if event.end_sample is None else str(event.end_sample)
        parts.append(f"samples {event.start_sample}..{end}")
    if "score" in event.quality:
        parts.append(f"quality={event.quality['score']:.2f}")
    parts.extend(f"{key}={value}" for key, value in event.detail.items())
    return " ".join(parts)


class StdoutSink:
    """Flushed per line (per group from ``publish_many``); ``show_metrics``: metrics lines too."""

    def __init__(self, stream: TextIO | None = None, show_metrics: bool = False) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._show_metrics = show_metrics
        self._closed = False

    def publish(self, event: Event) -> None:
        self._write(format_event(event))

    def publish_many(self, events: Sequence[Event]) -> None:
        if events:
            self._write("\n".join(format_event(event) for event in events))

    def publish_metrics(self, stream_id: str, metrics: dict[str, Any]) -> None:
        if self._show_metrics:
            values = " ".join(f"{key}={value}" for key, value in metrics.items())
            self._write(f"metrics {stream_id} {values}")

    def publish_verdict(self, stream_id: str, verdict: dict[str, Any] | None) -> None:
        if verdict is None:
            self._write(f"{stream_id} verdict withdrawn (stream ended)")
            return
        scores = " ".join(f"{k}={v:.2f}" for k, v in verdict.get("scores", {}).items())
        where = f"{verdict['site']}/{stream_id}" if "site" in verdict else stream_id
        self._write(f"{verdict.get('utc', '')} {where} verdict {verdict['verdict']} {scores}")

    def flush(self, timeout_s: float) -> bool:
        if not self._closed:
            self._stream.flush()
        return True

    def close(self) -> None:
        """Flush; the stream itself is left open (it is not ours)."""
        self.flush(0.0)
        self._closed = True

    def _write(self, line: str) -> None:
        if self._closed:
            raise SinkError("stdout sink is closed")
        self._stream.write(line + "\n")
        self._stream.flush()
