"""End to end: emulator -> UDP -> ``bridge://`` source -> runtime -> Mosquitto.

An annotated SPRSound recording is played by the device emulator (``lungwatch emulate``) to
a runtime (``edge.runtime.loop.serve``: the shipped INT8 streaming model, ONNX Runtime CPU, MQTT
sink) whose one stream is ``bridge://udp/127.0.0.1:PORT?device=1&key_file=KEY`` (protocol v2: a
key from ``lungwatch bridge provision``, given to both ends); the events it delivers to a real
Mosquitto are compared with those of the same runtime reading the recording through the file
source.

Pacing: the emulator sends at ``--speed 20`` (20x real time, ~630 datagrams/s), not as one
burst. The runtime reads its socket once per loop round, between inference batches, so what
arrives meanwhile waits in the kernel's receive buffer; the bridge asks for 4 MiB, but the
kernel caps that at ``net.core.rmem_max`` (212992 bytes by default: a few hundred datagrams)
and drops the rest silently -- the lossless test would then measure the host, not the bridge.
(Measured here: an unpaced burst of this 500-frame recording still arrived whole, even with
the request cut to 212992 bytes, but with little margin; a longer recording would not.) The
runtime processes this recording at more than 30x real time on one core, so at 20x nothing
piles up. The lossless test asserts that no sample was missing, so a host too slow for it
fails loudly rather than passing vacuously.

Stopping: a network source never ends, so the test waits until the runtime's metrics on the
broker report every sample of the recording on the stream's timeline, then stops the runtime
(open events end with ``shutdown``; the file source ends its events at ``stream end``; both
call the same ``detector.finish()``).

Tolerance with loss: a lost frame is 256 samples of silence marked missing on the timeline,
so everything after it stays at its sample index, but the zeros change the features of every
window that holds them. A physiological event whose span overlaps no gap must equal a file-
source event of the same type with both boundaries within one hop (4000 samples, 0.5 s).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

from edge.bed.pipeline import StreamPipeline
from edge.inference.manifest import load_manifest
from edge.runtime.config import RuntimeConfig
from edge.runtime.loop import serve
from firmware_bridge import emulator
from firmware_bridge.devicemodel import DeviceConfig, device_frames, read_pcm
from firmware_bridge.emulator import Channel, Impairments
from firmware_bridge.protocol import FrameType, SampleFormat, encode_frame
from lungwatch.events import Event
from tests.brokers import Message, Mosquitto, Recorder
from tests.edge.runtime_helpers import (
    DEVICE,
    FOUND,
    MODEL_DIR,
    SITE,
    ServeThread,
    build,
    config_mapping,
    mqtt_sections,
    record_path,
    sample_span,
    stream,
)
from tests.firmware_bridge.helpers import Background, device_key, free_port

ROOT = f"lungwatch/v1/{SITE}/{DEVICE}"
RECORD = FOUND  # 15.4 s, 8 annotated fine crackles, 11 findings with the shipped model
SPEED = 20.0  # x real time (see the module doc)
METRICS_INTERVAL_S = 0.2
TIMEOUT_S = 20.0
LOSS, REORDER, SEED = 0.05, 0.02, 7

pytestmark = pytest.mark.requires_data

Span = tuple[str, int, int]  # (type, start_sample, end_sample)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("mosquitto")) as mosquitto:
        yield mosquitto


@pytest.fixture(scope="module")
def file_events(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> list[Event]:
    """The recording through the file source, as delivered by the broker."""
    folder = tmp_path_factory.mktemp("file")
    config = _config(folder, broker, "file", str(record_path(RECORD)))
    with Recorder(broker.port, topic=f"{ROOT}/file/event") as recorder:
        runtime = serve(config, source="test.yaml")
        events = _wait_events(recorder, sum(s.counters["events"] for s in runtime.streams))
    assert len(_physiological(events)) >= 3, "the file source must give findings to compare"
    return events


def _config(folder: Path, broker: Mosquitto, stream_id: str, source: str) -> RuntimeConfig:
    sections = mqtt_sections(folder, broker.port)
    mapping = config_mapping(
        folder, [stream(stream_id, source)], metrics_interval_s=METRICS_INTERVAL_S, **sections
    )
    return build(mapping)


def _wait_events(recorder: Recorder, count: int) -> list[Event]:
    """The first delivery of each of ``count`` event ids (fails if fewer arrive)."""

    def arrived(messages: list[Message]) -> bool:
        ids = {m.json()["id"] for m in messages if m.topic.endswith("/event")}
        return len(ids) >= count

    assert recorder.wait_for(arrived, TIMEOUT_S), f"fewer than {count} events delivered"
    events = [Event.from_json(m.payload) for m in recorder.events()]
    return list({e.id: e for e in reversed(events)}.values())[::-1]


def _physiological(events: list[Event]) -> list[Span]:
    """(type, start_sample, end_sample) of the ended findings, in order."""
    ended = [e for e in events if e.kind == "physiological" and e.state == "ended"]
    return [(e.type, *sample_span(e)) for e in ended]


def _technical(events: list[Event], event_type: str) -> list[tuple[int, int]]:
    return [sample_span(e) for e in events if e.type == event_type and e.state == "ended"]


def _metrics(messages: list[Message], stream_id: str) -> list[dict[str, Any]]:
    found = [m.json() for m in messages if m.topic == f"{ROOT}/metrics"]
    return [body["metrics"] for body in found if body["stream_id"] == stream_id]


def _online(messages: list[Message]) -> bool:
    """The runtime connected (after opening its streams, so the UDP port is bound)."""
    live = [m.json() for m in messages if m.topic == f"{ROOT}/status" and not m.retain]
    return any(body["state"] == "online" for body in live)


@dataclass(frozen=True)
class Channeled:
    """What the emulator's channel did, replayed with the same seed (it is deterministic)."""

    lost_frames: int  # frames of any type
    gaps: list[range]  # sample ranges of lost audio frames, adjacent ones merged
    markers: int  # device info and status frames that arrived (each one notice)


