"""Alarm evidence on the device: clips cut from a bed's history (edge.evidence.recorder), their
parts on MQTT and their assembly (lungwatch.clip), the spool and the channel against a
real Mosquitto (edge.evidence.publisher), and the runtime's clips and retained summaries."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.bed.detector import FrameGrid
from edge.evidence.publisher import EvidencePublisher, EvidenceSpool, EvidenceSpoolError
from edge.evidence.recorder import ClipRecorder, EvidenceConfig, Identity
from edge.runtime.loop import serve
from lungwatch.clip import Assembler, Clip, EvidenceError, clip_messages, encode_flac, quantise
from lungwatch.events import Event, summary_topic
from lungwatch.mqtt import MqttConfig
from tests.brokers import SHA256, Mosquitto, Recorder, require_mosquitto
from tests.edge.runtime_helpers import build, config_mapping, mqtt_sections, stream, write_audio

RATE_HZ = 8000
GRID = FrameGrid.of(RATE_HZ, 80, 256, 4)  # 40-ms output frames, offset 88 samples
OUTPUTS = ("Fine Crackle", "Wheeze", "Poor Quality")
SITE, DEVICE = "ward-e", "edge-e"


def a_clip(seconds: float = 6.0, seed: int = 0) -> Clip:
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal(int(seconds * RATE_HZ))).astype(np.float32)
    frames = quantise(rng.random((int(seconds * 25), len(OUTPUTS))))
    return Clip(SITE, DEVICE, "bed-1", "0b7c4f0e-6a6b-4b6c-8f6e-1d2c3b4a5f60", "Wheeze", 24000,
                0, "2026-11-25T10:00:00.000Z", RATE_HZ, encode_flac(audio, RATE_HZ), OUTPUTS,
                88, 320, frames)  # fmt: skip


def test_a_clip_travels_in_parts_and_comes_back_whole_in_any_order() -> None:
    clip = a_clip(20.0)
    messages = clip_messages(clip, part_bytes=8192)
    assert len(messages) > 3
    assert all(len(payload) < 64 * 1024 for _, payload in messages)
    assert {topic for topic, _ in messages} == {f"lungwatch/v1/{SITE}/{DEVICE}/bed-1/evidence"}
    bodies = [json.loads(payload) for _, payload in messages]
    shuffled = bodies + bodies[:2]  # repeats, as QoS 1 may deliver them
    random.Random(1).shuffle(shuffled)
    assembler = Assembler()
    done = [c for c in (assembler.take(b) for b in shuffled) if c is not None]
    assert len(done) == 1
    got = done[0]
    assert got.flac == clip.flac
    assert got.sha256 == clip.sha256
    np.testing.assert_array_equal(got.frames, clip.frames)
    assert got.outputs == OUTPUTS
    assert (got.start_utc, got.event_type, got.event_start_sample) == (
        clip.start_utc, "Wheeze", 24000)  # fmt: skip
    assert got.duration_s == pytest.approx(20.0)
    np.testing.assert_allclose(got.audio(), clip.audio(), atol=1e-4)
    assert not assembler.waiting


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.update(part=5, parts=2), "is not a part of a clip"),
        (lambda b: b.update(parts=True), "is not a part"),
        (lambda b: b.update(data="%%%"), "evidence.data is not base64"),
        (lambda b: b.update(sha256="xy"), "sha256 must be 64 hex digits"),
        (lambda b: b.update(episode_id="a/b"), "evidence.episode_id must be 1..64"),
        (lambda b: b.pop("clip"), "part 0 must carry the clip header"),
    ],
)
def test_a_malformed_part_is_refused_naming_what(change: Any, message: str) -> None:
    body = json.loads(clip_messages(a_clip())[0][1])
    change(body)
    with pytest.raises(EvidenceError, match=message):
        Assembler().take(body)


def test_parts_that_do_not_hash_to_the_clip_are_refused() -> None:
    bodies = [json.loads(p) for _, p in clip_messages(a_clip(), part_bytes=4096)]
    bodies[1]["data"] = bodies[2]["data"]
    assembler = Assembler()
    for body in bodies[:-1]:
        assert assembler.take(body) is None
    with pytest.raises(EvidenceError, match="do not hash to its sha256"):
        assembler.take(bodies[-1])


def declaring(flac: bytes, samples: int) -> bytes:
    """``flac`` with its STREAMINFO's total-samples field (36 bits) set to ``samples``: the
    small file then declares that much audio."""
    data = bytearray(flac)
    assert data[:4] == b"fLaC"
    at = 8 + 10  # the 8 bytes of STREAMINFO holding rate, channels, bits and total samples
    bits = int.from_bytes(data[at : at + 8], "big")
    data[at : at + 8] = ((bits & ~((1 << 36) - 1)) | samples).to_bytes(8, "big")
    return bytes(data)


@pytest.mark.parametrize(
    ("flac", "message"),
    [
        (declaring(encode_flac(np.zeros(8000, np.float32), RATE_HZ), 200_000_000),
         "declares 200000000 samples"),
        (encode_flac(np.zeros((800, 2), np.float32), RATE_HZ), "1 channel|mono FLAC"),
        (encode_flac(np.zeros(800, np.float32), 16000), "mono FLAC at 8000 Hz"),
        (b"fLaC" + b"\0" * 64, "not readable FLAC"),
    ],
)  # fmt: skip
def test_a_clip_whose_audio_is_not_a_clip_is_refused_before_decoding(
    flac: bytes, message: str
) -> None:
    """A 110-byte FLAC that declares 200 M samples (the memory bomb that once took a ward
    view to 21 GB), two channels, another rate, garbage: refused by the header alone, at
    assembly and again before any decode of a stored clip."""
    bomb = dataclasses.replace(a_clip(1.0), flac=flac)
    [(_, part)] = clip_messages(bomb, part_bytes=65536 - 2048)
    with pytest.raises(EvidenceError, match=message):
        Assembler().take(json.loads(part))
    with pytest.raises(EvidenceError, match=message):
        bomb.audio()


def event(state: str, start: int, end: int | None = None, **values: Any) -> Event:
    base = {"type": "Wheeze", "site": SITE, "device_id": DEVICE, "stream_id": "bed-1",
            "start_utc": "2026-11-25T10:00:00.000Z", "start_sample": start, "confidence": 0.9,
            "model_id": "m", "model_sha256": SHA256,
            "episode_id": "0b7c4f0e-6a6b-4b6c-8f6e-1d2c3b4a5f60"}  # fmt: skip
    onset = Event.onset(**{**base, **values})
    if state == "onset":
        return onset
    if state == "latched":
        return onset.ongoing(detail={"latched": True, "condition_end_sample": end})
    return onset.ended("2026-11-25T10:00:09.000Z", end)


def recorder(**config: Any) -> ClipRecorder:
    return ClipRecorder(EvidenceConfig(**config), Identity(SITE, DEVICE, "bed-1"), RATE_HZ,
                        GRID, OUTPUTS, lambda s: f"t{s}")  # fmt: skip


def feed(rec: ClipRecorder, audio: np.ndarray, chunk: int = 800) -> list[Clip]:
    """The audio in chunks and the output frames, as the runtime gives them; the clips cut."""
    frames = audio.size // 320
    rec.frames(0, np.tile(np.linspace(0, 1, frames)[:, None], (1, len(OUTPUTS))))
    clips = []
    for pos in range(0, audio.size, chunk):
        rec.audio(pos, audio[pos : pos + chunk])
        clips += rec.due()
    return clips


def test_a_finding_episode_gets_no_clip_of_its_own_its_events_do() -> None:
    audio = (np.arange(12 * RATE_HZ) % 1000 / 2000.0).astype(np.float32)
    rec = recorder(pre_s=1.0, post_s=1.0)
    rec.audio(0, audio[: 5 * RATE_HZ])
    episode = {"type": "CAS", "episode_id": "1b7c4f0e-6a6b-4b6c-8f6e-1d2c3b4a5f61"}
    rec.events([event("onset", 4 * RATE_HZ, **episode), event("onset", 4 * RATE_HZ)])
    rec.events([event("ended", 4 * RATE_HZ, end=5 * RATE_HZ, **episode),
                event("ended", 4 * RATE_HZ, end=5 * RATE_HZ)])  # fmt: skip
    clips = feed(rec, audio)
    assert [c.event_type for c in clips] == ["Wheeze"]


def test_a_clip_runs_from_pre_s_before_the_event_to_post_s_after_its_end() -> None:
    audio = (np.arange(12 * RATE_HZ) % 1000 / 2000.0).astype(np.float32)  # a known ramp
    rec = recorder(pre_s=2.0, post_s=1.0, max_s=20.0)
    rec.audio(0, audio[: 5 * RATE_HZ])
    rec.events([event("onset", 4 * RATE_HZ)])
    assert rec.due() == []  # the end is not known yet
    rec.events([event("ended", 4 * RATE_HZ, end=6 * RATE_HZ)])
    rec.audio(5 * RATE_HZ, audio[5 * RATE_HZ : 6 * RATE_HZ])
    assert rec.due() == []  # the audio has not reached end + post_s yet
    [clip] = feed(rec, audio)  # the rest (samples already kept are not written again)
    assert clip.start_sample == 2 * RATE_HZ
    assert clip.duration_s == pytest.approx(5.0)  # 2 s before, 2 s of event, 1 s after
    np.testing.assert_allclose(clip.audio(), audio[2 * RATE_HZ : 7 * RATE_HZ], atol=1 / 32767)
    assert clip.start_utc == f"t{2 * RATE_HZ}"
    # the output frames over the clip: frame j starts at 88 + 320 j
    first = -(-(2 * RATE_HZ - 88) // 320) - 1
    assert clip.first_frame_sample == 88 + 320 * max(first, 0) - 2 * RATE_HZ
    assert clip.frames.shape[1] == len(OUTPUTS)
    assert 5.0 * 25 - 1 <= clip.frames.shape[0] <= 5.0 * 25 + 1
    assert rec.due() == []  # cut once


def test_a_latched_alarm_ends_its_clip_and_a_long_one_is_bounded() -> None:
    audio = np.zeros(30 * RATE_HZ, np.float32)
    rec = recorder(pre_s=1.0, post_s=0.5, max_s=4.0, history_s=10.0)
    rec.audio(0, audio[: 3 * RATE_HZ])
    rec.events([event("onset", 2 * RATE_HZ)])
    rec.events([event("latched", 2 * RATE_HZ, end=10 * RATE_HZ)])  # latched: ends at 10 s
    [clip] = feed(rec, audio)
    assert clip.duration_s == pytest.approx(4.0)  # max_s, not 1 + 8 + 0.5
    second = "1b7c4f0e-6a6b-4b6c-8f6e-1d2c3b4a5f60"
    rec.events([event("onset", 28 * RATE_HZ, episode_id=second)])
    [last] = rec.finish()  # the stream ended: what there is, from 1 s before the onset
    assert last.duration_s == pytest.approx(30 - 27.0)


def test_clips_start_no_earlier_than_the_history_and_technical_ones_by_priority() -> None:
    rec = recorder(pre_s=3.0, history_s=20.0, max_s=20.0)
    feed(rec, np.zeros(40 * RATE_HZ, np.float32))
    apnoea = {"type": "apnoea", "episode_id": "2b7c4f0e-6a6b-4b6c-8f6e-1d2c3b4a5f60"}
    rec.events([event("onset", 5 * RATE_HZ, **apnoea)])  # announced long after its start
    low = {"type": "clipping", "kind": "technical", "priority": "low", "confidence": None,
           "model_id": None, "model_sha256": None,
           "episode_id": "3b7c4f0e-6a6b-4b6c-8f6e-1d2c3b4a5f60"}  # fmt: skip
    rec.events([event("onset", 38 * RATE_HZ, **low)])
    clips = rec.finish()
    assert [c.event_type for c in clips] == ["apnoea"]
    assert clips[0].start_sample == 20 * RATE_HZ  # the oldest sample kept


def test_the_config_names_a_bad_key() -> None:
    from lungwatch.config import from_mapping
    from lungwatch.errors import ConfigError

    with pytest.raises(ConfigError, match="history_s must be a number >= max_s"):
        from_mapping(EvidenceConfig, {"max_s": 30, "history_s": 20}, source="ward.yaml")
    with pytest.raises(ConfigError, match=r"part_bytes must be an integer in \[4096, 45000\]"):
        from_mapping(EvidenceConfig, {"part_bytes": 60000}, source="ward.yaml")
    with pytest.raises(ConfigError, match="username must be a broker user name"):
        from_mapping(EvidenceConfig, {"username": "dev:1"}, source="ward.yaml")


def test_the_spool_is_bounded_by_bytes_and_age_and_holds_one_process(tmp_path: Path) -> None:
    path = tmp_path / "evidence.sqlite"
    spool = EvidenceSpool(path, max_bytes=300_000, max_age_s=3600.0)
    with pytest.raises(EvidenceSpoolError, match="another process has this spool open"):
        EvidenceSpool(path, 1, 1.0)
    clips = [dataclasses.replace(a_clip(8.0, seed=i), episode_id=f"ep-{i}") for i in range(5)]
    for i, clip in enumerate(clips):
        spool.put_many([(clip, clip_messages(clip))], now_s=1000.0 + i)
    assert spool.bytes <= 300_000
    assert spool.evicted > 0
    kept = len(spool)
    assert len(spool.oldest_many(now_s=1000.0 + 4, n=1)) == 1
    assert spool.oldest_many(now_s=1000.0 + 3600.0 + 10, n=1) == []  # every clip expired
    assert spool.expired == kept
    spool.close()


def test_the_spool_keeps_its_count_and_bytes_as_the_file_holds_them(tmp_path: Path) -> None:
    """The spool counts its clips and bytes in memory (no scan of the file per clip): after
    puts, a replaced episode, evictions, expiry and removals the counts are the file's, and a
    spool opened again reads the same."""
    import sqlite3

    path = tmp_path / "evidence.sqlite"

    def in_file() -> tuple[int, int]:
        with sqlite3.connect(path) as db:
            count, size = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM clips"
            ).fetchone()
        return int(count), int(size)

    spool = EvidenceSpool(path, max_bytes=400_000, max_age_s=100.0)
    clips = [dataclasses.replace(a_clip(4.0, seed=i), episode_id=f"ep-{i}") for i in range(9)]
    spool.put_many([(c, clip_messages(c)) for c in clips[:3]], now_s=1000.0)
    # the same episode again: replaced
    spool.put_many([(clips[1], clip_messages(clips[1]))], now_s=1001.0)
    assert (len(spool), spool.bytes) == in_file()
    assert len(spool) == 3
    assert spool.oldest_many(now_s=1150.0, n=2) == []  # all three expired
    assert spool.expired == 3
    assert (len(spool), spool.bytes) == (0, 0) == in_file()
    for i, clip in enumerate(clips[3:]):
        spool.put_many([(clip, clip_messages(clip))], now_s=1200.0 + i)
    assert spool.evicted > 0
    assert (len(spool), spool.bytes) == in_file()
    assert 0 < spool.bytes <= 400_000
    batch = spool.oldest_many(now_s=1210.0, n=2)
    assert len(batch) == 2
    assert [seq for seq, _ in batch] == sorted(seq for seq, _ in batch)
    spool.remove_many([seq for seq, _ in batch] + [10_000])  # one never spooled: no change
    assert (len(spool), spool.bytes) == in_file()
    kept = (len(spool), spool.bytes)
    spool.close()
    again = EvidenceSpool(path, max_bytes=400_000, max_age_s=100.0)
    assert (len(again), again.bytes) == kept
    again.close()


@pytest.fixture
def mosquitto(tmp_path: Path):
    require_mosquitto()
    with Mosquitto(tmp_path) as broker:
        yield broker


def test_the_channel_delivers_spooled_clips_after_the_broker_comes_back(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    config = MqttConfig(host="127.0.0.1", port=mosquitto.port, site=SITE, device_id=DEVICE,
                        spool_path=str(tmp_path / "events.sqlite"))  # fmt: skip
    clips = [dataclasses.replace(a_clip(12.0, seed=i), episode_id=f"ep-{i}") for i in range(3)]
    mosquitto.kill()
    publisher = EvidencePublisher(EvidenceConfig(), config).connect()
    for clip in clips:
        publisher.submit(clip)
    assert not publisher.flush(1.0)  # no broker: the clips wait in the spool
    publisher.close(timeout_s=0.5)
    assert (tmp_path / "events-evidence.sqlite").is_file()
    mosquitto.restart()
    with Recorder(mosquitto.port, topic=f"lungwatch/v1/{SITE}/+/+/evidence") as subscriber:
        again = EvidencePublisher(EvidenceConfig(), config).connect()  # a restart of the device
        assert again.flush(15.0)
        again.close()
        assembler = Assembler()
        got = [c for m in subscriber.messages if (c := assembler.take(m.json())) is not None]
    assert sorted(c.episode_id for c in got) == ["ep-0", "ep-1", "ep-2"]
    assert {c.episode_id: c.flac for c in got} == {c.episode_id: c.flac for c in clips}


def test_a_burst_of_clips_goes_out_whole_several_at_a_time(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """More clips than the channel hands paho at once, some of several parts: every one
    reaches the broker whole, none is dropped or left in the spool."""
    config = MqttConfig(host="127.0.0.1", port=mosquitto.port, site=SITE, device_id=DEVICE,
                        spool_path=str(tmp_path / "events.sqlite"))  # fmt: skip
    clips = [dataclasses.replace(a_clip(2.0 + (i % 3) * 6.0, seed=i), episode_id=f"ep-{i:02d}")
             for i in range(40)]  # fmt: skip
    assert len({len(clip_messages(c)) for c in clips}) > 1  # one part and several
    with Recorder(mosquitto.port, topic=f"lungwatch/v1/{SITE}/+/+/evidence") as subscriber:
        publisher = EvidencePublisher(EvidenceConfig(), config).connect()
        for clip in clips:
            publisher.submit(clip)
        assert publisher.flush(30.0)
        stats = publisher.stats()
        publisher.close()
        assembler = Assembler()
        got = [c for m in subscriber.messages if (c := assembler.take(m.json())) is not None]
    assert stats["sent"] == stats["submitted"] == len(clips)
    assert (stats["dropped"], stats["spooled"], stats["queued"]) == (0, 0, 0)
    assert {c.episode_id: c.flac for c in got} == {c.episode_id: c.flac for c in clips}


def test_the_runtime_sends_a_clip_per_onset_and_a_retained_summary(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A bed named in its config, on a chest audio with a pause (an apnoea): the summary names
    it and lists the open apnoea while it lasts, a clip of every physiological onset reaches
    the broker whole (its audio is the bed's), and at the end the summary is withdrawn."""
    from tests.edge.breathing_audio import chest_audio

    audio = chest_audio(70.0, 15.0, pause=(30.0, 60.0))
    path = write_audio(tmp_path / "chest.wav", audio)
    streams = [stream("bed-1", path, name="Bed 1", location="Ward 3 East")]
    config = build(config_mapping(tmp_path, streams, **mqtt_sections(tmp_path, mosquitto.port)))
    with Recorder(mosquitto.port, topic="lungwatch/v1/#") as subscriber:
        runtime = serve(config)
        withdrawn = lambda ms: any(m.topic.endswith("/summary") and not m.payload for m in ms)  # noqa: E731
        assert subscriber.wait_for(withdrawn, 10.0)
        messages = list(subscriber.messages)
    summaries = [m.json() for m in messages if m.topic == summary_topic(
        "ward-t", "edge-t", "bed-1") and m.payload]  # fmt: skip
    assert summaries
    assert {(s["name"], s["location"]) for s in summaries} == {("Bed 1", "Ward 3 East")}
    assert any(row["type"] == "apnoea" for s in summaries for row in s["open"])
    onsets = [Event.from_json(m.payload) for m in messages if m.topic.endswith("/event")]
    wanted = {e.episode_id for e in onsets if e.state == "onset" and e.kind == "physiological"}
    assembler = Assembler()
    clips = {c.episode_id: c for m in messages if m.topic.endswith("/evidence")
             if (c := assembler.take(m.json())) is not None}  # fmt: skip
    assert wanted
    assert wanted <= set(clips)
    apnoea = next(c for c in clips.values() if c.event_type == "apnoea")
    start = apnoea.start_sample
    np.testing.assert_allclose(apnoea.audio(), audio[start : start + apnoea.audio().size],
                               atol=2 / 32767)  # fmt: skip
    metrics = [m.json()["metrics"] for m in messages if m.topic.endswith("/metrics")]
    assert metrics[-1]["evidence_submitted"] >= len(wanted)  # sent after the last report
    assert runtime.streams[0].recorder is not None


def test_ring_slices_match_modulo_indexing() -> None:
    """The recorder's ring reads and writes (two slices at most) agree with indexing modulo
    the ring's length, across the wrap and for more rows than the ring holds."""
    from edge.evidence.recorder import _put_ring, _take_ring

    rng = np.random.default_rng(7)
    for _ in range(200):
        size = int(rng.integers(1, 40))
        ring, reference = np.zeros((size, 3)), np.zeros((size, 3))
        start, n = int(rng.integers(0, 500)), int(rng.integers(0, 90))
        rows = rng.normal(size=(n, 3))
        _put_ring(ring, start, rows)
        for i in range(n):
            reference[(start + i) % size] = rows[i]
        np.testing.assert_array_equal(ring, reference)
        a = int(rng.integers(0, 500))
        b = a + int(rng.integers(0, size + 1))
        np.testing.assert_array_equal(_take_ring(ring, a, b), ring[np.arange(a, b) % size])
