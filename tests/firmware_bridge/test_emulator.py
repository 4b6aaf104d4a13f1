"""The emulator through a lossy channel over real UDP, and the command lines (emulate, bridge,
bridge provision)."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from firmware_bridge import cli, emulator
from firmware_bridge.devicemodel import DeviceConfig, device_frames, read_pcm
from firmware_bridge.emulator import Channel, Impairments, play
from firmware_bridge.errors import BridgeError
from firmware_bridge.keys import load_key_file
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
    device_key,
    free_port,
    write_recording,
)

KEY = bytes(range(32))


def test_lossy_reordered_udp_stream_stays_sample_accurate(tmp_path: Path) -> None:
    """5 % loss, 2 % reordering, 1 % corruption and duplicates, protocol v2: the timeline is
    as long as the recording, every sample that arrived is where it belongs, and exactly the
    frames that never arrived intact are missing, each announced by a signal_gap report; the
    network's duplicates are dropped as replays."""
    path = tmp_path / "rec.wav"
    source = write_recording(path, 6.0, seed=2)
    samples_in, rate_hz = read_pcm(path, SampleFormat.INT16)
    frames = list(device_frames(samples_in, rate_hz, DeviceConfig(key=KEY, session=1)))
    channel = Channel(Impairments(loss=0.05, reorder=0.02, corrupt=0.01, duplicate=0.01, seed=11))
    bridge = Bridge(UdpTransport("127.0.0.1", 0), Receiver(keys={1: KEY}))
    sender = UdpSender("127.0.0.1", bridge.transport.address[1])  # type: ignore[attr-defined]
    timed = [(t, encode_frame(f, KEY)) for t, f in frames]
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
    link = bridge.receiver.stats().link
    assert 0 < link.replayed <= channel.counts["duplicated"]
    assert link.auth_failed == link.stale_session == 0


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
    key_file, _ = device_key(tmp_path, device_id=7)
    port = free_port()
    bridge_argv = [f"udp://127.0.0.1:{port}", "--wav", str(out), "--idle-exit-s", "1.0",
                   "--seconds", "20", "--events", "--key-file", str(key_file)]  # fmt: skip
    receiving = Background(lambda: cli.main(bridge_argv))
    threading.Event().wait(0.3)  # let the bridge bind before the device sends
    argv = ["--audio", str(path), "--to", f"udp://127.0.0.1:{port}", "--speed", "20"]
    argv += ["--key-file", str(key_file)]
    assert emulator.main([*argv, "--off-body", "0.5:1.5", "--status-every-s", "0.5"]) == 0
    assert receiving.join() == 0
    received, rate_hz = sf.read(str(out), dtype="int16")
    assert rate_hz == 8000
    assert sf.info(str(out)).subtype == "PCM_16"
    assert out.stat().st_mode & 0o777 == 0o600  # a patient's sound: the user's alone
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
    link = [line for line in lines if line.get("link", "").startswith("udp://")][-1]
    assert link["frames_ok"] > 0
    assert link["replayed"] == link["auth_failed"] == link["v1_rejected"] == 0
    assert stream["device_id"] == 7
    state = json.loads(key_file.with_suffix(".sessions.json").read_text())  # the default
    assert state["devices"]["7"]["session"] == 1


def test_emulator_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rec.wav"
    write_recording(path, 0.5)
    key_file, _ = device_key(tmp_path)
    audio = ["--audio", str(path)]
    cases = [
        (["--audio", str(tmp_path / "none.wav"), "--to", "udp://127.0.0.1:9"], "none.wav"),
        (["--audio", "x.wav", "--to", "ftp://h:1"], "scheme"),
        (["--audio", "x.wav", "--to", "udp://h:1", "--loss", "2"], "--loss"),
        ([*audio, "--to", "udp://127.0.0.1:9", "--speed", "0"], "--speed must be a number > 0"),
        ([*audio, "--to", "udp://127.0.0.1:9", "--speed", "-2"], "--speed"),
        ([*audio, "--to", "udp://no-such-host.invalid:5005"], "cannot resolve no-such-host"),
        ([*audio, "--to", "udp://127.0.0.1:9", "--session", "3"], "need --key-file"),
        ([*audio, "--to", "udp://127.0.0.1:9", "--key-file", str(key_file), "--device-id", "2"],
         "no key for device 2"),
    ]  # fmt: skip
    for argv, _ in cases:
        assert emulator.main(argv) == 1, argv
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == len(cases), errors
    assert all(e.startswith("lungwatch emulate: error: ") for e in errors)
    for error, (_, expected) in zip(errors, cases, strict=True):
        assert expected in error, error
    assert captured.out == ""  # no summary line: nothing was sent
    assert not key_file.with_suffix(".session").exists()  # no session was taken


