"""Device emulator: play a recording as a wearable stethoscope would, over a lossy link.

    lungwatch emulate --audio rec.wav --to udp://127.0.0.1:5005 --key-file keys/bed-1.key \\
        [--loss 0.05 --reorder 0.01 --corrupt 0.01 --duplicate 0.01 --drift-ppm 200 \\
         --realtime | --speed 20] [--seed 0] [--format int16|int24|float32]

Protocol versions, keys and the session file: docs/firmware-protocol.md, 9. The device sends a
DEVICE_INFO frame (stream start), audio frames, a STATUS frame every ``--status-every-s`` and
three closing HEARTBEATs; its clock runs ``--drift-ppm`` fast (frame k leaves at
``end_sample / (rate * (1 + ppm * 1e-6))`` s). The channel drops, corrupts, duplicates and
delays (by 1 to 3 frames) frames with the given probabilities. Prints one JSON line of what
was sent and what the channel did.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from firmware_bridge import senders
from firmware_bridge.devicemodel import DeviceConfig, device_frames, read_pcm
from firmware_bridge.errors import BridgeError
from firmware_bridge.keys import load_key_file
from firmware_bridge.protocol import U32_MAX, SampleFormat, encode_frame
from firmware_bridge.urls import parse_link_url
from lungwatch.cli import ArgumentParser

FORMATS = {f.name.lower(): f for f in SampleFormat if f != SampleFormat.NONE}
MAX_DELAY_FRAMES = 3
SESSION_SUFFIX = ".session"  # the emulated device's persisted session counter, by its key file


@dataclass(frozen=True)
class Impairments:
    loss: float = 0.0  # probability a frame is dropped
    reorder: float = 0.0  # ... delayed behind the next 1 to 3 frames
    corrupt: float = 0.0  # ... has 1 to 3 bits flipped
    duplicate: float = 0.0  # ... is sent twice
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("loss", "reorder", "corrupt", "duplicate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise BridgeError(f"--{name} must be a probability in [0, 1], got {value}")


class Channel:
    """The lossy link. ``counts`` says what it did; ``fates[i]`` what became of frame i
    (``"lost"``, ``"corrupted"`` or ``"ok"``; duplicates and delays keep ``"ok"``)."""

    def __init__(self, impairments: Impairments) -> None:
        self._imp = impairments
        self._rng = random.Random(impairments.seed)
        self.counts = dict.fromkeys(("frames", "lost", "corrupted", "duplicated", "reordered"), 0)
        self.fates: list[str] = []

    def run(self, items: Iterable[tuple[float, bytes]]) -> Iterator[tuple[float, bytes]]:
        held: list[list[Any]] = []  # [frames still to wait, bytes]
        for t_s, data in items:
            self.counts["frames"] += 1
            for out in self._fate(data):
                if self._rng.random() < self._imp.reorder:
                    self.counts["reordered"] += 1
                    held.append([self._rng.randint(1, MAX_DELAY_FRAMES), out])
                else:
                    yield t_s, out
            for entry in held:
                entry[0] -= 1
            yield from ((t_s, entry[1]) for entry in held if entry[0] <= 0)
            held = [entry for entry in held if entry[0] > 0]
        yield from ((0.0, entry[1]) for entry in held)

    def _fate(self, data: bytes) -> list[bytes]:
        rng = self._rng
        if rng.random() < self._imp.loss:
            self.counts["lost"] += 1
            self.fates.append("lost")
            return []
        fate = "ok"
        if rng.random() < self._imp.corrupt:
            self.counts["corrupted"] += 1
            fate, data = "corrupted", _flip_bits(data, rng)
        self.fates.append(fate)
        if rng.random() < self._imp.duplicate:
            self.counts["duplicated"] += 1
            return [data, data]
        return [data]


def _flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out) if out != data else _flip_bits(data, rng)


def play(
    items: Iterable[tuple[float, bytes]], send: Callable[[bytes], bool], speed: float | None
) -> int:
    """Send each item at ``t_s / speed`` after the start (``speed`` None: at once); returns
    how many sends succeeded. Late items (the previous send took long) leave at once."""
    start_s, sent = time.monotonic(), 0
    for t_s, data in items:
        if speed is not None:
            wait_s = start_s + t_s / speed - time.monotonic()
            if wait_s > 0:
                time.sleep(wait_s)
        sent += bool(send(data))
    return sent


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="lungwatch emulate", description=__doc__)
    parser.add_argument("--audio", required=True, type=Path, help="WAV/FLAC recording to play")
    parser.add_argument("--to", required=True, help="udp://HOST:PORT, tcp://HOST:PORT (listen) "
                        "or serial:///dev/ttyX?baud=N")  # fmt: skip
    for name in ("loss", "reorder", "corrupt", "duplicate"):
        parser.add_argument(f"--{name}", type=float, default=0.0, help=f"{name} probability")
    parser.add_argument("--drift-ppm", type=float, default=0.0, help="device clock error, ppm")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--realtime", action="store_true", help="send at the audio's pace")
    pace.add_argument("--speed", type=float, help="send at SPEED x real time")
    parser.add_argument("--seed", type=int, default=0, help="channel random seed")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--key-file", type=Path, help="device key file: protocol v2 (encrypted)")
    keys.add_argument("--v1-key-file", type=Path, help="file holding a v1 HMAC key (hex, mode "
                      "0600): v1 frames carry an authentication tag")  # fmt: skip
    parser.add_argument("--session", type=int, help="v2 session (default: the session file + 1)")
    parser.add_argument("--session-file", type=Path, help="v2: the persisted session counter "
                        "(default: the key file with the suffix .session)")  # fmt: skip
    parser.add_argument("--device-id", type=lambda v: int(v, 0), help="default: the key file's "
                        "device, else 1")  # fmt: skip
    parser.add_argument(
        "--stream-id", type=lambda v: int(v, 0), default=0,
        help="the device's stream id in the frames (protocol v1; 0x.. accepted)",
    )  # fmt: skip
    parser.add_argument("--frame-samples", type=int, default=256, help="samples per frame")
    parser.add_argument(
        "--format", choices=sorted(FORMATS), default="int16", help="the samples' encoding"
    )
    parser.add_argument(
        "--status-every-s", type=float, default=1.0,
        help="seconds of audio between the device's status frames",
    )  # fmt: skip
    parser.add_argument("--off-body", help="FROM_S:TO_S of audio time reported off body")
    return parser


def _config(args: argparse.Namespace) -> DeviceConfig:
    key = None
    if args.v1_key_file is not None:
        ring = load_key_file(args.v1_key_file, args.device_id)
        key = ring.default if args.device_id is None else ring.keys.get(args.device_id)
        if key is None:
            raise BridgeError(f"--v1-key-file {args.v1_key_file}: no key for this device")
    try:
        off_body = tuple(float(v) for v in args.off_body.split(":")) if args.off_body else None
    except ValueError:
        raise BridgeError("--off-body must be FROM_S:TO_S") from None
    if off_body is not None and len(off_body) != 2:
        raise BridgeError(f"--off-body must be FROM_S:TO_S, got {args.off_body!r}")
    device_id = 1 if args.device_id is None else args.device_id
    if args.key_file is not None:
        device_id, key = _device_key(args.key_file, args.device_id)
    elif args.session is not None or args.session_file is not None:
        raise BridgeError("--session and --session-file need --key-file (protocol v2)")
    if args.speed is not None and not (math.isfinite(args.speed) and args.speed > 0):
        raise BridgeError(f"--speed must be a number > 0 (times real time), got {args.speed}")
    return DeviceConfig(
        device_id=device_id,
        stream_id=args.stream_id,
        frame_samples=args.frame_samples,
        sample_format=FORMATS[args.format],
        drift_ppm=args.drift_ppm,
        status_every_s=args.status_every_s,
        off_body_s=(off_body[0], off_body[1]) if off_body is not None else None,
        key=key,
        session=None if args.key_file is None else args.session or 0,  # taken before sending
    )


def _device_key(path: Path, device_id: int | None) -> tuple[int, bytes]:
    """(device id, key) from a key file: its one device, or ``device_id``'s entry."""
    ring = load_key_file(path, device_id)
    if device_id is None:
        if len(ring.keys) != 1 or ring.default is not None:
            raise BridgeError(f"--key-file {path}: name the device (--device-id): it holds "
                              f"{len(ring.keys) + (ring.default is not None)} keys")  # fmt: skip
        ((device_id, key),) = ring.keys.items()
        return device_id, key
    if device_id not in ring.keys:  # given a device, a bare key is that device's
        raise BridgeError(f"--key-file {path}: no key for device {device_id}")
    return device_id, ring.keys[device_id]


