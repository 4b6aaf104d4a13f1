"""Protocol v2 against a listener on the link: replays (in a session, of an older session, after
a bridge restart), tampering and eavesdropping, through real UDP sockets and the runtime's
``bridge://`` source; the anti-replay window and the session state file on their own."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import google_crc32c
import numpy as np
import pytest

from edge.sources.base import SourceChunk
from edge.sources.bridge import BridgeSource
from firmware_bridge import emulator
from firmware_bridge.devicemodel import DeviceConfig, device_frames
from firmware_bridge.errors import SettingError
from firmware_bridge.parser import FrameParser
from firmware_bridge.protocol import CRC, FLAG_STREAM_START, audio_frame, encode_frame
from firmware_bridge.senders import UdpSender
from firmware_bridge.session import REPLAY_WINDOW, ReplayWindow, SessionStore
from tests.firmware_bridge.helpers import Background, as_float, device_key, write_recording

RATE_HZ = 8000
TIMEOUT_S = 20.0
U64 = 2**64 - 1


def sealed_stream(x: np.ndarray, key: bytes, session: int, device_id: int = 1) -> list[bytes]:
    """What the device sends in one session: device info (stream start), audio, status, the
    closing heartbeats, each a v2 datagram."""
    config = DeviceConfig(device_id=device_id, key=key, session=session)
    return [encode_frame(f, key) for _, f in device_frames(x, RATE_HZ, config)]


def tampered(datagram: bytes, at: int) -> bytes:
    """``datagram`` with one bit flipped at ``at`` and its CRC recomputed (passes the link
    check: only the AEAD can tell)."""
    out = bytearray(datagram)
    out[at] ^= 0x01
    CRC.pack_into(out, len(out) - 4, google_crc32c.value(bytes(out[:-4])))
    return bytes(out)


def read_until(source: BridgeSource, n_samples: int, done: Callable[[], bool]) -> list[SourceChunk]:
    """Chunks until ``n_samples`` arrived and ``done()`` (the counters the test waits for),
    or the timeout (the caller's asserts then fail)."""
    chunks: list[SourceChunk] = []
    waited = 0.0
    while waited < TIMEOUT_S:
        if sum(c.samples.size for c in chunks) >= n_samples and done():
            break
        chunk = source.read(0.1)
        waited += 0.1 if chunk is None else 0.0
        if chunk is not None:
            chunks.append(chunk)
    return chunks


def send_all(port: int, datagrams: list[bytes]) -> None:
    sender = UdpSender("127.0.0.1", port)
    try:
        for data in datagrams:
            assert sender.send(data)
    finally:
        sender.close()


@pytest.fixture
def keyed_source(tmp_path: Path) -> tuple[BridgeSource, bytes, Path]:
    key_file, key = device_key(tmp_path)
    source = BridgeSource(f"bridge://udp/127.0.0.1:0?device=1&key_file={key_file}")
    return source, key, key_file


def test_replayed_start_and_data_frames_are_rejected_and_the_stream_stays_intact(
    keyed_source: tuple[BridgeSource, bytes, Path],
) -> None:
    """Session 1 plays X; a listener replays its stream-start datagram (the v1 attack: taken
    as a device restart, old audio spliced in) and four audio datagrams, and sends two
    tampered copies. The device reboots into session 2 and plays Y; the listener replays
    session 1's start again. The bed's timeline is exactly X then Y, with one restart (the
    genuine reboot); every replay is counted, nothing else is."""
    source, key, _ = keyed_source
    rng = np.random.default_rng(3)
    x = rng.integers(-3000, 3000, 40 * 256).astype(np.int16)
    y = rng.integers(-3000, 3000, 20 * 256).astype(np.int16)
    first, second = sealed_stream(x, key, session=1), sealed_stream(y, key, session=2)
    start, data = first[0], first[5:9]
    attack_1 = [start, *data, tampered(first[12], 20), tampered(first[12], 60)]
    datagrams = [*first[:30], *attack_1, *first[30:], second[0], start, *second[1:]]
    port = source.address[1]  # type: ignore[index]
    sending = Background(lambda: send_all(port, datagrams))

    def counted() -> bool:  # every datagram handled, the trailing status and heartbeats too
        link = source.stats().link
        taken = (link.replayed, link.stale_session, link.auth_failed, link.frames_ok)
        return taken == (5, 1, 2, len(first) + len(second))

    chunks = read_until(source, x.size + y.size, counted)
    sending.join()
    source.close()
    link = source.stats().link
    assert (link.replayed, link.stale_session, link.auth_failed) == (5, 1, 2)
    assert link.frames_ok == len(first) + len(second)
    assert not any(c.missing for c in chunks)
    timeline = np.concatenate([c.samples for c in chunks])
    np.testing.assert_array_equal(timeline, as_float(np.concatenate([x, y])))
    restarts = [n for c in chunks for n in c.notices if n.detail.get("event") == "restart"]
    assert [n.sample_index for n in restarts] == [x.size]  # the reboot, at the end of X
    (stream,) = source.stats().streams
    assert stream.restarts == 1
    assert stream.duplicates == stream.late == 0  # the replays never reached the timeline


def test_a_replay_after_a_bridge_restart_is_still_refused(
    keyed_source: tuple[BridgeSource, bytes, Path],
) -> None:
    """The session state file outlives the bridge: after a restart, session 1's start (an
    older session) is stale and session 2's frames up to the saved counter are replays; the
    device's next frames are taken (the restarted bridge joins the stream at its frame 9:
    samples before it are missing)."""
    source, key, key_file = keyed_source
    x = np.random.default_rng(4).integers(-3000, 3000, 20 * 256).astype(np.int16)
    first, second = sealed_stream(x, key, session=1), sealed_stream(x, key, session=2)
    port = source.address[1]  # type: ignore[index]
    send_all(port, [*first, *second[:10]])
    read_until(source, x.size + 9 * 256, lambda: source.stats().link.frames_ok == len(first) + 10)
    source.close()  # saves every stream's counter
    state = json.loads(key_file.with_suffix(".sessions.json").read_text())
    assert state["devices"]["1"]["session"] == 2
    assert state["devices"]["1"]["counters"] == {"0": 9}

    restarted = BridgeSource(f"bridge://udp/127.0.0.1:0?device=1&key_file={key_file}")
    port = restarted.address[1]  # type: ignore[index]
    send_all(port, [first[0], first[7], second[0], second[9], *second[10:]])

    def counted() -> bool:
        link = restarted.stats().link
        return (link.stale_session, link.replayed, link.frames_ok) == (2, 2, len(second) - 10)

    chunks = read_until(restarted, x.size, counted)
    restarted.close()
    link = restarted.stats().link
    assert (link.stale_session, link.replayed, link.auth_failed) == (2, 2, 0)
    assert link.frames_ok == len(second) - 10
    samples = np.concatenate([c.samples for c in chunks])
    missing = np.concatenate([np.full(c.samples.size, c.missing) for c in chunks])
    np.testing.assert_array_equal(missing, np.arange(x.size) < 9 * 256)
    np.testing.assert_array_equal(samples[~missing], as_float(x[9 * 256 :]))


def pcm_runs(pcm: bytes, run: int = 16) -> set[bytes]:
    """Every ``run``-byte stretch of the PCM that starts on a sample."""
    return {pcm[i : i + run] for i in range(0, len(pcm) - run + 1, 2)}


def captured(tmp_path: Path, *extra: str) -> tuple[list[bytes], np.ndarray]:
    """The datagrams the emulator sends to a plain socket (what a listener on the Wi-Fi
    captures), and the int16 PCM it played."""
    path = tmp_path / "rec.wav"
    x = write_recording(path, 2.0, seed=5)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sniffer:
        sniffer.bind(("127.0.0.1", 0))
        sniffer.settimeout(5.0)
        port = sniffer.getsockname()[1]
        argv = ["--audio", str(path), "--to", f"udp://127.0.0.1:{port}", *extra]
        assert emulator.main(argv) == 0
        datagrams: list[bytes] = []
        expected = len(x) // 256 + 1 + 2 + 3  # audio, device info, status, heartbeats
        while len(datagrams) < expected:
            datagrams.append(sniffer.recv(65535))
    return datagrams, x


def test_captured_v2_datagrams_hold_no_pcm_run(tmp_path: Path) -> None:
    """No 16-byte stretch of the recording's int16 PCM appears anywhere in any v2 datagram;
    the same capture of version 1 is full of it (the check can see cleartext)."""
    key_file, _ = device_key(tmp_path)
    sealed, x = captured(tmp_path, "--key-file", str(key_file))
    runs = pcm_runs(x.astype("<i2").tobytes())
    found = [d[i : i + 16] in runs for d in sealed for i in range(len(d) - 15)]
    assert len(found) > 30_000
    assert not any(found)
    clear, _ = captured(tmp_path)  # version 1
    assert sum(d[i : i + 16] in runs for d in clear for i in range(len(d) - 15)) > 10_000


@pytest.mark.parametrize(
    ("sequence", "accepted"),
    [
        ([5, 5], [True, False]),  # a duplicate
        ([5, 3, 4, 3], [True, True, True, False]),  # out of order within the window
        ([0, REPLAY_WINDOW, 1, 0], [True, True, True, False]),  # the oldest still in reach
        ([0, REPLAY_WINDOW + 1, 1], [True, True, False]),  # too old
        ([7, U64, U64 - REPLAY_WINDOW, U64 + 1 - REPLAY_WINDOW], [True, True, False, True]),
    ],
)  # fmt: skip
def test_replay_window(sequence: list[int], accepted: list[bool]) -> None:
    window = ReplayWindow()
    assert [window.accept(c) for c in sequence] == accepted


def test_session_state_file_is_private_and_refused_when_corrupt(tmp_path: Path) -> None:
    key = bytes(range(32))
    path = tmp_path / "state" / "sessions.json"
    parser = FrameParser(keys={1: key}, state_path=path)
    frame = audio_frame(1, 0, 0, 0, RATE_HZ, np.zeros(8, np.int16), flags=FLAG_STREAM_START)
    assert len(parser.push(encode_frame(frame._replace(session=4), key))) == 1
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text())["devices"]["1"]["session"] == 4
    path.write_text("{not json")
    with pytest.raises(SettingError, match="not a session state file"):
        FrameParser(keys={1: key}, state_path=path)