def replay_channel(path: Path, impairments: Impairments) -> Channeled:
    samples, rate_hz = read_pcm(path, SampleFormat.INT16)
    key = bytes(32)  # the emulator's v2 frames: the same lengths whatever the key
    config = DeviceConfig(key=key, session=1)
    frames = [f for _, f in device_frames(samples, rate_hz, config)]  # emulator defaults
    channel = Channel(impairments)
    for _ in channel.run((0.0, encode_frame(f, key)) for f in frames):
        pass
    gaps: list[range] = []
    markers = 0
    for frame, fate in zip(frames, channel.fates, strict=True):
        if fate == "ok":
            markers += frame.frame_type in (FrameType.DEVICE_INFO, FrameType.STATUS)
        elif frame.frame_type == FrameType.AUDIO:
            start, stop = frame.first_sample, frame.first_sample + frame.sample_count
            if gaps and gaps[-1].stop == start:
                start = gaps.pop().start
            gaps.append(range(start, stop))
    return Channeled(channel.counts["lost"], gaps, markers)


@dataclass(frozen=True)
class BridgeRun:
    events: list[Event]  # delivered by the broker, first delivery of each id
    metrics: dict[str, Any]  # the stream's last metrics message
    device: dict[str, Any]  # the emulator's summary line


def run_bridge(
    folder: Path,
    broker: Mosquitto,
    capsys: pytest.CaptureFixture[str],
    impairments: Impairments,
    expected: Channeled,
) -> BridgeRun:
    """Start the runtime, play the recording once it is online, stop it once its timeline
    holds every sample and every notice the channel let through."""
    path, port = record_path(RECORD), free_port()
    n_samples = sf.info(str(path)).frames
    key_file, _ = device_key(folder)
    url = f"bridge://udp/127.0.0.1:{port}?device=1&key_file={key_file}"
    config = _config(folder, broker, "bridge", url)
    argv = ["--audio", str(path), "--to", f"udp://127.0.0.1:{port}", "--speed", str(SPEED)]
    argv += ["--key-file", str(key_file)]
    for name in ("loss", "reorder", "corrupt", "duplicate", "seed"):
        argv += [f"--{name}", str(getattr(impairments, name))]
    notices = expected.markers + len(expected.gaps)

    def played(messages: list[Message]) -> bool:
        found = _metrics(messages, "bridge")
        return any(m["samples"] >= n_samples and m["notices"] >= notices for m in found)

    with Recorder(broker.port, topic=f"{ROOT}/#") as recorder, ServeThread(config) as serving:
        assert recorder.wait_for(_online, TIMEOUT_S), "the runtime did not come online"
        assert Background(lambda: emulator.main(argv)).join(TIMEOUT_S) == 0
        last = lambda: _metrics(recorder.messages, "bridge")[-1:]  # noqa: E731
        assert recorder.wait_for(played, TIMEOUT_S), (n_samples, notices, last())
        runtime = serving.join()
        assert runtime is not None
        events = _wait_events(recorder, runtime.streams[0].counters["events"])
    device = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return BridgeRun(events, _metrics(recorder.messages, "bridge")[-1], device)


def window_geometry() -> tuple[int, int]:
    """(window_samples, hop_samples) of the shipped model's windows."""
    manifest = load_manifest(MODEL_DIR / "manifest.json")
    pipeline = StreamPipeline(
        manifest.feature_spec,
        manifest.kinds,
        manifest.streaming.input_frames,
        manifest.streaming.input_frames,
    )
    return pipeline.window_samples, pipeline.hop_samples


def near(finding: Span, others: list[Span], tolerance: int) -> bool:
    """A finding of the same type with both boundaries within ``tolerance`` samples."""
    kind, start, end = finding
    return any(
        k == kind and abs(s - start) <= tolerance and abs(e - end) <= tolerance
        for k, s, e in others
    )


