"""The emulator through a lossy channel over real UDP, and the two command lines."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from firmware_bridge import cli, emulator
from firmware_bridge.devicemodel import DeviceConfig, device_frames, read_pcm
from firmware_bridge.emulator import Channel, Impairments, play
from firmware_bridge.link import Bridge
from firmware_bridge.protocol import FrameType, SampleFormat, encode_frame
from firmware_bridge.receiver import Receiver
from firmware_bridge.senders import UdpSender
from firmware_bridge.timeline import SIGNAL_GAP
from firmware_bridge.transport import UdpTransport
from tests.firmware_bridge.helpers import (
    Background,
    Timeline,
    as_float,
    collect_until,
    free_port,
    write_recording,
)


def test_lossy_reordered_udp_stream_stays_sample_accurate(tmp_path: Path) -> None:
    """5 % loss, 2 % reordering, 1 % corruption and duplicates: the timeline is as long as
    the recording, every sample that arrived is where it belongs, and exactly the frames that
    never arrived intact are missing, each announced by a signal_gap report."""
    path = tmp_path / "rec.wav"
    source = write_recording(path, 6.0, seed=2)
    samples_in, rate_hz = read_pcm(path, SampleFormat.INT16)
    frames = list(device_frames(samples_in, rate_hz, DeviceConfig()))
    channel = Channel(Impairments(loss=0.05, reorder=0.02, corrupt=0.01, duplicate=0.01, seed=11))
    bridge = Bridge(UdpTransport("127.0.0.1", 0), Receiver())
    sender = UdpSender("127.0.0.1", bridge.transport.address[1])  # type: ignore[attr-defined]
    timed = [(t, encode_frame(f)) for t, f in frames]
    sending = Background(lambda: play(channel.run(timed), sender.send, speed=40.0))
    timeline = Timeline()
    collect_until(bridge.poll, timeline, lambda: timeline.end >= source.size, timeout_s=20)
    sending.join()
    sender.close()
    bridge.close()

    samples, missing = timeline.arrays()
    assert samples.size == source.size
    np.testing.assert_array_equal(samples[~missing], as_float(source)[~missing])
    expected = np.zeros(source.size, dtype=bool)
    for (_, frame), fate in zip(frames, channel.fates, strict=True):
        if frame.frame_type == FrameType.AUDIO and fate != "ok":
            expected[frame.first_sample : frame.first_sample + frame.sample_count] = True
    assert expected.any()
    assert channel.counts["reordered"] > 0
    np.testing.assert_array_equal(missing, expected)
    gaps = [r for r in timeline.reports if r.kind == SIGNAL_GAP]
    assert sum(r.detail["missing_samples"] for r in gaps) == expected.sum()


def test_channel_is_reproducible_and_counts_what_it_does() -> None:
    items = [(float(k), bytes([k % 256]) * 50) for k in range(2000)]
    imp = Impairments(loss=0.05, reorder=0.01, corrupt=0.01, duplicate=0.01, seed=3)
    first, second = Channel(imp), Channel(imp)
    out = list(first.run(items))
    assert out == list(second.run(items))
    counts = first.counts
    assert counts["frames"] == 2000
    assert 60 < counts["lost"] < 140
    assert len(out) == 2000 - counts["lost"] + counts["duplicated"]
    assert first.fates.count("corrupted") == counts["corrupted"] > 0


def test_bridge_cli_writes_the_received_timeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, out = tmp_path / "rec.wav", tmp_path / "received.wav"
    source = write_recording(path, 3.0)
    port = free_port()
    bridge_argv = [f"udp://127.0.0.1:{port}", "--wav", str(out), "--idle-exit-s", "1.0",
                   "--seconds", "20", "--events"]  # fmt: skip
    receiving = Background(lambda: cli.main(bridge_argv))
    threading.Event().wait(0.3)  # let the bridge bind before the device sends
    argv = ["--audio", str(path), "--to", f"udp://127.0.0.1:{port}", "--speed", "20"]
    assert emulator.main([*argv, "--off-body", "0.5:1.5", "--status-every-s", "0.5"]) == 0
    assert receiving.join() == 0
    received, rate_hz = sf.read(str(out), dtype="int16")
    assert rate_hz == 8000
    assert sf.info(str(out)).subtype == "PCM_16"
    np.testing.assert_array_equal(received, source)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    stream = [line for line in lines if "stream_id" in line and "event" not in line][-1]
    assert stream["samples"] == source.size
    assert stream["gaps"] == 0
    assert stream["bad_crc"] == 0
    off_body = {
        e["sample_index"]: e["off_body"] for e in lines if e.get("event") == "device_status"
    }
    assert len(off_body) == 6  # every 0.5 s, sent after the frame that crosses the mark
    assert off_body == {index: 0.5 <= index / 8000 < 1.5 for index in off_body}
    assert list(off_body.values()).count(True) == 2
    assert any(line.get("link", "").startswith("udp://") for line in lines)


def test_emulator_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert emulator.main(["--audio", str(tmp_path / "none.wav"), "--to", "udp://127.0.0.1:9"]) == 1
    assert emulator.main(["--audio", "x.wav", "--to", "ftp://h:1"]) == 1
    assert emulator.main(["--audio", "x.wav", "--to", "udp://h:1", "--loss", "2"]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3
    assert all(e.startswith("lungwatch emulate: error: ") for e in errors)
    assert "none.wav" in errors[0]
    assert "scheme" in errors[1]
    assert "--loss" in errors[2]


def test_bridge_cli_rejects_a_bad_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["udp://127.0.0.1:0", "--key", "1:zz"]) == 1
    assert "--key" in capsys.readouterr().err


def test_parse_keys() -> None:
    keys, default = cli.parse_keys(["00ff", "0x10:0102", "7:aa"])
    assert keys == {16: b"\x01\x02", 7: b"\xaa"}
    assert default == b"\x00\xff"
