"""edge.sources.bridge.BridgeSource: the runtime's view of a stethoscope link (protocol v2 from
an emulator with a provisioned key file; v1 only with allow_v1), and its secure defaults."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

from edge.audio import read_audio
from edge.sources.base import AudioSource, Notice, SourceChunk, SourceError
from edge.sources.bridge import BridgeSource, check_url
from firmware_bridge import emulator
from tests.firmware_bridge.helpers import Background, device_key, write_recording


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


def keyed(tmp_path: Path, url: str) -> tuple[BridgeSource, str]:
    """A source on ``url`` + the key_file of a provisioned device 1; the emulator's key
    argument."""
    key_file, _ = device_key(tmp_path)
    sep = "&" if "?" in url else "?"
    return BridgeSource(f"{url}{sep}key_file={key_file}"), str(key_file)


def test_chunks_reproduce_the_file_when_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "rec.wav"
    write_recording(path, 3.0)
    source, key_file = keyed(tmp_path, "bridge://udp/127.0.0.1:0?device=1&stream=0&name=bed-12")
    assert isinstance(source, AudioSource)
    assert source.stream_id == "bed-12"
    assert source.sample_rate_hz == 8000
    device = run_device(path, source, "--key-file", key_file)
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
    source, key_file = keyed(tmp_path, "bridge://udp/127.0.0.1:0")
    device = run_device(
        path, source, "--loss", "0.05", "--reorder", "0.01", "--seed", "4", "--key-file", key_file
    )
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
    source, key_file = keyed(tmp_path, "bridge://udp/127.0.0.1:0?device=1")
    device = run_device(path, source, "--off-body", "1.5:2.5", "--key-file", key_file)
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
    source, key_file = keyed(tmp_path, "bridge://udp/127.0.0.1:0?rate=16000")
    device = run_device(path, source, "--key-file", key_file)
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
        ("bridge://udp/127.0.0.1:0?allow_v1=yes", "allow_v1 must be an integer"),
        ("bridge://udp/127.0.0.1:0?allow_v1=2", "allow_v1 must be 0 or 1"),
        ("bridge://udp/127.0.0.1:0?key_dir=/nonexistent", "key_dir /nonexistent: not a folder"),
    ],
)
def test_bad_urls_are_source_errors(url: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        BridgeSource(url)
    with pytest.raises(SourceError, match=message):
        check_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "bridge://udp/0.0.0.0:0?name=bed-1",
        "bridge://udp/[::]:0",
        "bridge://udp/10.1.2.3:5601",
        "bridge://udp/stethoscopes.ward.local:5601",
        "bridge://tcp/10.0.0.7:5005?device=1",
        "bridge://udp/0.0.0.0:0?allow_v1=1",
    ],
)
def test_a_network_source_without_a_key_is_refused(url: str) -> None:
    """Beyond loopback a source needs a key; the error names the source and what to add,
    before anything is bound (check_url: the same check without opening)."""
    message = rf"^{re.escape(url)}: receives from beyond loopback .*key_file=PATH"
    with pytest.raises(SourceError, match=message):
        check_url(url)
    with pytest.raises(SourceError, match=message):
        BridgeSource(url)


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    key_file, _ = device_key(tmp_path)
    key_file.chmod(0o644)
    with pytest.raises(SourceError, match=r"mode is 0644; others may read it \(chmod 600 "):
        BridgeSource(f"bridge://udp/127.0.0.1:0?key_file={key_file}")


def test_a_network_source_with_a_key_listens(tmp_path: Path) -> None:
    key_file, _ = device_key(tmp_path)
    for url in ("bridge://udp/0.0.0.0:0", "bridge://udp/localhost:0", "bridge://udp/[::1]:0"):
        check_url(f"{url}?key_file={key_file}")
    source = BridgeSource(f"bridge://udp/0.0.0.0:0?key_file={key_file}")
    source.close()
    source = BridgeSource(f"bridge://udp/0.0.0.0:0?key_dir={tmp_path}")
    source.close()


def test_v1_frames_are_refused_by_default(tmp_path: Path) -> None:
    """A v1 device (the emulator without a key file) to a default source: no audio, every
    frame counted v1_rejected."""
    path = tmp_path / "rec.wav"
    write_recording(path, 1.0)
    source = BridgeSource("bridge://udp/127.0.0.1:0?device=1")
    device = run_device(path, source)
    assert device.join() == 0
    chunks = [source.read(0.2) for _ in range(3)]
    source.close()
    assert sum(c.samples.size for c in chunks if c is not None) == 0
    link = source.stats().link
    assert link.v1_rejected == 32 + 2 + 3  # audio, device info + status, heartbeats
    assert link.frames_ok == 0


def test_allow_v1_takes_tagged_v1_frames_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """allow_v1=1 and a bare v1 key in key_file: v1 frames must carry the HMAC tag."""
    path, key_file = tmp_path / "rec.wav", tmp_path / "device.key"
    write_recording(path, 1.0)
    key_file.write_text("000102030405060708090a0b0c0d0e0f\n")
    key_file.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        source = BridgeSource(f"bridge://udp/127.0.0.1:0?device=1&key_file={key_file}&allow_v1=1")
    assert any("allow_v1" in r.getMessage() and "version-1" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    device = run_device(path, source, "--v1-key-file", str(key_file))
    chunks = read_all(source, 8000)
    device.join()
    source.close()
    assert sum(c.samples.size for c in chunks) == 8000
    link = source.stats().link
    assert (link.bad_tag, link.v1_rejected) == (0, 0)


def test_a_keyless_listener_beyond_loopback_is_refused_when_the_config_loads(
    tmp_path: Path,
) -> None:
    """The runtime config names the file, the stream and what to add; loopback is taken."""
    from edge.runtime.config import load_runtime_config
    from lungwatch.errors import ConfigError

    config = tmp_path / "ward.yaml"
    config.write_text(
        "streams:\n  - {id: bed-1, source: 'bridge://udp/0.0.0.0:5601?name=bed-1'}\n"
        "sinks: {mqtt: false}\n"
    )
    with pytest.raises(ConfigError, match=r"ward.yaml: streams\[0\].source must be .*key_file"):
        load_runtime_config(config)
    config.write_text(
        "streams:\n  - {id: bed-1, source: 'bridge://udp/127.0.0.1:5601?name=bed-1'}\n"
        "sinks: {mqtt: false}\n"
    )
    assert load_runtime_config(config).streams[0].id == "bed-1"
