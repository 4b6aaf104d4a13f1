"""The shared test vectors: parse ``vectors/vectors.txt`` into Python frames, and (as a
script) rewrite the checked-in ``vectors/NAME.bin`` files from the Python encoder:

    python -m tests.firmware_bridge.vectors      # after a deliberate protocol change only

The line format and the sample generator (xorshift32) are those of
``firmware_bridge/c/make_vectors.c``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from firmware_bridge import protocol as wire

VECTOR_DIR = Path(__file__).parent / "vectors"
SPEC = VECTOR_DIR / "vectors.txt"
U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Vector:
    name: str
    frame: wire.Frame
    key: bytes | None

    @property
    def path(self) -> Path:
        return VECTOR_DIR / f"{self.name}.bin"

    def encode(self) -> bytes:
        return wire.encode_frame(self.frame, self.key)


def xorshift32(state: int, count: int) -> list[int]:
    out = []
    for _ in range(count):
        state ^= (state << 13) & U32
        state ^= state >> 17
        state ^= (state << 5) & U32
        out.append(state)
    return out


def vector_samples(seed: int, count: int, sample_format: int) -> np.ndarray:
    states = np.array(xorshift32(seed, count), dtype=np.uint32)
    int16 = (states >> 16).astype(np.uint16).view(np.int16)
    if sample_format == wire.SampleFormat.INT16:
        return int16
    if sample_format == wire.SampleFormat.INT24:
        value = ((states >> 8) & 0xFFFFFF).astype(np.int32)
        return np.where(value >= 0x800000, value - 0x1000000, value).astype(np.int32)
    return int16.astype(np.float32) / np.float32(32768.0)


def _hex(text: str) -> bytes:
    return b"" if text == "-" else bytes.fromhex(text)


def parse_line(tokens: list[str]) -> Vector:
    """A vector line; a kind ending in "2" is a v2 frame: SESSION precedes KEY."""
    kind, name, *rest = tokens
    session = None
    if kind.endswith("2"):
        kind, session, rest = kind[:-1], int(rest[-2], 0), [*rest[:-2], rest[-1]]
    device, stream, seq, first, rate, flags = (int(v, 0) for v in rest[:6])
    ids = (device, stream, seq, first, rate)
    key = _hex(rest[-1]) or None
    if kind == "audio":
        fmt, count, seed = (int(v, 0) for v in rest[6:9])
        frame = wire.audio_frame(*ids, vector_samples(seed, count, fmt), fmt, flags)
    elif kind == "status":
        battery, off_body, gain, clipped = (int(v, 0) for v in rest[6:10])
        status = wire.DeviceStatus(
            None if battery == wire.BATTERY_UNKNOWN else battery,
            gain,
            clipped,
            None if off_body < 0 else bool(off_body),
        )
        frame = wire.status_frame(*ids, status)._replace(flags=flags)
    elif kind == "heartbeat":
        frame = wire.heartbeat_frame(*ids)._replace(flags=flags)
    else:
        major, minor, patch, hardware = (int(v, 0) for v in rest[6:10])
        info = wire.DeviceInfo((major, minor, patch), hardware, _hex(rest[10]).decode("utf-8"))
        frame = wire.device_info_frame(*ids, info)._replace(flags=flags)
    return Vector(name, frame._replace(session=session), key)


def load_vectors() -> list[Vector]:
    lines = SPEC.read_text(encoding="utf-8").splitlines()
    return [parse_line(line.split()) for line in lines if line.strip() and line[0] != "#"]


def main() -> int:
    for vector in load_vectors():
        vector.path.write_bytes(vector.encode())
        print(f"wrote {vector.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
