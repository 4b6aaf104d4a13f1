"""Transports end to end with real sockets and a real pty pair: UDP, TCP (with reconnect after
the server side closes) and serial, fed by the emulator (protocol v2, a provisioned key file)
or by a test server (v2 frames; one serial test sends v1 frames to a bridge that allows them)."""

from __future__ import annotations

import json
import random
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from firmware_bridge import emulator
from firmware_bridge.link import DISCONNECTED, RECONNECTED, Bridge
from firmware_bridge.protocol import encode_frame, heartbeat_frame
from firmware_bridge.receiver import Receiver
from firmware_bridge.senders import SerialSender
from firmware_bridge.transport import Backoff, SerialTransport, TcpTransport, UdpTransport
from tests.firmware_bridge.helpers import (
    RATE_HZ,
    Background,
    Timeline,
    as_float,
    audio_frames,
    collect_until,
    device_key,
    free_port,
    write_recording,
)

SECONDS = 3.0
KEY = bytes(range(100, 132))


@pytest.fixture
def recording(tmp_path: Path) -> tuple[Path, np.ndarray]:
    path = tmp_path / "rec.wav"
    return path, write_recording(path, SECONDS)


@pytest.fixture
def keyed(tmp_path: Path) -> tuple[Path, Receiver]:
    """A provisioned key file for device 1 and a receiver that has its key."""
    key_file, key = device_key(tmp_path)
    return key_file, Receiver(keys={1: key})


def assert_exact(timeline: Timeline, source: np.ndarray) -> None:
    samples, missing = timeline.arrays()
    assert samples.size == source.size
    assert not missing.any()
    np.testing.assert_array_equal(samples, as_float(source))


