"""``lungwatch bridge URL``: receive wearable stethoscope streams and report on them;
``lungwatch bridge provision``: make a device's key.

    lungwatch bridge provision --device-id 17 --out keys/bed-1.key
    lungwatch bridge udp://0.0.0.0:5005 --key-file keys/bed-1.key --seconds 30 --wav rx.wav

Keys, the session state file, version 1 and the JSON lines printed: docs/firmware-protocol.md,
4.4-4.6 and 9. Keys are never taken on the command line, where ``ps`` shows them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from firmware_bridge.assembler import JitterConfig
from firmware_bridge.errors import BridgeError
from firmware_bridge.keys import default_state_path, load_keys, provision, require_key
from firmware_bridge.link import Bridge
from firmware_bridge.receiver import V1_WARNING, Output, Receiver, ReceiverConfig
from firmware_bridge.timeline import DEVICE_STATUS, Segment, StreamKey
from firmware_bridge.transport import open_transport
from firmware_bridge.urls import check_options, parse_link_url
from lungwatch.cli import ArgumentParser

POLL_S = 0.05
INT16_FULL_SCALE = 32768.0
PROVISION = "provision"
log = logging.getLogger("firmware_bridge")
Statuses = dict[StreamKey, dict[str, Any]]  # each stream's last device status


class Recorder:
    """One stream's segments (the first seen, unless chosen) for ``--wav``, missing as zeros."""

    def __init__(self, device_id: int | None, stream_id: int | None) -> None:
        self.device_id, self.stream_id = device_id, stream_id
        self.key: StreamKey | None = None
        self.segments: list[Segment] = []
        self.sample_rate_hz = 0

    def take(self, item: Segment) -> None:
        device_id, stream_id = item.stream
        wanted = self.device_id in (None, device_id) and self.stream_id in (None, stream_id)
        if self.key is None and wanted:
            self.key, self.sample_rate_hz = item.stream, item.sample_rate_hz
        if item.stream == self.key:
            self.segments.append(item)

    def timeline(self) -> np.ndarray:
        origin = min((s.first_sample for s in self.segments), default=0)
        end = max((s.first_sample + s.samples.size for s in self.segments), default=0)
        out = np.zeros(end - origin, dtype=np.float32)
        for s in self.segments:
            out[s.first_sample - origin : s.first_sample - origin + s.samples.size] = s.samples
        return out


