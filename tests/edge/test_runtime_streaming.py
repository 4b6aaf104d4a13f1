"""The runtime on a streaming model (manifest schema 2): real SPRSound audio through the front
end, the per-bed state, one ONNX Runtime call per round and the FrameDetector; the manifest's
fitted detector rules reach the device; a gap resets only its own bed's model state."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from edge.bed.rules import PhaseRule

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from edge.monitor import Monitor
from edge.runtime.loop import Runtime, Stream, open_model
from edge.sources import FileSource
from edge.sources.base import SourceChunk, SourceEnded
from lungwatch.events import Event
from tests.edge.runtime_helpers import (
    MIXED,
    WHEEZES,
    ListSink,
    build,
    config_mapping,
    record_path,
    run_collecting,
    stream,
)
from tests.streaming_fixture import tiny_streaming_folder

ALWAYS = {"on_threshold": 0.02, "off_threshold": 0.01, "min_event_ms": 40, "merge_gap_ms": 0}
NEVER = {"on_threshold": 0.999, "off_threshold": 0.99, "min_event_ms": 40, "merge_gap_ms": 0}
TYPES = ("Fine Crackle", "Coarse Crackle", "Wheeze", "Rhonchi", "Stridor")


def rules(always: str) -> dict:
    return {
        "thresholds": [{"type": t, **(ALWAYS if t == always else NEVER)} for t in TYPES],
        "fitted_on": "test",
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the random model's quality output is near 0.5: the manifest sets its alarm out of reach
    quality = {"poor_on": 0.999, "poor_off": 0.99}
    return tiny_streaming_folder(tmp_path_factory.mktemp("tiny"), rules("Wheeze"), quality)


def mapping(tmp_path: Path, folder: Path, streams: list, **sections) -> dict:
    return config_mapping(
        tmp_path, streams, model={"dir": str(folder), "file": "model.onnx"}, **sections
    )


def test_manifest_rules_drive_the_device_and_the_config_overrides_them(tmp_path, folder):
    source = record_path(WHEEZES)
    config = build(mapping(tmp_path, folder, [stream("b1", source, realtime=False)]))
    runtime, sink = run_collecting(config)
    ended = [e for e in sink.events if e.kind == "physiological" and e.state == "ended"]
    # the manifest makes Wheeze always on and every other class never: one Wheeze over the record
    assert [e.type for e in ended] == ["Wheeze"]
    frames = runtime.streams[0].chain.pipeline.frames_complete
    assert ended[0].start_sample < 400  # from the first frame (40-ms grid, 16-ms centre offset)
    # to the last front-end frame: the stream's end flushes the look-ahead and the last chunk
    # (output frame j spans samples [320 j + 88, 320 (j + 1) + 88): FrameGrid)
    assert ended[0].end_sample == -(-frames // 4) * 320 + 88
    # one call per chunk; the flushed chunks at the end go in one call (state carried)
    windows = runtime.streams[0].counters["windows"]
    through = (-(-frames // 4) + 2) * 4  # real output frames + 2 of look-ahead, x stride 4
    assert windows * 16 >= through > (windows - 1) * 16  # chunks of 4 x 4 front-end frames
    assert runtime.batches["calls"] < windows

    override = {"thresholds": [{"type": "Wheeze", **NEVER}]}
    config = build(
        mapping(tmp_path, folder, [stream("b1", source, realtime=False)], detector=override)
    )
    _, sink = run_collecting(config)
    assert not [e for e in sink.events if e.kind == "physiological"]


def test_a_manifest_phase_rule_puts_the_device_in_phase_mode(tmp_path, tmp_path_factory):
    # Breath always on: the whole record is one phase; Wheeze's phase mean always reaches 0.02
    phases = {"on_threshold": 0.02, "off_threshold": 0.01, "min_phase_ms": 200, "output": "Breath"}
    quality = {"poor_on": 0.999, "poor_off": 0.99}
    detector = {**rules("Wheeze"), "phases": phases}
    folder = tiny_streaming_folder(tmp_path_factory.mktemp("phases"), detector, quality)
    source = record_path(WHEEZES)
    runtime, sink = run_collecting(
        build(mapping(tmp_path, folder, [stream("b1", source, realtime=False)]))
    )
    assert runtime.model.settings.detector.phases == PhaseRule(0.02, 0.01, 200.0, "Breath")
    ended = [e for e in sink.events if e.kind == "physiological" and e.state == "ended"]
    assert [e.type for e in ended] == ["Wheeze"]
    frames = runtime.streams[0].chain.pipeline.frames_complete
    assert ended[0].start_sample < 400
    assert ended[0].end_sample == -(-frames // 4) * 320 + 88
    # the config's own phase rule wins: phases of a quality output that never reaches 0.999
    own = {"phases": {"on_threshold": 0.999, "off_threshold": 0.99, "output": "Poor Quality"}}
    config = build(mapping(tmp_path, folder, [stream("b1", source, realtime=False)], detector=own))
    _, sink = run_collecting(config)
    assert not [e for e in sink.events if e.kind == "physiological"]


def test_beds_share_one_call_per_round(tmp_path, folder):
    streams = [stream(f"b{i}", record_path(MIXED), realtime=False) for i in range(3)]
    config = build(mapping(tmp_path, folder, streams))
    runtime, sink = run_collecting(config)
    windows = sum(s.counters["windows"] for s in runtime.streams)
    assert runtime.batches["max_windows"] == 3
    assert runtime.batches["calls"] * 3 >= windows > runtime.batches["calls"]
    by_bed = {
        s.id: [(e.type, e.start_sample, e.end_sample) for e in sink.events if e.stream_id == s.id]
        for s in runtime.streams
    }
    assert by_bed["b0"] == by_bed["b1"] == by_bed["b2"] != []


class ScriptedSource:
    """An AudioSource over an array, read in fixed chunks; ``gap`` = (at chunk, samples lost)
    moves the next chunk's ``first_sample`` forward, as a reconnecting source does."""

    def __init__(self, samples: np.ndarray, chunk: int, gap: tuple[int, int] | None) -> None:
        self.samples, self.chunk, self.gap = samples, chunk, gap
        self.sample_rate_hz, self._i, self._pos, self._first = 8000, 0, 0, 0

    def read(self, timeout_s: float) -> SourceChunk | None:
        if self._pos >= self.samples.shape[0]:
            raise SourceEnded("end")
        if self.gap is not None and self._i == self.gap[0]:
            self._first += self.gap[1]
            self._pos += self.gap[1]
        piece = self.samples[self._pos : self._pos + self.chunk]
        chunk = SourceChunk(samples=piece, first_sample=self._first)
        self._pos += piece.shape[0]
        self._first += piece.shape[0]
        self._i += 1
        return chunk

    def close(self) -> None:
        """Nothing to release."""