def test_sessions_persist_per_key(tmp_path: Path) -> None:
    """After a restart an older session is stale; a re-provisioned device (a new key, its
    session counter from 0 again) starts afresh: the state keeps the key's fingerprint."""
    path = tmp_path / "sessions.json"
    old_key, new_key = bytes(range(32)), bytes(range(1, 33))
    frame = audio_frame(1, 0, 0, 0, RATE_HZ, np.zeros(8, np.int16))
    first = FrameParser(keys={1: old_key}, state_path=path)
    assert first.push(encode_frame(frame._replace(session=50), old_key))
    first.close()
    again = FrameParser(keys={1: old_key}, state_path=path)
    assert again.push(encode_frame(frame._replace(session=49), old_key)) == []
    assert again.stats().stale_session == 1
    replaced = FrameParser(keys={1: new_key}, state_path=path)
    assert replaced.push(encode_frame(frame._replace(session=1), new_key))
    assert replaced.guard.sessions() == {1: 1}


def _save_devices(path: str, first: int, count: int) -> None:
    """In a separate process: one save per device id (each reads the file afresh)."""
    store = SessionStore(path)
    for device in range(first, first + count):
        entry = {"key_id": "k", "session": device, "counters": {0: device}}
        assert store.save({device: entry})


def test_processes_sharing_the_state_file_keep_every_device(tmp_path: Path) -> None:
    """Two processes saving 150 devices each at once: the file ends with all 300 (without the
    file lock a read-merge-write of one would drop the other's latest devices)."""
    path = str(tmp_path / "sessions.json")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_save_devices, args=(path, s, 150)) for s in (0, 1000)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    devices = json.loads(Path(path).read_text())["devices"]
    assert sorted(map(int, devices)) == [*range(150), *range(1000, 1150)]


def test_a_state_file_spoiled_while_running_is_not_overwritten(tmp_path: Path) -> None:
    """Its other devices' entries are not dropped: the save fails and says so."""
    path = tmp_path / "sessions.json"
    store = SessionStore(path)
    assert store.save({1: {"key_id": "k", "session": 1, "counters": {}}})
    path.write_text("{spoiled")
    assert not store.save({2: {"key_id": "k", "session": 1, "counters": {}}})
    assert path.read_text() == "{spoiled"
