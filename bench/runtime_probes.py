"""Timing probes for ``bench.runtime``, wrapped around the runtime's public objects.

None changes what the runtime does; each records when something happened on the
``time.perf_counter`` clock (one clock for every thread). :class:`AckProbe` reads MqttSink
internals (``_client``); ``bench/results/runtime.md`` names the hook that would replace it.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.sinks import Sink, publish_all
from edge.sources.base import AudioSource, SourceChunk
from lungwatch.events import Event


class TimedSource:
    """An :class:`~edge.sources.base.AudioSource` that notes when its last chunk was read (the
    close of a window) and can hold the stream back at its start, to stagger the streams."""

    def __init__(self, inner: AudioSource, skip_reads: int = 0, delay_s: float = 0.0) -> None:
        self.inner = inner
        self.stream_id, self.sample_rate_hz = inner.stream_id, inner.sample_rate_hz
        self.last_read_s = 0.0
        self.last_captured_s = 0.0  # paced sources: when the last chunk's end was captured
        self._t0_s: float | None = None
        self._skip_reads, self._delay_s = skip_reads, delay_s
        self._start_at_s: float | None = None  # first read + delay_s

    def read(self, timeout_s: float) -> SourceChunk | None:
        if self._skip_reads > 0:
            self._skip_reads -= 1
            return None
        if self._delay_s > 0.0:
            now_s = time.perf_counter()
            if self._start_at_s is None:
                self._start_at_s = now_s + self._delay_s
            if now_s < self._start_at_s:
                return None
            self._delay_s = 0.0
        chunk = self.inner.read(timeout_s)
        if chunk is not None:
            now_s = time.perf_counter()
            end_sample = chunk.first_sample + chunk.samples.shape[0]
            if self._t0_s is None:  # the first chunk's last sample was captured just now
                self._t0_s = now_s - end_sample / self.sample_rate_hz
            self.last_read_s = now_s
            self.last_captured_s = self._t0_s + end_sample / self.sample_rate_hz
        return chunk

    def close(self) -> None:
        self.inner.close()


@dataclass
class Published:
    event_id: str
    window_closed_s: float
    captured_s: float  # paced sources: when the window's last sample was captured
    published_s: float
    measured: bool  # published while the measurement ran (not during warm-up or shutdown)


class TimedBackend:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls, self.seconds = 0, 0.0

    def infer(self, features: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        start_s = time.perf_counter()
        probs, new_state = self.inner.infer(features, state)
        self.seconds += time.perf_counter() - start_s
        self.calls += 1
        return probs, new_state

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class TimingSink:
    """Forwards everything to ``inner``; notes each event's window close and publish times."""

    def __init__(self, inner: Sink, sources: dict[str, TimedSource]) -> None:
        self.inner, self.sources = inner, sources
        self.published: list[Published] = []
        self.measuring = False
        # the runtime's own measure: each bed's read_wait_ms_p99 of every metrics report
        # published while measuring (paced sources only; null reports are not kept)
        self.read_wait_p99_ms: list[float] = []

    def publish(self, event: Event) -> None:
        self._note(event, time.perf_counter())
        self.inner.publish(event)

    def publish_many(self, events: Sequence[Event]) -> None:
        now_s = time.perf_counter()
        for event in events:
            self._note(event, now_s)
        publish_all(self.inner, events)

    def _note(self, event: Event, now_s: float) -> None:
        source = self.sources.get(event.stream_id)
        closed_s = source.last_read_s if source is not None else now_s
        captured_s = source.last_captured_s if source is not None else now_s
        self.published.append(Published(event.id, closed_s, captured_s, now_s, self.measuring))

    def publish_metrics(self, stream_id: str, metrics: dict[str, Any]) -> None:
        wait = metrics.get("read_wait_ms_p99")
        if self.measuring and wait is not None:
            self.read_wait_p99_ms.append(float(wait))
        self.inner.publish_metrics(stream_id, metrics)

    def flush(self, timeout_s: float) -> bool:
        return self.inner.flush(timeout_s)

    def close(self) -> None:
        self.inner.close()


class AckProbe:
    """Notes the event id behind each QoS 1 message id and when each PUBACK came."""

    def __init__(self, mqtt_sink: Any) -> None:
        self.sink = mqtt_sink
        client = mqtt_sink._client  # no public hook yet, see the module doc
        self._publish, self._on_publish = client.publish, client.on_publish
        self._sent: dict[int, list[str | None]] = defaultdict(list)
        self._acked: dict[int, list[float]] = defaultdict(list)
        client.publish = self.publish
        client.on_publish = self.on_publish

    def publish(self, topic: str, payload: Any = None, qos: int = 0, retain: bool = False,
                properties: Any = None) -> Any:  # fmt: skip
        info = self._publish(topic, payload, qos, retain, properties)
        if qos > 0:
            self._sent[info.mid].append(_event_id(payload))
        return info

    def on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._acked[mid].append(time.perf_counter())
        self._on_publish(client, userdata, mid, reason, props)

    def ack_times(self) -> dict[str, float]:
        """Event id -> PUBACK time (the k-th ack of a message id answers its k-th send)."""
        return {
            event_id: acked_s
            for mid, ids in self._sent.items()
            for event_id, acked_s in zip(ids, self._acked.get(mid, []), strict=False)
            if event_id is not None
        }


def _event_id(payload: Any) -> str | None:
    try:
        body = json.loads(payload)
    except (TypeError, ValueError):
        return None
    return body.get("id") if isinstance(body, dict) and "schema_version" in body else None


def percentiles_ms(seconds: list[float]) -> dict[str, float | int]:
    if not seconds:
        return {"n": 0}
    ms = np.asarray(seconds) * 1e3
    return {
        "n": len(seconds),
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "max": float(ms.max()),
    }


def latencies(sink: TimingSink, probe: AckProbe | None) -> dict[str, dict[str, float | int]]:
    """Capture -> PUBACK is meaningful when paced: it adds the time a chunk waited to be read."""
    measured = [p for p in sink.published if p.measured]
    result = {
        "close_to_publish_ms": percentiles_ms([p.published_s - p.window_closed_s for p in measured])
    }
    if probe is not None:
        acks = probe.ack_times()
        acked = [p for p in measured if p.event_id in acks]
        result["close_to_puback_ms"] = percentiles_ms(
            [acks[p.event_id] - p.window_closed_s for p in acked]
        )
        result["close_to_puback_ms"]["unacked"] = len(measured) - len(acked)
        result["capture_to_puback_ms"] = percentiles_ms(
            [acks[p.event_id] - p.captured_s for p in acked]
        )
    waits = np.array(sink.read_wait_p99_ms, dtype=np.float64)
    if waits.size:  # the runtime's own measure, as a dashboard sees it: per bed and report
        result["read_wait_p99_ms"] = {
            "n": int(waits.size),  # bed reports
            "median": float(np.median(waits)),
            "max": float(waits.max()),
        }
    return result