def _next_session(args: argparse.Namespace) -> int:
    """The session to use: ``--session``, else the session file's value + 1, written back
    first (a device raises its counter in flash before it sends)."""
    if args.session is not None:
        if not 0 <= args.session <= U32_MAX:
            raise BridgeError(f"--session must be in [0, {U32_MAX}], got {args.session}")
        return int(args.session)
    path = args.session_file or args.key_file.with_suffix(SESSION_SUFFIX)
    try:
        last = int(path.read_text(encoding="utf-8").strip()) if path.exists() else 0
    except (OSError, ValueError) as exc:
        raise BridgeError(f"--session-file {path}: cannot read a session number ({exc})") from None
    if not 0 <= last < U32_MAX:
        raise BridgeError(f"--session-file {path}: session {last} is out of range (0..{U32_MAX}):"
                          " provision a new key")  # fmt: skip
    try:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(f"{last + 1}\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise BridgeError(f"--session-file {path}: cannot write ({exc.strerror or exc})") from None
    return last + 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except BridgeError as exc:
        print(f"lungwatch emulate: error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    config = _config(args)
    channel = Channel(Impairments(args.loss, args.reorder, args.corrupt, args.duplicate, args.seed))
    url = parse_link_url(args.to)
    samples, rate_hz = read_pcm(args.audio, config.sample_format)
    sender = senders.open_sender(url, wait_for_client=not (args.realtime or args.speed))
    try:
        if isinstance(sender, senders.TcpServerSender):
            sender.accept(timeout_s=None)
        if config.session is not None:
            config = dataclasses.replace(config, session=_next_session(args))
        timed = (
            (t, encode_frame(f, config.key)) for t, f in device_frames(samples, rate_hz, config)
        )
        sent = play(channel.run(timed), sender.send, 1.0 if args.realtime else args.speed)
    finally:
        sender.close()
    attempts = channel.counts["frames"] - channel.counts["lost"] + channel.counts["duplicated"]
    if attempts and not sent:
        raise BridgeError(f"{args.to}: none of {attempts} frames could be sent")
    summary: dict[str, Any] = {"to": args.to, "samples": int(np.asarray(samples).shape[0])}
    summary |= {"sample_rate_hz": rate_hz, "protocol": 1 if config.session is None else 2}
    summary |= {"session": config.session, "device_id": config.device_id}
    summary |= {"sent": sent, **channel.counts}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