def test_lossless_bridge_gives_the_file_sources_events(
    tmp_path: Path, broker: Mosquitto, file_events: list[Event], capsys: Any
) -> None:
    """Nothing lost: the findings (type, start_sample, end_sample) delivered by the broker
    equal the file source's, with no missing sample and no signal_gap event."""
    clean = Impairments()
    expected = replay_channel(record_path(RECORD), clean)
    run = run_bridge(tmp_path, broker, capsys, clean, expected)
    assert run.device["lost"] == 0, run.device
    assert run.device["sent"] == run.device["frames"], run.device
    assert run.metrics["samples"] == run.device["samples"]
    assert run.metrics["missing_samples"] == 0, "datagrams were dropped on loopback"
    assert run.metrics["notices"] == expected.markers
    links = {k: v for k, v in run.metrics.items() if k.startswith("link_")}
    assert {"link_replayed", "link_auth_failed", "link_stale_session"} <= links.keys()
    assert not any(links.values()), links  # the device's own v2 frames: nothing refused
    assert not _technical(run.events, "signal_gap")
    assert _physiological(run.events) == _physiological(file_events)


def test_lossy_reordered_bridge_keeps_the_timeline(
    tmp_path: Path, broker: Mosquitto, file_events: list[Event], capsys: Any
) -> None:
    """5 % loss and 2 % reordering (seeded):

    - the stream's timeline is as long as the recording, and exactly the lost audio frames'
      samples are missing (runtime metrics against the emulator's channel, replayed);
    - one signal_gap notice per gap reaches the runtime, and ``signal_gap`` technical events
      on the broker cover every gap (the first window is judged whole, so a gap before its
      last hop is inside its span; a gap after the last window is reported when the stream
      ends), each containing a gap (gaps less than ``clear_after_ms`` apart continue one
      event);
    - every finding overlaps a file-source finding of its type or lies within the model's
      look-ahead of lost audio (one in ten at most), at least 70 % of them match one
      (boundaries within one hop), and so do most file-source findings.
      A gap lies within 0.4 s (the model's look-ahead) of almost every finding at 5 % loss,
      so no finding is untouched by lost audio: an end may move by a breath phase.
      Measured (seed 7): 29 of 500 frames lost, all audio (26 gaps, 7424 samples), 13
      reordered; 43 notices (17 device info / status + 26 signal_gap); one signal_gap event,
      0 to 122880 (the first gap, 256 to 512, is before the first window's last hop; the last,
      122624 to 122880, after the last window); with the streaming model (phase loss), 10
      findings, 9 within a hop of the file source's 11 (one phase ended 0.52 s early, a lost
      frame 0.34 s after it, inside its look-ahead), 10 of the 11 reproduced. Each lost
      datagram is shorter than ``state_reset_gap_ms``, so the bed's model state carries on
      over feature frames held across the loss (edge.bed.pipeline); with the model before, a
      reset at every loss left none of its 9 findings, zeros without a reset 2. With the
      model whose wheeze threshold is fitted out of fold: 8 findings, 6 within a hop of the
      file source's 8, and one crackle phase at 14.6-15.0 s beside lost audio that the file
      source does not raise.
    """
    path, lossy = record_path(RECORD), Impairments(loss=LOSS, reorder=REORDER, seed=SEED)
    expected = replay_channel(path, lossy)
    run = run_bridge(tmp_path, broker, capsys, lossy, expected)
    assert run.device["lost"] == expected.lost_frames, run.device
    assert run.device["reordered"] > 0, run.device
    assert len(expected.gaps) >= 10, expected  # about 5 % of 480 audio frames
    assert run.metrics["samples"] == run.device["samples"]
    assert run.metrics["missing_samples"] == sum(len(g) for g in expected.gaps)
    assert run.metrics["notices"] == expected.markers + len(expected.gaps)

    _window, hop = window_geometry()
    gap_events = _technical(run.events, "signal_gap")
    assert gap_events
    for start, end in gap_events:
        assert any(g.start < end and start < g.stop for g in expected.gaps), (start, end)
    for gap in expected.gaps:
        covered = any(s <= gap.start and gap.stop <= e for s, e in gap_events)
        assert covered, (gap, gap_events)

    reference, findings = _physiological(file_events), _physiological(run.events)
    invented = [
        f for f in findings if not any(k == f[0] and s < f[2] and f[1] < e for k, s, e in reference)
    ]
    matched = [f for f in findings if near(f, reference, hop)]
    print(
        f"lost {run.device['lost']} frames in {len(expected.gaps)} gaps; {len(findings)} findings"
        f" ({len(matched)} within a hop of one) vs {len(reference)} from the file source"
    )
    assert findings, reference
    # a finding the file source does not raise must lie beside lost audio (within the model's
    # look-ahead of a gap), and be rare
    reach = int(0.4 * 8000)
    unexplained = [
        f for f in invented
        if not any(g.start - reach < f[2] and f[1] < g.stop + reach for g in expected.gaps)
    ]  # fmt: skip
    assert not unexplained, (unexplained, expected.gaps)
    assert len(invented) <= max(1, len(findings) // 10), (invented, reference)
    assert len(matched) >= 0.7 * len(findings), (findings, reference)
    reproduced = [f for f in reference if near(f, findings, hop)]
    assert len(reproduced) >= 0.6 * len(reference), (findings, reference)