def run_sources(tmp_path: Path, folder: Path, beds: list[str], source_of, sink, **sections):
    """The runtime over ``beds``, each reading ``source_of(bed id)``, into ``sink`` until the
    sources end; ``sections`` extend the config."""
    streams = [stream(bed, "unused.flac") for bed in beds]
    config = build(mapping(tmp_path, folder, streams, **sections))
    model = open_model(config, "test.yaml")
    try:
        opened = [Stream(s, source_of(s.id), model) for s in config.streams]
        runtime = Runtime(config, model, opened, sink)
        runtime.run(threading.Event())
    finally:
        model.backend.close()
    return runtime


def run_scripted(
    tmp_path: Path,
    folder: Path,
    audio: np.ndarray,
    gap_on_b0: bool,
    gap_samples: int = 4000,
    **sections,
):
    def source_of(bed: str) -> ScriptedSource:
        gap = (40, gap_samples) if gap_on_b0 and bed == "b0" else None
        return ScriptedSource(audio, 800, gap)

    sink = ListSink()
    runtime = run_sources(tmp_path, folder, ["b0", "b1"], source_of, sink, **sections)
    return runtime, sink


def test_a_gap_resets_its_bed_only(tmp_path, folder):
    audio, rate = soundfile.read(record_path(MIXED), dtype="float32")
    assert rate == 8000
    _plain, plain_sink = run_scripted(tmp_path, folder, audio, gap_on_b0=False)
    gapped, gap_sink = run_scripted(tmp_path, folder, audio, gap_on_b0=True)
    b0 = next(s for s in gapped.streams if s.id == "b0")
    b1 = next(s for s in gapped.streams if s.id == "b1")
    assert b0.chain.state_resets >= 1
    assert b1.chain.state_resets == 0
    assert any(e.type == "signal_gap" for e in gap_sink.events if e.stream_id == "b0")

    def of(sink: ListSink, bed: str) -> list:
        return [
            (e.type, e.state, e.start_sample, e.end_sample, e.confidence)
            for e in sink.events
            if e.stream_id == bed
        ]

    assert of(gap_sink, "b1") == of(plain_sink, "b1") != []  # the other bed did not notice
    assert of(gap_sink, "b0") != of(plain_sink, "b0")