def test_udp_from_the_emulator(
    recording: tuple[Path, np.ndarray],
    keyed: tuple[Path, Receiver],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, source = recording
    key_file, receiver = keyed
    bridge = Bridge(UdpTransport("127.0.0.1", 0), receiver)
    port = bridge.transport.address[1]  # type: ignore[attr-defined]
    argv = ["--audio", str(path), "--to", f"udp://127.0.0.1:{port}", "--speed", "30"]
    argv += ["--key-file", str(key_file)]
    sender = Background(lambda: emulator.main(argv))
    timeline = Timeline()
    collect_until(bridge.poll, timeline, lambda: timeline.end >= source.size, timeout_s=20)
    bridge.close()
    assert sender.join() == 0
    assert_exact(timeline, source)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["samples"] == source.size
    assert summary["lost"] == 0
    assert (summary["protocol"], summary["session"], summary["device_id"]) == (2, 1, 1)


def serve_in_two_connections(server: socket.socket, first: bytes, second: bytes) -> None:
    """Send ``first`` in random pieces, close (the server side drops the link), accept the
    reconnection and send ``second``."""
    rng = random.Random(0)
    for data in (first, second):
        conn, _ = server.accept()
        with conn:
            at = 0
            while at < len(data):
                step = rng.randint(1, 700)
                conn.sendall(data[at : at + step])
                at += step
            if data is second:
                conn.recv(1)  # hold the link open until the test closes its side


@pytest.mark.parametrize("cut_mid_frame", [False, True])
def test_tcp_reconnects_after_the_server_closes(cut_mid_frame: bool) -> None:
    source = np.random.default_rng(4).integers(-3000, 3000, 40 * 256).astype(np.int16)
    frames = [encode_frame(f._replace(session=1), KEY) for f in audio_frames(source, 256)]
    tail = encode_frame(heartbeat_frame(1, 0, 999, source.size, RATE_HZ)._replace(session=1), KEY)
    first = b"".join(frames[:20]) + (frames[20][:100] if cut_mid_frame else b"")
    second = b"".join(frames[21:] if cut_mid_frame else frames[20:]) + tail
    server = socket.create_server(("127.0.0.1", 0))
    serving = Background(lambda: serve_in_two_connections(server, first, second))
    transport = TcpTransport("127.0.0.1", server.getsockname()[1], Backoff(0.02, 0.2))
    bridge = Bridge(transport, Receiver(keys={1: KEY}))
    timeline = Timeline()
    collect_until(bridge.poll, timeline, lambda: timeline.end >= source.size, timeout_s=20)
    bridge.close()
    serving.join()
    server.close()
    kinds = timeline.kinds()
    assert kinds.index(DISCONNECTED) < kinds.index(RECONNECTED)
    samples, missing = timeline.arrays()
    assert samples.size == source.size
    lost = slice(20 * 256, 21 * 256) if cut_mid_frame else slice(0, 0)
    assert missing[lost].all()
    assert missing.sum() == lost.stop - lost.start
    np.testing.assert_array_equal(samples[~missing], as_float(source)[~missing])
    assert bridge.receiver.stats().link.truncated == int(cut_mid_frame)


def test_tcp_to_the_emulator_as_a_listening_device(
    recording: tuple[Path, np.ndarray], keyed: tuple[Path, Receiver]
) -> None:
    path, source = recording
    key_file, receiver = keyed
    port = free_port(socket.SOCK_STREAM)
    argv = ["--audio", str(path), "--to", f"tcp://127.0.0.1:{port}", "--speed", "30"]
    device = Background(lambda: emulator.main([*argv, "--key-file", str(key_file)]))
    bridge = Bridge(TcpTransport("127.0.0.1", port, Backoff(0.02, 0.2)), receiver)
    timeline = Timeline()
    collect_until(bridge.poll, timeline, lambda: timeline.end >= source.size, timeout_s=20)
    bridge.close()
    assert device.join() == 0
    assert_exact(timeline, source)


@pytest.fixture
def pty_pair() -> Iterator[tuple[str, str]]:
    """Two connected pseudo-terminals from socat (skipped without socat)."""
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed (CI installs it)")
    proc = subprocess.Popen(
        ["socat", "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    names: list[str] = []
    assert proc.stderr is not None
    while len(names) < 2:
        line = proc.stderr.readline()
        if not line:
            break
        names += re.findall(r"PTY is (\S+)", line)
    try:
        if len(names) < 2:
            pytest.fail("socat did not report two ptys")
        yield names[0], names[1]
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_serial_over_a_pty_pair(pty_pair: tuple[str, str]) -> None:
    writer_path, reader_path = pty_pair
    source = np.random.default_rng(5).integers(-3000, 3000, 30 * 256).astype(np.int16)
    bridge = Bridge(SerialTransport(reader_path, 115200), Receiver(allow_v1=True))
    sender = SerialSender(writer_path, 115200)
    data = [encode_frame(f) for f in audio_frames(source, 256)]
    data.append(encode_frame(heartbeat_frame(1, 0, 999, source.size, RATE_HZ)))
    writing = Background(lambda: [sender.send(d) for d in data])
    timeline = Timeline()
    collect_until(bridge.poll, timeline, lambda: timeline.end >= source.size, timeout_s=20)
    writing.join()
    sender.close()
    bridge.close()
    assert_exact(timeline, source)


def test_emulator_over_serial(
    pty_pair: tuple[str, str],
    recording: tuple[Path, np.ndarray],
    keyed: tuple[Path, Receiver],
) -> None:
    path, source = recording
    key_file, receiver = keyed
    writer_path, reader_path = pty_pair
    bridge = Bridge(SerialTransport(reader_path, 921600), receiver)
    argv = ["--audio", str(path), "--to", f"serial://{writer_path}?baud=921600"]
    argv += ["--key-file", str(key_file)]
    device = Background(lambda: emulator.main(argv))
    timeline = Timeline()
    collect_until(bridge.poll, timeline, lambda: timeline.end >= source.size, timeout_s=20)
    assert device.join() == 0
    bridge.close()
    assert_exact(timeline, source)