def test_emulator_takes_a_new_session_each_run(tmp_path: Path) -> None:
    """The session file is the device's flash counter: +1 before every run (and --session
    overrides it); the bridge accepts each run as a new session."""
    path = tmp_path / "rec.wav"
    write_recording(path, 0.5)
    key_file, key = device_key(tmp_path, device_id=3)
    bridge = Bridge(UdpTransport("127.0.0.1", 0), Receiver(keys={3: key}))
    argv = ["--audio", str(path), "--to", f"udp://127.0.0.1:{bridge.transport.address[1]}"]  # type: ignore[attr-defined]
    argv += ["--key-file", str(key_file)]
    for _ in range(2):
        assert emulator.main(argv) == 0
    assert key_file.with_suffix(".session").read_text().strip() == "2"
    assert emulator.main([*argv, "--session", "9"]) == 0
    assert key_file.with_suffix(".session").read_text().strip() == "2"
    timeline = Timeline()
    collect_until(bridge.poll, timeline, lambda: False, timeout_s=1.0)
    bridge.close()
    assert bridge.receiver.parser.guard.sessions() == {3: 9}
    assert bridge.receiver.stats().streams[0].restarts == 2
    assert bridge.receiver.stats().link.stale_session == 0


def test_bridge_cli_rejects_a_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("1:zz\n")
    bad.chmod(0o600)
    assert cli.main(["udp://127.0.0.1:0", "--key-file", str(bad)]) == 1
    assert str(bad) in capsys.readouterr().err


@pytest.mark.parametrize("url", ["udp://0.0.0.0:0", "udp://[::]:0", "tcp://10.0.0.7:5005"])
def test_bridge_cli_refuses_a_network_link_without_a_key(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([url, "--seconds", "0"]) == 1
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error.startswith(f"lungwatch bridge: error: {url}: receives from beyond loopback")
    assert "--key-file" in error


def test_provision_writes_a_private_key_file_and_says_what_to_flash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "keys" / "bed-1.key"
    assert cli.main(["provision", "--device-id", "0x11", "--out", str(out)]) == 0
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    ring = load_key_file(out)
    assert list(ring.keys) == [17]
    assert len(ring.keys[17]) == 32
    assert ring.default is None
    printed = capsys.readouterr().out
    assert ring.keys[17].hex() not in printed, "the key is printed nowhere"
    assert f"LWF_DEVICE_KEY line in {out}" in printed
    c_array = ", ".join(f"0x{b:02x}" for b in ring.keys[17])
    assert f"LWF_DEVICE_KEY[32] = {{{c_array}}};" in out.read_text()
    assert f"key_file={out}" in printed
    assert cli.main(["provision", "--device-id", "17", "--out", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    assert load_key_file(out).keys == ring.keys  # not replaced
    assert cli.main(["provision", "--device-id", "17", "--out", str(out), "--force"]) == 0
    assert load_key_file(out).keys != ring.keys


def test_keys_are_never_taken_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A key on the command line is visible to every user of the machine (``ps``): neither the
    bridge nor the emulator takes one; both read key files (mode 0600)."""
    for main, argv in ((cli.main, ["udp://127.0.0.1:0", "--key", "1:00ff"]),
                       (emulator.main, ["--audio", "x.wav", "--to", "udp://127.0.0.1:9",
                                        "--key", "00ff"])):  # fmt: skip
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        assert "unrecognized arguments: --key" in capsys.readouterr().err


def test_the_wav_is_private_even_over_an_open_file_and_never_through_a_link(
    tmp_path: Path,
) -> None:
    samples = np.zeros(800, np.float32)
    readable = tmp_path / "old.wav"
    readable.write_bytes(b"")
    readable.chmod(0o644)
    cli.write_wav(readable, samples, 8000)
    assert readable.stat().st_mode & 0o777 == 0o600
    target = tmp_path / "elsewhere.txt"
    target.write_text("not a recording")
    (tmp_path / "link.wav").symlink_to(target)
    with pytest.raises(BridgeError, match="cannot write WAV"):
        cli.write_wav(tmp_path / "link.wav", samples, 8000)
    assert target.read_text() == "not a recording"