def test_a_short_loss_keeps_the_state_and_a_threshold_of_zero_restarts_it(tmp_path, folder):
    """A 32-ms loss (one lost datagram) is below ``state_reset_gap_ms`` (100 ms): the bed's
    model state carries on (its features over the loss are held, edge.bed.pipeline) and the gate
    still reports the gap; with ``state_reset_gap_ms: 0`` the same loss restarts the state."""
    audio, _rate = soundfile.read(record_path(MIXED), dtype="float32")
    kept, kept_sink = run_scripted(tmp_path, folder, audio, gap_on_b0=True, gap_samples=256)
    b0 = next(s for s in kept.streams if s.id == "b0")
    assert b0.chain.state_resets == 0
    assert b0.chain.pipeline.missing_samples == 256
    assert any(e.type == "signal_gap" for e in kept_sink.events if e.stream_id == "b0")
    strict, _ = run_scripted(
        tmp_path, folder, audio, gap_on_b0=True, gap_samples=256, state_reset_gap_ms=0
    )
    assert next(s for s in strict.streams if s.id == "b0").chain.state_resets >= 1


class LoggedSource(ScriptedSource):
    """A ScriptedSource that notes each read in a shared timeline."""

    def __init__(self, name: str, timeline: list, samples: np.ndarray) -> None:
        super().__init__(samples, 800, None)
        self.name, self.timeline = name, timeline

    def read(self, timeout_s: float) -> SourceChunk | None:
        self.timeline.append(("read", self.name))
        return super().read(timeout_s)


class LoggedSink(ListSink):
    """A ListSink that notes each hand-over (``publish_many``) in the shared timeline."""

    def __init__(self, timeline: list) -> None:
        super().__init__()
        self.timeline = timeline

    def publish_many(self, events: list) -> None:
        self.timeline.append(("publish", {e.stream_id for e in events}))
        self.events.extend(events)


def run_grouped(tmp_path: Path, folder: Path, audio: np.ndarray, group: int):
    timeline: list = []
    sink = LoggedSink(timeline)
    runtime = run_sources(
        tmp_path, folder, ["b0", "b1", "b2", "b3"],
        lambda bed: LoggedSource(bed, timeline, audio), sink, round_group=group,
    )  # fmt: skip
    return runtime, sink, timeline


