"""Where events go: the :class:`Sink` protocol and a fan-out over several sinks. Import a sink
(``stdout``, ``jsonl``, ``mqtt``: needs paho-mqtt) from its module; this package imports none.
The ``publish_*`` functions give a sink what it has a method for (``publish_many``,
``publish_live``, ...; the MQTT sink has them all) and skip the sinks without."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from lungwatch.errors import LungwatchError
from lungwatch.events import Event


class SinkError(LungwatchError):
    """A sink cannot take events (closed, misconfigured, unwritable)."""


@runtime_checkable
class Sink(Protocol):
    """What the runtime needs from a sink. Every method is called from one publisher thread."""

    def publish(self, event: Event) -> None:
        """Take one event; returns quickly (a sink that needs the network spools it)."""

    def publish_metrics(self, stream_id: str, metrics: dict[str, Any]) -> None:
        """Take one stream's counters."""

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything taken so far is delivered; False if ``timeout_s`` ran out."""

    def close(self) -> None:
        """Flush (within the sink's own timeout), release resources; idempotent."""


def publish_all(sink: Sink, events: Sequence[Event]) -> None:
    if not events:
        return
    publish_many = getattr(sink, "publish_many", None)
    if publish_many is not None:
        publish_many(events)
        return
    for event in events:
        sink.publish(event)


def _offer(sink: Sink, method: str, *args: Any) -> None:
    take = getattr(sink, method, None)
    if take is not None:
        take(*args)


def publish_verdict(sink: Sink, stream_id: str, verdict: dict[str, Any] | None) -> None:
    """A bed's new rolling verdict (None: withdrawn, the stream ended)."""
    _offer(sink, "publish_verdict", stream_id, verdict)


def publish_respiration(sink: Sink, stream_id: str, reading: dict[str, Any] | None) -> None:
    """A bed's breathing (None: withdrawn, the stream ended)."""
    _offer(sink, "publish_respiration", stream_id, reading)


def publish_ack(sink: Sink, stream_id: str, target: str, user: str, ended: int) -> None:
    _offer(sink, "publish_ack", stream_id, target, user, ended)


def publish_summary(sink: Sink, stream_id: str, summary: dict[str, Any] | None) -> None:
    """A bed's summary (None: withdrawn, the stream ended)."""
    _offer(sink, "publish_summary", stream_id, summary)


def publish_live(sink: Sink, stream_id: str, point: dict[str, Any]) -> None:
    _offer(sink, "publish_live", stream_id, point)


class MultiSink:
    """Fans every call out to ``sinks`` in order (e.g. stdout and MQTT)."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = tuple(sinks)

    def publish(self, event: Event) -> None:
        for sink in self.sinks:
            sink.publish(event)

    def publish_many(self, events: Sequence[Event]) -> None:
        for sink in self.sinks:
            publish_all(sink, events)

    def publish_metrics(self, stream_id: str, metrics: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.publish_metrics(stream_id, metrics)

    def publish_live(self, stream_id: str, point: dict[str, Any]) -> None:
        self._fan("publish_live", stream_id, point)

    def publish_verdict(self, stream_id: str, verdict: dict[str, Any] | None) -> None:
        self._fan("publish_verdict", stream_id, verdict)

    def publish_respiration(self, stream_id: str, reading: dict[str, Any] | None) -> None:
        self._fan("publish_respiration", stream_id, reading)

    def publish_ack(self, stream_id: str, target: str, user: str, ended: int) -> None:
        self._fan("publish_ack", stream_id, target, user, ended)

    def publish_summary(self, stream_id: str, summary: dict[str, Any] | None) -> None:
        self._fan("publish_summary", stream_id, summary)

    def _fan(self, method: str, *args: Any) -> None:
        for sink in self.sinks:
            _offer(sink, method, *args)

    def flush(self, timeout_s: float) -> bool:
        deadline_s = time.monotonic() + timeout_s
        return all([sink.flush(max(0.0, deadline_s - time.monotonic())) for sink in self.sinks])

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
