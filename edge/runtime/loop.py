"""``lungwatch run --config FILE``: the bedside runtime (``docs/runtime.md``).

One process serves every stream (bed) of the config. Each round reads every stream once, in
groups of ``round_group`` streams; a group's ready windows go to the inference backend in one
batch, and their events to the sinks together at the end of the group.

    lungwatch run --config edge/configs/ward.yaml [--set key=value ...] [-v]

Acknowledge, signals and shutdown: docs/runtime.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge.bed.pipeline import WindowReady
from edge.evidence.publisher import EvidencePublisher
from edge.evidence.recorder import ClipRecorder, Identity
from edge.inference.manifest import MANIFEST_NAME, load_manifest
from edge.inference.streaming import OutputFrames
from edge.monitor import Monitor
from edge.runtime.config import (
    Command,
    CommandError,
    RuntimeConfig,
    check_against_manifest,
    load_runtime_config,
    open_command_verifier,
    open_sinks,
    open_stream_source,
    parse_command,
    short_repr,
    start_embedded_broker,
)
from edge.runtime.latched import LatchedStore
from edge.runtime.outbox import EventOutbox
from edge.runtime.publish import Publisher
from edge.runtime.stream import Stream
from edge.sinks import Sink, publish_ack, publish_live
from edge.sinks.live import LiveStrip
from edge.sources import SourceChunk, SourceEnded, SourceError
from lungwatch.cli import ArgumentParser
from lungwatch.commandauth import CommandVerifier
from lungwatch.errors import ConfigError, LungwatchError
from lungwatch.events import utc_now
from lungwatch.private import private_umask
from lungwatch.supervision import ThreadStoppedError, first_failure, stop_on_signals

log = logging.getLogger("lungwatch.runtime")
MAX_READS_PER_ROUND = 64  # source chunks one stream's read may gather (fairness between beds)
SHUTDOWN = "shutdown"  # why every stream ends when the runtime stops
WATCH_EVERY_S = 1.0  # the threads the run depends on are checked this often
# the beds' metrics reports come in this many slices over the interval, not all in one round
# (each report wakes paho's network thread, which takes the GIL)
METRICS_SLICES = 10
MONITOR_KEYS = ("detector", "gate", "backend", "state_reset_gap_ms", "verdict", "respiration")
CONFIG_HELP = (
    "runtime YAML file; given again, each later file is merged over the ones before "
    "(e.g. the client file lungwatch access writes: broker login, command key)"
)


def open_model(config: RuntimeConfig, source: str = "<config>") -> Monitor:
    folder = Path(config.model.dir)
    manifest = load_manifest(folder / MANIFEST_NAME)
    check_against_manifest(config, manifest, source)
    options = {key: getattr(config, key) for key in MONITOR_KEYS}
    options.update(check_sha256=config.model.check_sha256, source=source)
    monitor = Monitor.load(folder / config.model.file, **options)
    log.info("model %s (%s) on %s", manifest.model_id, config.model.file, monitor.backend.name)
    return monitor


Ready = tuple[Stream, WindowReady, float]  # stream, window, perf_counter when its chunk came


class Runtime:
    def __init__(
        self,
        config: RuntimeConfig,
        model: Monitor,
        streams: Sequence[Stream],
        sink: Sink,
        *,
        sink_stats: Callable[[], dict[str, int]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_frames: Callable[[Stream, OutputFrames], None] | None = None,
        commands: CommandVerifier | None = None,
        evidence: EvidencePublisher | None = None,
        latched: LatchedStore | None = None,
        watch: Sequence[Callable[[], str | None]] = (),
    ) -> None:
        """``latched`` None: latched alarms end with the process. ``watch``: thread checks, each
        None or why its thread stopped (:meth:`run` then stops, raising ThreadStoppedError)."""
        self._watch = list(watch)
        self.config, self.model, self.sink = config, model, sink
        self.publisher = Publisher(config, model, sink, evidence, clock)
        if evidence is not None:
            for stream in streams:
                identity = Identity(config.site, config.device_id, stream.id)
                stream.recorder = ClipRecorder(config.evidence, identity, stream.rate_hz,
                                               model.grid, model.outputs, stream.utc)  # fmt: skip
        self._verifier = commands  # None: no key here, only unsigned commands if allowed
        self.command_counts: dict[str, int] = {"accepted": 0, "refused": 0}
        self._on_frames = on_frames  # sees every bed's output frames (offline runs keep them)
        self.streams = list(streams)
        self._sink_stats, self._clock = sink_stats, clock
        self._metrics_slices = max(1, min(len(self.streams), METRICS_SLICES))
        self._metrics_slice = 0
        self._metrics_due = clock() + config.metrics_interval_s / self._metrics_slices
        self._metrics_cycle: list[tuple[str, dict[str, Any]]] = []
        self.live = LiveStrip(model.outputs, config.live_interval_s)
        self._lock = threading.Lock()  # acknowledge() comes from the MQTT network thread
        self._store = latched
        # priorities whose alarms wait for an acknowledgement
        self._latching = frozenset(("high", *config.detector.latching, *config.gate.latching))
        carried = latched.load() if latched is not None else {}
        served = {s.id for s in self.streams}
        self._carried_in = {bed: events for bed, events in carried.items() if bed in served}
        self._orphans = {bed: events for bed, events in carried.items() if bed not in served}
        for bed, events in self._orphans.items():
            log.warning(
                "%d latched alarm(s) of bed %s are kept in %s, but this config serves no such "
                "bed: they are announced again when it does", len(events), bed, latched.path,  # type: ignore[union-attr]
            )  # fmt: skip
        self._saved: tuple[tuple[str, bool], ...] | None = None
        self.batches = {"calls": 0, "windows": 0, "max_windows": 0}
        self._behind = False  # the last load check found audio waiting too long for its read

    @property
    def events(self) -> EventOutbox:
        return self.publisher.outbox

    @property
    def running(self) -> bool:
        return any(not s.ended for s in self.streams)

    def step(self) -> bool:
        """One round, then the stall check of every stream. True if any audio arrived."""
        now = self._clock()
        got_audio = False
        live = [stream for stream in self.streams if not stream.ended]
        size = self.config.round_group or len(live) or 1
        for first in range(0, len(live), size):
            ready: list[Ready] = []
            for stream in live[first : first + size]:
                got_audio |= self._read(stream, now, ready)
            with self._lock:
                self._infer_and_detect(ready)
                self.events.flush()  # the group's events together (one spool transaction)
        with self._lock:
            for stream in self.streams:
                if not stream.ended and stream.ending is None:
                    self.publisher.emit(stream, stream.chain.tick(now))
            self.events.flush()
            self.save_latched()
        for stream in self.streams:
            if stream.ending is not None and not stream.ended:
                self._end_stream(stream, stream.ending)
        if self.config.live_interval_s > 0:
            self._publish_live(now)
        if now >= self._metrics_due:
            self._publish_due_metrics(now)
        return got_audio

    def _read(self, stream: Stream, now: float, ready: list[Ready]) -> bool:
        """Read up to the next window's audio and push it as one chunk: the front end runs once
        per window (docs/runtime.md, "The loop and batching"). True if audio came or was pushed."""
        if stream.read_error is not None:  # raised after last round's chunks
            return self._read_failed(stream, ready)
        chunks, gathered, fresh = stream.waiting, stream.waiting_samples, 0
        wanted = stream.chain.pipeline.samples_to_next_window
        while fresh < MAX_READS_PER_ROUND and gathered < wanted:
            try:
                chunk = stream.source.read(0.0)
            except (SourceEnded, SourceError) as exc:
                stream.read_error = exc
                break
            if chunk is None:
                break
            if fresh == 0 and chunk.captured_s is not None:  # the oldest chunk of the read
                stream.read_waits_ms.append((self._clock() - chunk.captured_s) * 1e3)
            fresh += 1
            chunks.append(chunk)
            gathered += int(chunk.samples.shape[0])
            if chunk.missing or chunk.notices:
                break
        if not chunks:
            return self._read_failed(stream, ready)
        if self._holds(stream, chunks, gathered, wanted, now):
            stream.waiting_samples = gathered
            if stream.t0_posix is None:  # the timeline starts when its audio was read
                _start_timeline(stream, _coalesced(chunks)[0])
            return fresh > 0
        self._push(stream, stream.take_waiting(), now, ready)  # ``chunks``: the same list
        return True

    def _holds(
        self, stream: Stream, chunks: list[SourceChunk], gathered: int, wanted: int, now: float
    ) -> bool:
        """Whether ``chunks`` short of the next window wait for the rest: at most ``hold_s`` on
        the runtime's clock (the clock the gate's stall check counts on)."""
        last = chunks[-1]
        if gathered >= wanted or stream.read_error is not None or last.missing or last.notices:
            return False
        reached = last.first_sample + int(last.samples.shape[0])
        if reached - stream.chain.pipeline.samples_seen != gathered:  # a jump in the timeline
            return False
        if stream.waiting_since is None:
            stream.waiting_since = now
        return now - stream.waiting_since < stream.hold_s

    def _push(
        self, stream: Stream, chunks: list[SourceChunk], now: float, ready: list[Ready]
    ) -> None:
        arrived = time.perf_counter()
        for chunk in _coalesced(chunks):
            if stream.t0_posix is None:
                _start_timeline(stream, chunk)
            stream.counters["samples"] += int(chunk.samples.shape[0])
            stream.counters["notices"] += len(chunk.notices)
            transitions, windows = stream.chain.push(chunk, now)
            if stream.recorder is not None:
                stream.recorder.audio(chunk.first_sample, chunk.samples)
            with self._lock:
                self.publisher.emit(stream, transitions)
            ready.extend((stream, window, arrived) for window in windows)
        stream.counters["chunks"] += len(chunks)

    def _read_failed(self, stream: Stream, ready: list[Ready]) -> bool:
        """The source's end or failure (raised by the read that found no chunk)."""
        exc, stream.read_error = stream.read_error, None
        if isinstance(exc, SourceEnded):
            flushed = stream.chain.flush()
            if flushed:  # the last frames go through the model first; the stream ends after
                stream.ending = "stream end"
                ready.extend((stream, window, time.perf_counter()) for window in flushed)
            else:
                self._end_stream(stream, "stream end")
        elif exc is not None:
            log.error("stream %s: %s", stream.id, exc)
            self._end_stream(stream, "source failed")
        return False

    def _infer_and_detect(self, ready: list[Ready]) -> None:
        if not ready:
            return
        steps = self.model.process([(stream.chain, window) for stream, window, _ in ready])
        batches = self.batches
        batches["calls"] += 1
        batches["windows"] += len(ready)
        batches["max_windows"] = max(batches["max_windows"], len(ready))
        for (stream, _, arrived), step in zip(ready, steps, strict=True):
            stream.counters["windows"] += 1
            if not step.flushed:
                self.live.add(stream.id, step.frames.probs, step.quality.get("score"))
            if self._on_frames is not None:
                self._on_frames(stream, step.frames)
            self.publisher.step(stream, step)
            if not step.flushed:
                stream.latencies_ms.append((time.perf_counter() - arrived) * 1e3)

    @property
    def evidence_channel(self) -> EvidencePublisher | None:
        return self.publisher.evidence

    def _end_stream(self, stream: Stream, why: str, flush: bool = True) -> None:
        """``flush``: hand the bed's last events and summary to the sinks now (False: the caller
        flushes every bed's at once)."""
        stream.ended = True
        with self._lock:
            held = self._store is not None and why == SHUTDOWN
            keep = dict(self.events.held(stream.id, self._latching)) if held else {}
            transitions = [t for t in stream.chain.finish(why) if t.key not in keep]
            self.publisher.emit(stream, transitions)
            end = stream.chain.pipeline.samples_seen
            for key, event in keep.items():  # still held when monitoring stopped
                if not event.detail.get("latched"):
                    self.events.latch_at_shutdown(stream, key, end)
            if stream.recorder is not None:
                self.publisher.clips(stream, stream.recorder.finish_cuts())
            self.publisher.end(stream, held=bool(keep))
            if flush:  # the bed's last events, then its summary withdrawn or held
                self.events.flush()
            if keep:
                log.warning("stream %s: %d unacknowledged alarm(s) held over the restart",
                            stream.id, len(keep))  # fmt: skip
        log.info("stream %s: %s after %d samples", stream.id, why, stream.counters["samples"])

    def acknowledge(self, stream_id: str, target: str, user: str = "") -> int:
        """Acknowledge the events of ``stream_id`` whose type or key is ``target``
        (docs/runtime.md, "Acknowledge"). Thread-safe; the number of events ended."""
        stream = next((s for s in self.streams if s.id == stream_id), None)
        if stream is None:
            known = ", ".join(s.id for s in self.streams)
            raise CommandError(
                f"command.stream_id {short_repr(stream_id)} is not served here ({known})"
            )
        with self._lock:
            if stream.ended:  # the stream's events are over; the sinks may be closing
                raise CommandError(f"command.stream_id {short_repr(stream_id)} has ended")
            self.events.acknowledged(stream.id, target)
            transitions = stream.chain.acknowledge(target)
            if user:
                transitions = [dataclasses.replace(t, acknowledged_by=user) for t in transitions]
            self.publisher.emit(stream, transitions)
            carried = self.events.end_carried(stream, target, user)
            if carried:
                self.publisher.summary(stream)
            self.events.flush()
            self.save_latched()
        return len(transitions) + len(carried)

    def authorise(self, command: Command) -> str:
        """Who sent ``command`` ("" for an unsigned one the config accepts); CommandError or
        CommandAuthError when the device must not act on it (``lungwatch.commandauth``)."""
        if command.signed and self._verifier is not None:
            return self._verifier.verify(command.body)
        if self.config.commands.accept_unsigned:
            return ""
        if self._verifier is None:
            raise CommandError("commands are refused here: no commands.key_file is configured")
        return self._verifier.verify(command.body)  # unsigned: refused and counted

    def handle_command(self, payload: bytes) -> None:
        """Bad commands (malformed, unsigned, forged, stale, replayed): logged, counted, ignored."""
        try:
            command = parse_command(payload)
            user = self.authorise(command)
            ended = self.acknowledge(command.stream_id, command.target, user)
        except LungwatchError as exc:
            self.command_counts["refused"] += 1
            log.warning("command ignored: %s", exc)
            return
        self.command_counts["accepted"] += 1
        # views and the gateway learn the bed took it, even where it ended no episode
        publish_ack(self.sink, command.stream_id, command.target, user, ended)
        who = f" by {short_repr(user)}" if user else " (unsigned)"
        target = short_repr(command.target)
        log.info("acknowledge %s %s%s: %d event(s) ended", command.stream_id, target, who, ended)

    def _publish_live(self, now: float) -> None:
        with self._lock:
            for stream_id, point in self.live.due(now, utc_now()):
                publish_live(self.sink, stream_id, point)

    def publish_metrics(self) -> None:
        """One metrics message per stream now (as at the end of a run), then the load check."""
        self._check_read_wait(self._publish_reports(self.streams))

    def _publish_due_metrics(self, now: float) -> None:
        """The metrics reports that are due (:data:`METRICS_SLICES`); each whole cycle of
        reports goes through the load check together."""
        count, slices = len(self.streams), self._metrics_slices
        if count == 0:
            return
        step = self.config.metrics_interval_s / slices
        due: list[Stream] = []
        for _ in range(slices):
            if now < self._metrics_due:
                break
            k = self._metrics_slice
            due += self.streams[k * count // slices : (k + 1) * count // slices]
            self._metrics_slice = (k + 1) % slices
            self._metrics_due += step
        if now >= self._metrics_due:  # held up longer than an interval: go on from now
            self._metrics_due = now + step
        cycle_left = count - len(self._metrics_cycle)
        reports = self._publish_reports(due)
        self._metrics_cycle += reports[:cycle_left]
        if len(self._metrics_cycle) >= count:
            self._check_read_wait(self._metrics_cycle)
            self._metrics_cycle = reports[cycle_left:]

    def _publish_reports(self, streams: Sequence[Stream]) -> list[tuple[str, dict[str, Any]]]:
        stats = self._sink_stats() if self._sink_stats is not None else {}
        shared: dict[str, Any] = {f"mqtt_{key}": value for key, value in stats.items()}
        # the load check's limit (null: off), so a dashboard judges by this device's setting
        limit = self.config.read_wait_warn_ms
        shared["read_wait_warn_ms"] = limit if limit > 0 else None
        shared.update({f"commands_{key}": n for key, n in self.command_counts.items()})
        if self.publisher.evidence is not None:
            shared.update({f"evidence_{k}": n for k, n in self.publisher.evidence.stats().items()})
        if self._verifier is not None:  # why signed commands were refused, by reason
            refused = {k: n for k, n in self._verifier.counts.items() if k != "accepted"}
            shared.update({f"commands_refused_{key}": n for key, n in refused.items()})
        with self._lock:
            reports = [(s.id, s.metrics(self.events.open_events(s.id))) for s in streams]
            for stream_id, values in reports:
                self.sink.publish_metrics(stream_id, {**values, **shared})
        return reports

    def _check_read_wait(self, reports: list[tuple[str, dict[str, Any]]]) -> None:
        limit = self.config.read_wait_warn_ms
        if limit <= 0:
            return
        waits = [(p99, i) for i, v in reports if (p99 := v["read_wait_ms_p99"]) is not None]
        over = [w for w in waits if w[0] > limit]
        if over:
            worst_ms, worst_id = max(over)
            log.warning(
                "the loop is behind: audio waited up to %.0f ms between capture and read "
                "(p99 of bed %s; %d of %d beds over read_wait_warn_ms %.0f); every alarm is "
                "that much later: serve fewer beds on this core (docs/runtime.md, 'Load')",
                worst_ms, worst_id, len(over), len(waits), limit,
            )  # fmt: skip
        elif self._behind and waits:
            log.info("the loop caught up: read wait p99 at most %.0f ms", max(waits)[0])
        self._behind = bool(over) or (self._behind and not waits)

    def announce_carried(self) -> int:
        """The alarms held over the last restart, announced again (and listed in their beds'
        summaries); how many. :meth:`run` calls it first."""
        count = 0
        with self._lock:
            for stream in self.streams:
                events = self._carried_in.pop(stream.id, [])
                for event in events:
                    self.events.carry(stream, event)
                if events:
                    self.publisher.summary(stream)
                    count += len(events)
                    log.warning("bed %s: %d unacknowledged alarm(s) held over the restart",
                                stream.id, len(events))  # fmt: skip
            self.events.flush()
            self.save_latched()
        return count

    def save_latched(self) -> None:
        """Write the file of held alarms when their set changed (under the lock)."""
        if self._store is None or not self.events.held_changed:
            return
        self.events.held_changed = False
        beds = {s.id: [e for _, e in self.events.held(s.id, self._latching)] for s in self.streams}
        beds.update(self._orphans)
        held = [e for events in beds.values() for e in events]
        signature = tuple(sorted((e.episode_id, bool(e.detail.get("latched"))) for e in held))
        if signature == self._saved:
            return
        try:
            self._store.save(beds)
        except OSError as exc:  # the alarms stay in memory
            log.error("cannot write the latched alarms to %s: %s", self._store.path, exc)
            self.events.held_changed = True  # tried again next round
            return
        self._saved = signature

    def run(self, stop: threading.Event) -> None:
        """Step until every source ended, ``stop`` is set or ``max_run_s`` passed; then end
        every open event (but the held latched alarms) and publish the last metrics."""
        self.announce_carried()
        deadline = self._clock() + self.config.max_run_s if self.config.max_run_s else None
        failed, next_check_s = None, self._clock()
        while self.running and not stop.is_set():
            if deadline is not None and self._clock() >= deadline:
                log.info("max_run_s reached")
                break
            if self._watch and self._clock() >= next_check_s:
                next_check_s = self._clock() + WATCH_EVERY_S
                failed = first_failure(self._watch)
                if failed is not None:  # ended as at a signal: latched alarms are kept
                    log.critical("stopping: %s", failed)
                    break
            if not self.step():
                stop.wait(self.config.idle_sleep_s)
        # the audio that arrived goes through the model before its events end
        ready: list[Ready] = []
        for stream in self.streams:
            if not stream.ended and stream.ending is None:
                if stream.waiting:  # what waited for its window, then the flush
                    self._push(stream, stream.take_waiting(), self._clock(), ready)
                ready.extend((stream, w, time.perf_counter()) for w in stream.chain.flush())
        with self._lock:
            self._infer_and_detect(ready)
        for stream in self.streams:
            if not stream.ended:
                self._end_stream(stream, SHUTDOWN, flush=False)  # one transaction for all
        with self._lock:
            self.events.flush()
            self.save_latched()
        self.publish_metrics()
        if failed is not None:
            raise ThreadStoppedError(f"{failed}; the run stopped (its service restarts it)")


def _start_timeline(stream: Stream, chunk: SourceChunk) -> None:
    """The stream's wall time of sample 0: its first chunk's last sample is now."""
    end = chunk.first_sample + int(chunk.samples.shape[0])
    stream.t0_posix = time.time() - end / stream.rate_hz


def _coalesced(chunks: list[SourceChunk]) -> list[SourceChunk]:
    """``chunks`` with each run of plain, contiguous ones joined into one chunk."""
    runs: list[list[SourceChunk]] = []
    for chunk in chunks:
        last = runs[-1][-1] if runs else chunk
        plain = not (last.missing or last.notices or chunk.missing or chunk.notices)
        if runs and plain and chunk.first_sample == last.first_sample + last.samples.shape[0]:
            runs[-1].append(chunk)
        else:
            runs.append([chunk])
    return [run[0] if len(run) == 1 else _joined(run) for run in runs]


def _joined(run: list[SourceChunk]) -> SourceChunk:
    samples = np.concatenate([c.samples for c in run])
    return SourceChunk(samples, run[0].first_sample, captured_s=run[-1].captured_s)


def open_streams(
    config: RuntimeConfig,
    model: Monitor,
    source: str = "<config>",
    unopened: dict[int, str] | None = None,
) -> list[Stream]:
    """With ``unopened``, a stream that fails to open is left out, its index mapped to the error."""
    rate_hz = model.sample_rate_hz
    streams: list[Stream] = []
    for index, stream_config in enumerate(config.streams):
        try:
            audio = open_stream_source(stream_config, rate_hz)
        except LungwatchError as exc:
            if unopened is not None:
                unopened[index] = str(exc)
                continue
            for stream in streams:
                stream.source.close()
            raise ConfigError(f"{source}: streams[{index}].source: {exc}") from None
        streams.append(Stream(stream_config, audio, model, index))
    return streams


class UnopenedSource:
    """Its first read raises the error, so that bed ends and the others run on."""

    def __init__(self, stream_id: str, rate_hz: int, error: str) -> None:
        self.stream_id, self.sample_rate_hz, self.error = stream_id, rate_hz, error

    def read(self, timeout_s: float) -> SourceChunk | None:
        raise SourceError(f"not started: {self.error}")

    def close(self) -> None:
        pass


def _failed_streams(
    config: RuntimeConfig, model: Monitor, unopened: dict[int, str], source: str
) -> list[Stream]:
    if len(unopened) == len(config.streams):
        index, error = next(iter(unopened.items()))
        raise ConfigError(f"{source}: streams[{index}].source: {error}")
    failed = []
    for index, error in sorted(unopened.items()):
        stream_config = config.streams[index]
        log.error("%s: streams[%d] (%s) not started: %s", source, index, stream_config.id, error)
        unopened_source = UnopenedSource(stream_config.id, model.sample_rate_hz, error)
        failed.append(Stream(stream_config, unopened_source, model, index))
    return failed


class Companion(Protocol):
    """Something a caller runs beside the runtime in its process (``lungwatch run``: the ward
    view), started once the broker is known; its ``failure()`` is watched."""

    def __call__(
        self,
        config: RuntimeConfig,
        broker_address: str | None,
        resources: contextlib.ExitStack,
        command_master_key: bytes | None,
        source: str,
    ) -> Watched | None: ...


class Watched(Protocol):
    def failure(self) -> str | None: ...


def serve(
    config: RuntimeConfig,
    stop: threading.Event | None = None,
    source: str = "<config>",
    companions: Sequence[Companion] = (),
) -> Runtime:
    """Open everything, run until done or stopped, close it all (sinks first)."""
    stop = stop or threading.Event()
    with contextlib.ExitStack() as resources:
        model = open_model(config, source)
        resources.callback(model.close)
        unopened: dict[int, str] = {}
        streams = open_streams(config, model, source, unopened)
        streams += _failed_streams(config, model, unopened, source)
        for stream in streams:
            resources.callback(stream.source.close)
        address = start_embedded_broker(config, resources)
        verifier, master = open_command_verifier(config, source)
        beside = [start(config, address, resources, master, source) for start in companions]
        sink, mqtt = open_sinks(config, address)
        resources.callback(sink.close)
        evidence = None
        if mqtt is not None and config.evidence.enabled:
            evidence = EvidencePublisher(config.evidence, mqtt.config).connect()
            resources.callback(evidence.close)
        stats = mqtt.stats if mqtt is not None else None
        store = LatchedStore(config.alarms.path(config.mqtt)) if config.alarms.persist else None
        watch = [w.failure for w in (mqtt, evidence, *beside) if w is not None]
        runtime = Runtime(config, model, streams, sink, sink_stats=stats, commands=verifier,
                          evidence=evidence, latched=store, watch=watch)  # fmt: skip
        if mqtt is not None:
            policy = "signed_or_unsigned" if config.commands.accept_unsigned else (
                "signed" if verifier is not None else "refused")  # fmt: skip
            mqtt.set_command_handler(runtime.handle_command, policy)
            mqtt.connect()
        runtime.run(stop)
    return runtime


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (the loop ends its round and shuts down cleanly; through
    a thread: :func:`lungwatch.supervision.stop_on_signals`)."""
    stop_on_signals(stop)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


def main(argv: list[str] | None = None, companions: Sequence[Companion] = ()) -> int:
    """``lungwatch run`` (``companions``: what the caller runs beside it, :func:`serve`)."""
    parser = ArgumentParser(prog="lungwatch run", description=__doc__)
    parser.add_argument("--config", required=True, type=Path, action="append", help=CONFIG_HELP)
    add_run_options(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    config = load_runtime_config(args.config, args.set)
    stop = threading.Event()
    install_signal_handlers(stop)
    before = private_umask()  # spools, clips, held alarms: 0600 whatever the shell's umask
    try:
        source = "+".join(path.name for path in args.config)
        runtime = serve(config, stop, source=source, companions=companions)
    finally:
        os.umask(before)
    total = sum(s.counters["events"] for s in runtime.streams)
    print(f"lungwatch run: {len(runtime.streams)} streams, {total} event messages", flush=True)
    return 0