def test_a_round_group_publishes_its_events_before_the_next_group_is_read(tmp_path, folder):
    audio, _rate = soundfile.read(record_path(MIXED), dtype="float32")
    audio = audio[: 8000 * 4]
    grouped, grouped_sink, timeline = run_grouped(tmp_path, folder, audio, 2)
    whole, whole_sink, whole_timeline = run_grouped(tmp_path, folder, audio, 0)
    # one model call per group and round (a bed's end-of-stream flush brings two chunks)
    assert grouped.batches["calls"] >= 2 * whole.batches["calls"] - 2
    assert grouped.batches["max_windows"] == whole.batches["max_windows"] // 2
    first = next(i for i, (what, x) in enumerate(timeline) if what == "publish" and "b0" in x)
    before = [x for what, x in timeline[:first] if what == "read"]
    # b0's first events left before b2 was read in that round
    assert before.count("b2") < before.count("b0")
    assert timeline[first][1] <= {"b0", "b1"}
    whole_first = next(
        i for i, (what, x) in enumerate(whole_timeline) if what == "publish" and "b0" in x
    )
    reads = [x for what, x in whole_timeline[:whole_first] if what == "read"]
    assert reads.count("b3") == reads.count("b0")  # one group: every bed read first

    def of(sink: ListSink) -> list:
        return sorted((e.stream_id, e.type, e.state, e.start_sample) for e in sink.events)

    assert of(grouped_sink) == of(whole_sink) != []  # grouping changes when, not what


@pytest.mark.parametrize("value", [-1, True, 1.5])
def test_round_group_must_be_a_whole_number_of_streams(tmp_path, folder, value):
    from lungwatch.errors import ConfigError

    streams = [stream("b0", "unused.flac")]
    with pytest.raises(ConfigError, match=r"test\.yaml: round_group must be an integer"):
        build(mapping(tmp_path, folder, streams, round_group=value))


class CountingSource(ScriptedSource):
    """A ScriptedSource that counts its reads per runtime round (``rounds`` is advanced by the
    test between :meth:`Runtime.step` calls)."""

    def __init__(self, samples: np.ndarray, chunk: int) -> None:
        super().__init__(samples, chunk, None)
        self.reads: list[int] = [0]

    def read(self, timeout_s: float) -> SourceChunk | None:
        self.reads[-1] += 1
        return super().read(timeout_s)


def run_counting(tmp_path: Path, folder: Path, audio: np.ndarray, chunk: int):
    """Step the runtime by hand over one bed reading ``chunk``-sample chunks; returns the
    runtime, its events and the source's reads per round."""
    sources: dict[str, CountingSource] = {}

    def source_of(bed: str) -> CountingSource:
        sources[bed] = CountingSource(audio, chunk)
        return sources[bed]

    streams = [stream("b0", "unused.flac")]
    config = build(mapping(tmp_path, folder, streams))
    model = open_model(config, "test.yaml")
    sink = ListSink()
    try:
        runtime = Runtime(config, model, [Stream(config.streams[0], source_of("b0"), model)], sink)
        while runtime.running:
            runtime.step()
            sources["b0"].reads.append(0)
    finally:
        model.backend.close()
    events = [(e.type, e.state, e.start_sample, e.end_sample, e.confidence) for e in sink.events]
    return runtime, events, sources["b0"].reads


