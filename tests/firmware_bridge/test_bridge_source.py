"""edge.sources.bridge.BridgeSource: the runtime's view of a stethoscope link."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.audio import read_audio
from edge.sources.base import AudioSource, Notice, SourceChunk, SourceError
from edge.sources.bridge import BridgeSource
from firmware_bridge import emulator
from tests.firmware_bridge.helpers import Background, write_recording


def read_all(source: BridgeSource, n_samples: int, timeout_s: float = 20.0) -> list[SourceChunk]:
    chunks: list[SourceChunk] = []
    deadline = 0.0
    while sum(c.samples.size for c in chunks) < n_samples and deadline < timeout_s:
        chunk = source.read(0.1)
        deadline += 0.1 if chunk is None else 0.0
        if chunk is not None:
            chunks.append(chunk)
    return chunks


def run_device(path: Path, source: BridgeSource, *extra: str) -> Background:
    port = source.address[1]  # type: ignore[index]
    argv = ["--audio", str(path), "--to", f"udp://127.0.0.1:{port}", "--speed", "30", *extra]
    return Background(lambda: emulator.main(argv))


def test_chunks_reproduce_the_file_when_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "rec.wav"
    write_recording(path, 3.0)
    source = BridgeSource("bridge://udp/127.0.0.1:0?device=1&stream=0&name=bed-12")
    assert isinstance(source, AudioSource)
    assert source.stream_id == "bed-12"
    assert source.sample_rate_hz == 8000
    device = run_device(path, source, "--device-id", "1")
    expected = read_audio(path).samples
    chunks = read_all(source, expected.size)
    assert device.join() == 0
    source.close()
    assert [c.first_sample for c in chunks] == list(
        np.cumsum([0] + [c.samples.size for c in chunks[:-1]])
    )
    assert not any(c.missing for c in chunks)
    np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks]), expected)
    notices = [n for c in chunks for n in c.notices]
    assert {n.kind for n in notices} == {"device_status"}  # device info and status


def test_gaps_are_missing_chunks_with_signal_gap_notices(tmp_path: Path) -> None:
    path = tmp_path / "rec.wav"
    write_recording(path, 4.0)
    source = BridgeSource("bridge://udp/127.0.0.1:0")
    device = run_device(path, source, "--loss", "0.05", "--reorder", "0.01", "--seed", "4")
    expected = read_audio(path).samples
    chunks = read_all(source, expected.size)
    assert device.join() == 0
    source.close()
    timeline = np.concatenate([c.samples for c in chunks])
    missing = np.concatenate([np.full(c.samples.size, c.missing) for c in chunks])
    assert timeline.size == expected.size
    assert missing.any()
    np.testing.assert_array_equal(timeline[~missing], expected[~missing])
    for chunk in chunks:
        gap_notices = [n for n in chunk.notices if n.kind == "signal_gap"]
        assert bool(gap_notices) == chunk.missing
        if chunk.missing:
            assert gap_notices[0].detail["missing_samples"] == chunk.samples.size
            assert gap_notices[0].sample_index == chunk.first_sample


def test_off_body_status_becomes_a_device_status_notice(tmp_path: Path) -> None:
    path = tmp_path / "rec.wav"
    write_recording(path, 3.0)
    source = BridgeSource("bridge://udp/127.0.0.1:0?device=1")
    device = run_device(path, source, "--off-body", "1.5:2.5")  # status about every second
    chunks = read_all(source, 24000)
    device.join()
    source.close()
    statuses = [n for c in chunks for n in c.notices if "off_body" in n.detail]
    assert [n.detail["off_body"] for n in statuses[:2]] == [False, True]
    assert all(isinstance(n, Notice) and n.kind == "device_status" for n in statuses)
    assert statuses[1].sample_index == 16128
    assert statuses[1].detail["battery_percent"] == 100


def test_a_stream_at_another_rate_gives_one_notice_and_no_audio(tmp_path: Path) -> None:
    path = tmp_path / "rec.wav"
    write_recording(path, 1.0)
    source = BridgeSource("bridge://udp/127.0.0.1:0?rate=16000")
    device = run_device(path, source)
    chunks = [source.read(0.25) for _ in range(4)]
    device.join()
    source.close()
    got = [c for c in chunks if c is not None]
    assert all(c.samples.size == 0 for c in got)
    rate = [n for c in got for n in c.notices if "expected_hz" in n.detail]
    assert len(rate) == 1
    assert rate[0].detail == {"sample_rate_hz": 8000, "expected_hz": 16000}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("bridge://carrier-pigeon/x:1", "transport must be one of"),
        ("bridge://udp/127.0.0.1:0?colour=red", "unknown option 'colour'"),
        ("bridge://udp/127.0.0.1:0?device=one", "device must be an integer"),
        ("bridge://udp/127.0.0.1:0?key_file=/nonexistent", "key_file /nonexistent"),
        ("bridge://udp/127.0.0.1", "HOST:PORT"),
        ("bridge://udp/127.0.0.1:0?jitter_frames=-1", "jitter.depth_frames"),
    ],
)
def test_bad_urls_are_source_errors(url: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        BridgeSource(url)


def test_key_file_requires_tagged_frames(tmp_path: Path) -> None:
    path, key_file = tmp_path / "rec.wav", tmp_path / "device.key"
    write_recording(path, 1.0)
    key_file.write_text("000102030405060708090a0b0c0d0e0f\n")
    source = BridgeSource(f"bridge://udp/127.0.0.1:0?device=1&key_file={key_file}")
    device = run_device(path, source, "--key", "000102030405060708090a0b0c0d0e0f")
    chunks = read_all(source, 8000)
    device.join()
    source.close()
    assert sum(c.samples.size for c in chunks) == 8000
    assert source._bridge.receiver.stats().link.bad_tag == 0
