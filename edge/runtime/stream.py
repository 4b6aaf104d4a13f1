"""One bed of the runtime: its source and chain, how it ends, its counters and latencies."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np

from edge.bed.agebands import band_for_age
from edge.bed.chain import BedChain
from edge.evidence.recorder import ClipRecorder
from edge.monitor import Monitor
from edge.runtime.config import StreamConfig
from edge.sources import AudioSource, SourceChunk, SourceEnded, SourceError
from lungwatch.events import format_utc

MAX_LATENCIES = 100_000  # per stream and metrics interval
# the longest a read chunk waits in the stream for the rest of its window (and at most half
# the gate's stall timeout, which counts the time since audio was pushed)
MAX_HOLD_S = 1.0


class Stream:
    def __init__(
        self, config: StreamConfig, source: AudioSource, model: Monitor, index: int = 0
    ) -> None:
        """``index`` (place in the config) staggers the bed's breath analyses (``open_bed``)."""
        self.config, self.source, self.id = config, source, config.id
        self.rate_hz = source.sample_rate_hz
        age = config.age_band if config.age_years is None else band_for_age(config.age_years).name
        self.bed = model.open_bed(config.id, age, stagger=index)
        self.respiration_sent: tuple[float, str] | None = None  # (when, state) last published
        self.summary_sent = False  # its first summary (name, location) goes with its first window
        self.recorder: ClipRecorder | None = None  # the bed's evidence clips (when sent)
        self.chain: BedChain = self.bed.chain  # the bed's front end, state, gate, detector
        self.ending: str | None = None  # why the stream ends once its flushed frames are in
        self.read_error: SourceEnded | SourceError | None = None  # taken on the next round
        # plain chunks read, not pushed: they wait for their window (Runtime._read), <= hold_s
        self.waiting: list[SourceChunk] = []
        self.waiting_samples = 0
        self.waiting_since: float | None = None
        self.hold_s = min(MAX_HOLD_S, self.chain.gate.config.stall_timeout_s / 2.0)
        self.t0_posix: float | None = None  # wall time of sample 0
        self.ended = False
        self.counters = {"chunks": 0, "samples": 0, "windows": 0, "events": 0, "notices": 0}
        self.latencies_ms: deque[float] = deque(maxlen=MAX_LATENCIES)
        # since the last report: per read, the wait of its oldest chunk since ``captured_s``
        self.read_waits_ms: deque[float] = deque(maxlen=MAX_LATENCIES)

    def take_waiting(self) -> list[SourceChunk]:
        chunks = self.waiting
        self.waiting, self.waiting_samples, self.waiting_since = [], 0, None
        return chunks

    def utc(self, sample: int) -> str:
        """Asked before the first chunk came (a stall's onset), it fixes the timeline with
        ``sample`` as now, so every later time lies on the same one."""
        if self.t0_posix is None:
            self.t0_posix = time.time() - sample / self.rate_hz
        return format_utc(self.t0_posix + sample / self.rate_hz)

    def metrics(self, open_events: int) -> dict[str, Any]:
        """Counters since the start, drops, and window latency since the last report."""
        p = self.chain.pipeline
        drops = {"missing_samples": p.missing_samples, "overlap_samples": p.overlap_samples_dropped}
        values: dict[str, Any] = {**self.counters, "state_resets": self.chain.state_resets}
        values.update(frames=p.frames_complete, **drops, drops=sum(drops.values()))
        values.update(invalid_samples=p.invalid_samples, open_events=open_events)
        values["latency_windows"] = len(self.latencies_ms)
        values.update(_percentiles_ms("latency_ms", self.latencies_ms))
        values["read_wait_reads"] = len(self.read_waits_ms)
        values.update(_percentiles_ms("read_wait_ms", self.read_waits_ms))
        rejections = getattr(self.source, "rejections", None)  # a stethoscope link's refusals
        if callable(rejections):
            values.update({f"link_{reason}": n for reason, n in rejections().items()})
        return values


def _percentiles_ms(prefix: str, values: deque[float]) -> dict[str, float | None]:
    """``prefix_p50`` / ``_p99`` / ``_max`` of ``values`` (None when empty), which it clears."""
    data = np.array(values, dtype=np.float64)
    values.clear()
    found = np.percentile(data, (50, 99, 100)) if data.size else [None] * 3
    return {
        f"{prefix}_{name}": None if value is None else round(float(value), 3)
        for name, value in zip(("p50", "p99", "max"), found, strict=True)
    }