def test_a_round_reads_the_backlog_up_to_the_next_window(tmp_path, folder):
    """A source with a backlog (a file read as fast as possible) is read until the audio that
    completes the bed's next window is in, then pushed as one chunk: one round per window
    instead of one per source chunk, the same events, every chunk counted."""
    audio, _rate = soundfile.read(record_path(MIXED), dtype="float32")
    audio = audio[: 8000 * 6]
    runtime, events, reads = run_counting(tmp_path, folder, audio, 800)
    bed = runtime.streams[0]
    assert bed.counters["chunks"] == 60
    assert bed.counters["samples"] == audio.shape[0]
    assert sum(reads) == 61  # every chunk once, then the read that found the end
    # no round reads past the chunk that completes a window; ~12 rounds of 0.48 s, not 60
    assert max(reads) == -(-bed.chain.pipeline.window_samples // 800)
    assert len([n for n in reads if n]) <= audio.shape[0] // bed.chain.pipeline.hop_samples + 3
    _, one_chunk_events, _ = run_counting(tmp_path, folder, audio, 8000 * 6)
    _, small_chunk_events, _ = run_counting(tmp_path, folder, audio, 333)
    assert events == one_chunk_events == small_chunk_events != []


def test_a_round_reads_at_most_max_reads_per_round_chunks(tmp_path, folder):
    """Tiny chunks (a firmware stream's packets) are gathered at most MAX_READS_PER_ROUND per
    round, so one bed's backlog cannot hold up the others' windows for long."""
    from edge.runtime.loop import MAX_READS_PER_ROUND

    audio, _rate = soundfile.read(record_path(MIXED), dtype="float32")
    audio = audio[: 8000 * 2]
    runtime, events, reads = run_counting(tmp_path, folder, audio, 16)
    assert max(reads) == MAX_READS_PER_ROUND  # the cap is reached (a window needs 240 reads)
    assert runtime.streams[0].counters["samples"] == audio.shape[0]
    _, whole_events, _ = run_counting(tmp_path, folder, audio, 8000 * 2)
    assert events == whole_events


class RealTimeSource(ScriptedSource):
    """A ScriptedSource that has one chunk due per runtime round (``due`` is raised by the
    test before each :meth:`Runtime.step`), as a microphone paced in real time."""

    def __init__(self, samples: np.ndarray, chunk: int) -> None:
        super().__init__(samples, chunk, None)
        self.due = 0

    def read(self, timeout_s: float) -> SourceChunk | None:
        if self.due == 0 and self._pos < self.samples.shape[0]:
            return None
        self.due = max(0, self.due - 1)
        return super().read(timeout_s)


def step_real_time(tmp_path, folder, audio, hold_s, pause_s=0.0, rounds=None, then=None):
    """One bed over a RealTimeSource of 800-sample chunks, stepped one due chunk a round
    (``pause_s`` between rounds), with the stream's ``hold_s``, then ``then(runtime)``;
    returns the runtime, its events, (samples pushed into the chain, windows run) after
    every round and the model's output frames described (first frame, frames)."""
    source = RealTimeSource(audio, 800)
    config = build(mapping(tmp_path, folder, [stream("b0", "unused.flac")]))
    model = open_model(config, "test.yaml")
    sink = ListSink()
    seen: list[tuple[int, int]] = []
    described: list[tuple[int, int]] = []  # the model's output frames: (first frame, frames)
    try:
        bed = Stream(config.streams[0], source, model)
        bed.hold_s = hold_s
        runtime = Runtime(config, model, [bed], sink, on_frames=lambda _, frames: described.append(
            (frames.first_frame, frames.probs.shape[0])))  # fmt: skip
        while runtime.running and (rounds is None or len(seen) < rounds):
            source.due = 1
            runtime.step()
            seen.append((bed.chain.pipeline.samples_seen, bed.counters["windows"]))
            time.sleep(pause_s)
        if then is not None:
            then(runtime)
    finally:
        model.backend.close()
    events = [(e.type, e.state, e.start_sample, e.end_sample, e.confidence) for e in sink.events]
    return runtime, events, seen, described


def test_chunks_short_of_a_window_wait_for_the_chunk_that_completes_it(tmp_path, folder):
    """A bed paced in real time (0.1-s chunks, one a round) goes through its chain once per
    model chunk, in the round whose chunk completes it, not once per source chunk: the same
    events as the whole recording in one chunk, every sample pushed."""
    audio, _rate = soundfile.read(record_path(MIXED), dtype="float32")
    audio = audio[: 8000 * 6]
    runtime, events, seen, _ = step_real_time(tmp_path, folder, audio, hold_s=60.0)
    bed = runtime.streams[0]
    pushes = [now for (now, _), (before, _) in zip(seen[1:], seen, strict=False) if now != before]
    windowed = [w for (_, w), (_, was) in zip(seen[1:], seen, strict=False) if w != was]
    assert bed.counters["samples"] == audio.shape[0]
    assert bed.counters["chunks"] == 60
    # 60 chunks of 0.1 s, model chunks of 0.48 s: about 12 pushes, each with its window
    assert len(pushes) <= audio.shape[0] // bed.chain.pipeline.hop_samples + 2
    assert len(pushes) <= len(windowed) + 1  # + the stream's end
    _, whole_events, _ = run_counting(tmp_path, folder, audio, 8000 * 6)
    assert events == whole_events != []


def test_a_chunk_waits_no_longer_than_hold_s(tmp_path, folder):
    """A source slower than its window (a bed's chunk every 0.2 s here, hold_s 0.05) has its
    chunks pushed once they waited hold_s: the gate sees audio arrive."""
    audio, _rate = soundfile.read(record_path(MIXED), dtype="float32")
    _, _, seen, _ = step_real_time(tmp_path, folder, audio[:8000], hold_s=0.05, pause_s=0.2,
                                rounds=4)  # fmt: skip
    pushed = [now for now, _ in seen]
    # a chunk waits (its window is not complete); the next round finds it waited hold_s and
    # hands both over: no chunk waits past the first read after hold_s
    assert pushed == [0, 1600, 1600, 3200]


def test_a_stream_that_stops_hands_over_the_chunks_that_waited(tmp_path, folder):
    """When the runtime stops, chunks read but short of a window go through the chain before
    its last frames are flushed through the model: the audio is described as if nothing had
    waited (nothing read is dropped)."""
    audio, _rate = soundfile.read(record_path(MIXED), dtype="float32")
    before_stop = {}

    def stop(runtime: Runtime) -> None:
        bed = runtime.streams[0]
        before_stop.update(waiting=bed.waiting_samples, pushed=bed.chain.pipeline.samples_seen)
        stopped = threading.Event()
        stopped.set()
        runtime.run(stopped)

    def last_frame(hold_s: float) -> tuple[Stream, int]:
        runtime, _, _, described = step_real_time(tmp_path, folder, audio[:8000], hold_s=hold_s,
                                                  rounds=5, then=stop)  # fmt: skip
        return runtime.streams[0], max(first + n for first, n in described)

    bed, held_end = last_frame(60.0)
    assert before_stop["waiting"] > 0  # read, short of the next window: waiting
    assert before_stop["pushed"] + before_stop["waiting"] == 5 * 800
    assert bed.ended
    assert bed.waiting == []
    assert bed.counters["samples"] == bed.chain.pipeline.samples_seen == 5 * 800
    _, pushed_end = last_frame(0.0)  # every chunk pushed as it came
    assert before_stop["waiting"] == 0
    assert held_end == pushed_end  # the same frames described


def test_coalesced_joins_plain_contiguous_chunks_only():
    from edge.runtime.loop import _coalesced
    from edge.sources.base import Notice

    def chunk(first: int, n: int, **kw) -> SourceChunk:
        return SourceChunk(np.arange(first, first + n, dtype=np.float32), first, **kw)

    notice = Notice("disconnected", 8)
    parts = [
        chunk(0, 4),
        chunk(4, 4),
        chunk(8, 2, notices=(notice,)),
        chunk(10, 3),
        chunk(20, 2),  # a jump in the timeline
        chunk(22, 2),
        chunk(24, 2, missing=True),
        chunk(26, 1),
    ]
    out = _coalesced(parts)
    assert [(c.first_sample, c.samples.shape[0], c.missing, len(c.notices)) for c in out] == [
        (0, 8, False, 0),
        (8, 2, False, 1),
        (10, 3, False, 0),
        (20, 4, False, 0),
        (24, 2, True, 0),
        (26, 1, False, 0),
    ]
    np.testing.assert_array_equal(out[0].samples, np.arange(8, dtype=np.float32))
    np.testing.assert_array_equal(out[3].samples, np.arange(20, 24, dtype=np.float32))


def paced_runtime(
    tmp_path: Path, folder: Path, n_beds: int, now: list[float], metrics_interval_s: float
) -> tuple[Runtime, Monitor, ListSink]:
    """``n_beds`` beds ``b0``, ``b1``, ... on one record paced in real time, the runtime and
    the sources on the clock ``now[0]``, metrics into a :class:`ListSink`, a load check at
    500 ms; the caller closes the model's backend."""
    path = record_path(MIXED)
    beds = [stream(f"b{i}", path) for i in range(n_beds)]
    config = build(mapping(tmp_path, folder, beds, read_wait_warn_ms=500,
                           metrics_interval_s=metrics_interval_s))  # fmt: skip
    model = open_model(config, "test.yaml")
    sink = ListSink()

    def source(bed_id: str) -> FileSource:
        return FileSource(path, bed_id, 8000, chunk_samples=800, realtime=True,
                          clock=lambda: now[0], sleep=lambda s: None)  # fmt: skip

    streams = [Stream(c, source(c.id), model, i) for i, c in enumerate(config.streams)]
    return Runtime(config, model, streams, sink, clock=lambda: now[0]), model, sink


def test_audio_waiting_for_its_read_is_measured_and_a_loop_behind_is_reported(
    tmp_path, folder, caplog
):
    """Paced file sources stamp each chunk with its capture time. The runtime measures how long
    the oldest chunk each read found had waited (``read_wait_*`` in every bed's metrics) and
    logs a WARNING naming the worst bed when a bed's p99 is over ``read_wait_warn_ms`` (which
    every report carries); once the loop has caught up, one INFO line. The runtime and the
    sources share one clock."""
    now = [1000.0]
    runtime, model, sink = paced_runtime(tmp_path, folder, 2, now, metrics_interval_s=3600)

    def rounds(n: int, every_s: float) -> None:
        for _ in range(n):
            now[0] += every_s
            runtime.step()

    def report() -> dict[str, dict]:
        sink.metrics.clear()
        runtime.publish_metrics()
        return dict(sink.metrics)

    caplog.set_level(logging.INFO, logger="lungwatch.runtime")
    try:
        runtime.step()  # the sources' clocks start: t0 = 1000.0
        rounds(10, 0.1 + 1e-9)  # every chunk read as it falls due
        on_time = report()
        now[0] += 1.5  # a round that took 1.5 s
        rounds(30, 1e-9)  # the backlog is read, a window's worth per round
        behind = report()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        rounds(10, 0.1)
        caught_up = report()
    finally:
        model.backend.close()
    for bed in ("b0", "b1"):
        assert on_time[bed]["read_wait_warn_ms"] == 500  # the limit, for a dashboard to judge by
        assert on_time[bed]["read_wait_reads"] == 10
        assert on_time[bed]["read_wait_ms_max"] < 0.01
        assert behind[bed]["read_wait_ms_max"] == pytest.approx(1400.0, abs=1.0)
        assert behind[bed]["read_wait_ms_p99"] > 500
        assert caught_up[bed]["read_wait_ms_max"] < 100.1
    assert len(warnings) == 1
    assert "the loop is behind" in warnings[0].getMessage()
    assert "2 of 2 beds over read_wait_warn_ms 500" in warnings[0].getMessage()
    infos = [r.getMessage() for r in caplog.records if "caught up" in r.getMessage()]
    assert len(infos) == 1


def test_the_loop_spreads_the_beds_metrics_reports_over_the_interval(tmp_path, folder, caplog):
    """Every bed reports once per ``metrics_interval_s``, the beds in ten slices at even steps
    over the interval (a round carries a slice's reports, not the whole ward's); a whole
    cycle of reports goes through the load check together; a loop held up for longer than
    the interval reports each bed once, not once per interval missed."""
    now = [1000.0]
    runtime, model, sink = paced_runtime(tmp_path, folder, 12, now, metrics_interval_s=1.0)
    published: list[tuple[float, list[str]]] = []  # per round: its clock, the beds reported

    def rounds(n: int, every_s: float) -> None:
        for _ in range(n):
            now[0] += every_s
            before = len(sink.metrics)
            runtime.step()
            published.append((now[0] - 1000.0, [bed for bed, _ in sink.metrics[before:]]))

    caplog.set_level(logging.INFO, logger="lungwatch.runtime")
    try:
        rounds(42, 0.05)  # 2.1 s, every chunk read as it falls due
        on_time = [r for r in caplog.records if r.levelno == logging.WARNING]
        steady = list(published)
        published.clear()
        now[0] += 1.5  # a round that took 1.5 s: every bed's report is due
        rounds(1, 1e-9)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    finally:
        model.backend.close()
    assert max(len(beds) for _, beds in steady) == 2  # a slice of 12 beds in 10, not the ward
    for i in range(12):
        times = [t for t, beds in steady if f"b{i}" in beds]
        turn = 0.1 * (next(k for k in range(10) if i < (k + 1) * 12 // 10) + 1)
        # the bed's slice's turn in the interval, then every interval
        assert times == pytest.approx([turn, turn + 1.0], abs=0.051), i
    assert not on_time
    assert sorted(published[0][1]) == sorted(f"b{i}" for i in range(12))  # each bed once
    assert len(warnings) == 1  # the cycle's load check: the loop was behind
    assert "12 of 12 beds over read_wait_warn_ms 500" in warnings[0].getMessage()


def test_read_wait_warn_ms_must_not_be_negative(tmp_path, folder):
    from lungwatch.errors import ConfigError

    streams = [stream("b0", record_path(MIXED))]
    with pytest.raises(ConfigError, match=r"test\.yaml: read_wait_warn_ms must be a number >= 0"):
        build(mapping(tmp_path, folder, streams, read_wait_warn_ms=-1))


def test_a_beds_times_keep_one_timeline_from_their_first_use(tmp_path, folder):
    """A time asked before the bed's first audio (a stall's onset comes before any chunk)
    fixes the bed's timeline: the first chunk does not move it, so a later sample never reads
    earlier (an episode that ended before its onset once stopped the runtime)."""
    import time

    config = build(mapping(tmp_path, folder, [stream("b0", "unused.flac")]))
    model = open_model(config, "test.yaml")
    try:
        bed = Stream(config.streams[0], CountingSource(np.zeros(8000, np.float32), 800), model)
        before = bed.utc(0)  # nothing read yet
        time.sleep(0.05)
        runtime = Runtime(config, model, [bed], ListSink())
        runtime.step()  # the first chunk is read
        assert bed.counters["chunks"] >= 1
        assert bed.utc(0) == before
        assert bed.utc(800) > before
    finally:
        model.backend.close()


class SilentSource:
    """An AudioSource that never gives a chunk (a microphone that does not start)."""

    sample_rate_hz = 8000

    def read(self, timeout_s: float) -> SourceChunk | None:
        return None

    def close(self) -> None:
        """Nothing to release."""


class OrderSink(ListSink):
    """A ListSink that also keeps the order of events and summaries as it took them."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, Any]] = []

    def publish(self, event: Event) -> None:
        super().publish(event)
        self.calls.append(("event", event.stream_id, event.type))

    def publish_summary(self, stream_id: str, summary: dict[str, Any] | None) -> None:
        self.calls.append(("summary", stream_id, None if summary is None else len(summary["open"])))


def test_a_bed_whose_first_event_comes_before_any_audio_is_named_before_it(tmp_path, folder):
    """A source that gives nothing: the bed's first message is its stall (no window has run),
    and the bed's summary, naming it, still reaches the sink ahead of that event; the one that
    lists the stall follows it."""
    config = build(mapping(tmp_path, folder, [stream("b0", "unused.flac")]))
    model = open_model(config, "test.yaml")
    now = [100.0]
    try:
        sink = OrderSink()
        runtime = Runtime(config, model, [Stream(config.streams[0], SilentSource(), model)],
                          sink, clock=lambda: now[0])  # fmt: skip
        runtime.step()
        now[0] += 10.0
        runtime.step()
    finally:
        model.backend.close()
    stall = ("event", "b0", "source_stalled")
    assert stall in sink.calls, sink.calls
    assert sink.calls[0] == ("summary", "b0", 0), sink.calls
    assert sink.calls.index(("summary", "b0", 1)) > sink.calls.index(stall), sink.calls
