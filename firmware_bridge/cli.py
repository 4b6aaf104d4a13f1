"""``lungwatch bridge URL``: receive wearable stethoscope streams and report on them.

    lungwatch bridge udp://0.0.0.0:5005 --seconds 30 --wav received.wav
    lungwatch bridge tcp://10.0.0.7:5005 --key 1:00112233445566778899aabbccddeeff
    lungwatch bridge serial:///dev/ttyUSB0?baud=921600 --events

Prints JSON lines: every ``--stats-every-s`` one line per stream (frames, samples, bad_crc,
duplicates, late, reordered, gaps, missing_samples, restarts, drift_ppm, last status) and
one line for the link (the parser's counters); with ``--events`` also each report (gaps,
device status, disconnects) as it happens. ``--wav`` writes one stream's received timeline
(missing samples as zeros) when the bridge stops (``--seconds``, ``--idle-exit-s`` or Ctrl-C).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from firmware_bridge.assembler import JitterConfig
from firmware_bridge.errors import BridgeError
from firmware_bridge.link import Bridge
from firmware_bridge.receiver import Output, Receiver, ReceiverConfig
from firmware_bridge.timeline import DEVICE_STATUS, Report, Segment, StreamKey
from firmware_bridge.transport import open_transport
from firmware_bridge.urls import check_options, parse_link_url
from lungwatch.cli import ArgumentParser

POLL_S = 0.05
INT16_FULL_SCALE = 32768.0


def parse_keys(values: list[str]) -> tuple[dict[int, bytes], bytes | None]:
    """``--key`` values ``[DEVICE:]HEX`` -> (per-device keys, default key)."""
    keys: dict[int, bytes] = {}
    default: bytes | None = None
    for value in values:
        device, sep, hex_key = value.rpartition(":")
        try:
            key = bytes.fromhex(hex_key)
            if sep:
                keys[int(device, 0)] = key
            else:
                default = key
        except ValueError:
            raise BridgeError(f"--key must be [DEVICE:]HEX, got {value!r}") from None
    return keys, default


class Recorder:
    """Keeps one stream's segments (the first seen, unless chosen) for ``--wav``."""

    def __init__(self, device_id: int | None, stream_id: int | None) -> None:
        self.device_id, self.stream_id = device_id, stream_id
        self.key: StreamKey | None = None
        self.segments: list[Segment] = []
        self.sample_rate_hz = 0

    def take(self, item: Segment) -> None:
        if self.key is None and self._wanted(item.stream):
            self.key, self.sample_rate_hz = item.stream, item.sample_rate_hz
        if item.stream == self.key:
            self.segments.append(item)

    def timeline(self) -> np.ndarray:
        if not self.segments:
            return np.zeros(0, dtype=np.float32)
        origin = min(s.first_sample for s in self.segments)
        end = max(s.first_sample + s.samples.size for s in self.segments)
        out = np.zeros(end - origin, dtype=np.float32)
        for s in self.segments:
            out[s.first_sample - origin : s.first_sample - origin + s.samples.size] = s.samples
        return out

    def _wanted(self, key: StreamKey) -> bool:
        device_ok = self.device_id is None or key.device_id == self.device_id
        return device_ok and (self.stream_id is None or key.stream_id == self.stream_id)


def write_wav(path: Path, samples: np.ndarray, sample_rate_hz: int) -> None:
    """16-bit PCM when every sample is an exact int16 value (lossless), else float."""
    try:
        import soundfile as sf
    except ImportError:
        raise BridgeError("--wav needs soundfile: pip install soundfile") from None
    scaled = samples.astype(np.float64) * INT16_FULL_SCALE
    subtype = "PCM_16" if np.array_equal(scaled, np.round(scaled)) else "FLOAT"
    try:
        sf.write(str(path), samples, sample_rate_hz, subtype=subtype)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise BridgeError(f"{path}: cannot write WAV ({exc})") from exc


def stats_lines(
    bridge: Bridge, elapsed_s: float, last_status: dict[StreamKey, dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    """One JSON-ready dict per stream, then one for the link."""
    stats = bridge.receiver.stats()
    for stream in stats.streams:
        key = StreamKey(stream.device_id, stream.stream_id)
        line = {"t_s": round(elapsed_s, 3), **dataclasses.asdict(stream)}
        line["bad_crc"] = stats.bad_crc_by_device.get(stream.device_id, 0)
        line["status"] = last_status.get(key)
        yield line
    link = dataclasses.asdict(stats.link)
    yield {"t_s": round(elapsed_s, 3), "link": bridge.transport.name, **link}


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
    parser.add_argument("--key", action="append", default=[], help="[DEVICE:]HEX HMAC key")
    parser.add_argument("--stats-every-s", type=float, default=1.0)
    parser.add_argument("--events", action="store_true", help="print each report as it comes")
    parser.add_argument("--jitter-frames", type=int, default=JitterConfig.depth_frames)
    parser.add_argument("--max-hold-ms", type=float, default=JitterConfig.max_hold_s * 1000)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args, sys.stdout)
    except BridgeError as exc:
        print(f"lungwatch bridge: error: {exc}", file=sys.stderr)
        return 1


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
    keys, default_key = parse_keys(args.key)
    jitter = JitterConfig(depth_frames=args.jitter_frames, max_hold_s=args.max_hold_ms / 1000)
    receiver = Receiver(ReceiverConfig(jitter=jitter), keys, default_key)
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
    last_status: dict[StreamKey, dict[str, Any]] = {}
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
    items: list[Output],
    recorder: Recorder,
    last_status: dict[StreamKey, dict[str, Any]],
    events: TextIO | None,
) -> None:
    for item in items:
        if isinstance(item, Segment):
            recorder.take(item)
            continue
        if item.kind == DEVICE_STATUS:
            last_status[item.stream] = item.detail
        if events is not None:
            print(json.dumps(_event(item)), file=events, flush=True)


def _event(report: Report) -> dict[str, Any]:
    return {"event": report.kind, **report.stream._asdict(), "sample_index": report.sample_index,
            **report.detail}  # fmt: skip


def _print_stats(
    bridge: Bridge, elapsed_s: float, last_status: dict[StreamKey, dict[str, Any]], out: TextIO
) -> None:
    for line in stats_lines(bridge, elapsed_s, last_status):
        print(json.dumps(line), file=out, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