def write_wav(path: Path, samples: np.ndarray, sample_rate_hz: int) -> None:
    """16-bit PCM when every sample is an exact int16 value (lossless), else float. A patient's
    sound: mode 0600 (also for a file already there); a link in its place is refused."""
    try:
        import soundfile as sf
    except ImportError:
        raise BridgeError("--wav needs soundfile: pip install soundfile") from None
    scaled = samples.astype(np.float64) * INT16_FULL_SCALE
    subtype = "PCM_16" if np.array_equal(scaled, np.round(scaled)) else "FLOAT"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as out:
            sf.write(out, samples, sample_rate_hz, subtype=subtype, format="WAV")
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise BridgeError(f"{path}: cannot write WAV ({exc})") from exc


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="lungwatch bridge",
        description="Receive wearable stethoscope streams, print per-stream statistics as "
        "JSON lines, optionally write the received timeline to a WAV.",
    )
    parser.add_argument("url", help="udp://HOST:PORT, tcp://HOST:PORT, serial:///dev/ttyX?baud=N")
    parser.add_argument("--seconds", type=float, help="stop after this long (default: Ctrl-C)")
    parser.add_argument("--idle-exit-s", type=float, help="stop after this long without data")
    parser.add_argument("--wav", type=Path, help="write one stream's timeline here at the end")
    parser.add_argument("--device", type=lambda v: int(v, 0), help="stream for --wav: device id")
    parser.add_argument("--stream", type=lambda v: int(v, 0), help="stream for --wav: stream id")
    parser.add_argument("--key-file", type=Path, help="device key file (DEVICE:HEX lines)")
    parser.add_argument("--key-dir", type=Path, help="folder of device key files (*.key)")
    parser.add_argument("--state-file", type=Path, help="v2 session state (default: next to "
                        "the key file or in the key folder; none: in memory)")  # fmt: skip
    parser.add_argument("--allow-v1", action="store_true", help="also accept version-1 frames "
                        "(unencrypted, no replay protection)")  # fmt: skip
    parser.add_argument(
        "--stats-every-s", type=float, default=1.0, help="seconds between statistics lines"
    )
    parser.add_argument("--events", action="store_true", help="print each report as it comes")
    parser.add_argument(
        "--jitter-frames", type=int, default=JitterConfig.depth_frames,
        help="frames held behind a missing one before it is declared a gap",
    )  # fmt: skip
    parser.add_argument(
        "--max-hold-ms", type=float, default=JitterConfig.max_hold_s * 1000,
        help="the longest a frame waits for a missing one before it is a gap (ms)",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [PROVISION]:
        return provision_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return _run(args, sys.stdout)
    except BridgeError as exc:
        print(f"lungwatch bridge: error: {exc}", file=sys.stderr)
        return 1


def provision_main(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="lungwatch bridge provision",
        description="Make a device's random 32-byte key (protocol v2), write it to a key file "
        "(mode 0600) and print what to flash into the device and to give the bridge.",
    )
    parser.add_argument("--device-id", required=True, type=lambda v: int(v, 0))
    parser.add_argument("--out", required=True, type=Path, help="the key file to write")
    parser.add_argument("--force", action="store_true", help="replace an existing key file")
    parser.add_argument("--port", type=int, default=5601, help="UDP port in the printed URL")
    args = parser.parse_args(argv)
    try:
        provision(args.device_id, args.out, args.force)
    except BridgeError as exc:
        print(f"lungwatch bridge provision: error: {exc}", file=sys.stderr)
        return 1
    device_id, path, port = args.device_id, args.out, args.port
    lines = [
        f"device {device_id}: key written to {path} (mode 0600; keep it secret)",
        "flash into the device (the key is printed nowhere: read it from the file):",
        f"  device_id = {device_id}",
        f"  device key (32 bytes) = the hex after '{device_id}:' in {path}",
        f"  C: the LWF_DEVICE_KEY line in {path}",
        "  session counter = 0, kept in flash: the device raises it by one (and writes it)",
        "  before the first frame of every session; frames then go out as protocol v2",
        "the bridge (on the edge device; a relative path is relative to the runtime's",
        "working folder, PREFIX/state):",
        f"  source: bridge://udp/0.0.0.0:{port}?key_file={path}",
        f"  lungwatch bridge udp://0.0.0.0:{port} --key-file {path}",
    ]
    print("\n".join(lines))
    return 0


def check_wav_path(path: Path | None) -> None:
    """``--wav`` is written at the end of the run: refuse a path that cannot be, up front."""
    if path is None:
        return
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise BridgeError(f"--wav {path}: {folder} is not a directory")
    if path.is_dir():
        raise BridgeError(f"--wav {path}: is a directory")
    if not os.access(folder, os.W_OK):
        raise BridgeError(f"--wav {path}: {folder} is not writable")


def _run(args: argparse.Namespace, out: TextIO) -> int:
    check_wav_path(args.wav)
    url = parse_link_url(args.url)
    check_options(url, ("baud",))
    ring = load_keys(args.key_file, args.key_dir)
    try:
        require_key(url, ring, "--key-file FILE or --key-dir DIR")
    except BridgeError as exc:
        raise BridgeError(f"{url.text}: {exc}") from None
    if args.allow_v1:
        log.warning(V1_WARNING, url.text)
    state = args.state_file or default_state_path(args.key_file, args.key_dir)
    config = ReceiverConfig(JitterConfig(args.jitter_frames, args.max_hold_ms / 1000))
    receiver = Receiver(config, ring.keys, ring.default, allow_v1=args.allow_v1, state_path=state)
    bridge = Bridge(open_transport(url), receiver)
    recorder = Recorder(args.device, args.stream)
    try:
        _loop(bridge, args, recorder, out)
    finally:
        bridge.close()
    if args.wav is not None:
        write_wav(args.wav, recorder.timeline(), recorder.sample_rate_hz or 8000)
    return 0


def _loop(bridge: Bridge, args: argparse.Namespace, recorder: Recorder, out: TextIO) -> None:
    start_s = last_data_s = next_stats_s = time.monotonic()
    last_status: Statuses = {}
    try:
        while args.seconds is None or time.monotonic() - start_s < args.seconds:
            items = bridge.poll(POLL_S)
            now_s = time.monotonic()
            last_data_s = now_s if items else last_data_s
            _handle(items, recorder, last_status, out if args.events else None)
            if args.idle_exit_s is not None and now_s - last_data_s > args.idle_exit_s:
                break
            if now_s >= next_stats_s:
                next_stats_s = now_s + args.stats_every_s
                _print_stats(bridge, now_s - start_s, last_status, out)
    except KeyboardInterrupt:
        pass
    _handle(bridge.finish(), recorder, last_status, out if args.events else None)
    _print_stats(bridge, time.monotonic() - start_s, last_status, out)


def _handle(
    items: list[Output], recorder: Recorder, last_status: Statuses, events: TextIO | None
) -> None:
    for item in items:
        if isinstance(item, Segment):
            recorder.take(item)
            continue
        if item.kind == DEVICE_STATUS:
            last_status[item.stream] = item.detail
        if events is not None:
            event = {"event": item.kind, **item.stream._asdict(), "sample_index": item.sample_index}
            print(json.dumps(event | item.detail), file=events, flush=True)


def _print_stats(bridge: Bridge, elapsed_s: float, last_status: Statuses, out: TextIO) -> None:
    """One JSON line per stream, then one for the link."""
    stats, t_s = bridge.receiver.stats(), round(elapsed_s, 3)
    for stream in stats.streams:
        line = {"t_s": t_s, **dataclasses.asdict(stream)}
        line["bad_crc"] = stats.bad_crc_by_device.get(stream.device_id, 0)
        line["status"] = last_status.get(StreamKey(stream.device_id, stream.stream_id))
        print(json.dumps(line), file=out, flush=True)
    link = {"t_s": t_s, "link": bridge.transport.name, **dataclasses.asdict(stats.link)}
    print(json.dumps(link), file=out, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
