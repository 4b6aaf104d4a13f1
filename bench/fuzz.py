"""Fuzz the firmware-bridge decoder: a million mutated inputs, no crash, bounded memory.

    make fuzz             # or: python -m bench.fuzz [--inputs 1000000] [--seed 0]

Each input is a corpus of valid frames (every type and format, v1 tagged and not, v2) changed
by one mutator: bit flips, inserted / deleted / truncated bytes, splices, garbage, header
fields changed *with the CRC recomputed* (so they reach the header checks, the jitter buffer,
the restart logic and v2's AEAD), v1 runs duplicated and reordered, v2 runs mixed with
replays. Inputs go, cut in random pieces, into one long-lived receiver, and: nothing may
raise; every decoded frame must be one the input legitimately holds (not a replayed or
older-session v2 datagram); the link's byte counters must add up; the traced heap may not grow
over the second half beyond a small margin.

Writes bench/results/fuzz.{md,json}; exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import platform
import random
import resource
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import google_crc32c
import numpy as np

from bench import write_results
from firmware_bridge.parser import POLICY_COUNTERS
from firmware_bridge.protocol import (
    CRC,
    FLAG_AUTH,
    FLAG_STREAM_START,
    HEADER,
    DeviceInfo,
    DeviceStatus,
    Frame,
    SampleFormat,
    audio_frame,
    device_info_frame,
    encode_frame,
    heartbeat_frame,
    status_frame,
)
from firmware_bridge.receiver import Receiver, ReceiverConfig

KEYED_DEVICE, KEY = 9, b"fuzz-key-0123456"
V2_DEVICE, V2_STREAM_DEVICE, V2_KEY = 11, 12, bytes(range(7, 39))  # v2: corpus, live stream
V2_HISTORY = 4096  # datagrams of the live v2 stream kept for replays
HEAP_GROWTH_LIMIT_BYTES = 2 << 20  # second-half traced heap growth allowed
Allowed = set[Frame]
Input = tuple[bytes, Allowed]


def make_corpus(rng: np.random.Generator) -> list[tuple[Frame, bytes | None]]:
    corpus: list[tuple[Frame, bytes | None]] = []
    for k in range(48):
        device = int(rng.choice([1, 2, KEYED_DEVICE]))
        ids = (device, k % 2, k, 256 * k, 8000)
        fmt = [SampleFormat.INT16, SampleFormat.INT24, SampleFormat.FLOAT32][k % 3]
        count = int(rng.integers(1, 300))
        limit = 2**15 if fmt == SampleFormat.INT16 else 2**23
        x: np.ndarray = (
            rng.uniform(-1, 1, count)
            if fmt == SampleFormat.FLOAT32
            else rng.integers(-limit, limit, count)
        )
        corpus.append((audio_frame(*ids, x, fmt), KEY if device == KEYED_DEVICE else None))
        v2_ids = (V2_DEVICE, k % 2, 2 * k, 256 * k, 8000)  # sealed: the v2 decoder
        corpus.append((audio_frame(*v2_ids, x[: count // 2 + 1], fmt)._replace(session=1), V2_KEY))
    status = DeviceStatus(55, -120, 7, off_body=True)
    info = DeviceInfo((1, 2, 3), 4, "fuzz-steth")
    corpus += [
        (status_frame(1, 0, 900, 4096, 8000, status), None),
        (device_info_frame(2, 1, 901, 0, 8000, info)._replace(flags=FLAG_STREAM_START), None),
        (heartbeat_frame(KEYED_DEVICE, 0, 902, 8192, 8000), KEY),
        (heartbeat_frame(KEYED_DEVICE, 0, 903, 8192, 8000), None),  # no tag: must be rejected
        (status_frame(V2_DEVICE, 0, 905, 4096, 8000, status)._replace(session=1), V2_KEY),
        (heartbeat_frame(V2_DEVICE, 1, 906, 8192, 8000)._replace(session=1), V2_KEY),
    ]
    return corpus


class Mutator:
    def __init__(self, corpus: list[tuple[Frame, bytes | None]], seed: int) -> None:
        self.rng = random.Random(seed)
        self.corpus = [(frame, key, encode_frame(frame, key)) for frame, key in corpus]
        self.sealed = [(f, data) for f, _, data in self.corpus if f.session is not None]
        self.v2_session, self.v2_counter, self.v2_first = 1, 0, 0
        self.v2_history: list[bytes] = []
        self.mutators: list[Callable[[], Input]] = [
            self.flips, self.insert, self.delete, self.truncate, self.splice,
            self.garbage, self.header, self.header, self.stream, self.sealed_flip,
            self.stream_v2, self.stream_v2,
        ]  # fmt: skip

    def make(self) -> Input:
        return self.rng.choice(self.mutators)()

    def _pick(self, n: int) -> tuple[bytearray, Allowed]:
        picked = [self.rng.choice(self.corpus) for _ in range(n)]
        allowed = {frame for frame, key, _ in picked if not _untagged_keyed(frame, key)}
        return bytearray(b"".join(data for _, _, data in picked)), allowed

    def flips(self) -> Input:
        data, allowed = self._pick(self.rng.randint(1, 4))
        for _ in range(self.rng.randint(1, 8)):
            data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        return bytes(data), allowed

    def insert(self) -> Input:
        data, allowed = self._pick(self.rng.randint(1, 3))
        for _ in range(self.rng.randint(1, 4)):
            at = self.rng.randrange(len(data) + 1)
            data[at:at] = self.rng.randbytes(self.rng.randint(1, 64))
        return bytes(data), allowed

    def delete(self) -> Input:
        data, allowed = self._pick(self.rng.randint(1, 3))
        for _ in range(self.rng.randint(1, 4)):
            at = self.rng.randrange(len(data) + 1)
            del data[at : at + self.rng.randint(1, 64)]
        return bytes(data), allowed

    def truncate(self) -> Input:
        data, allowed = self._pick(self.rng.randint(1, 3))
        return bytes(data[: self.rng.randrange(len(data) + 1)]), allowed

    def splice(self) -> Input:
        (a, a_ok), (b, b_ok) = self._pick(1), self._pick(1)
        return bytes(a[: self.rng.randrange(len(a))] + b[self.rng.randrange(len(b)) :]), a_ok | b_ok

    def garbage(self) -> Input:
        data = bytearray(self.rng.randbytes(self.rng.randint(0, 600)))
        for _ in range(self.rng.randint(0, 6)):
            at = self.rng.randrange(len(data) + 1)
            data[at:at] = b"LW\x01" + bytes([self.rng.randint(1, 5)])
        return bytes(data), set()

    def header(self) -> Input:
        frame, key, data = self.rng.choice(self.corpus)
        fields = list(HEADER.unpack_from(data))
        for _ in range(self.rng.randint(1, 3)):
            index, value = self._field_change()
            fields[index] = value
        out = bytearray(data)
        HEADER.pack_into(out, 0, *fields)
        CRC.pack_into(out, len(out) - 4, google_crc32c.value(bytes(out[:-4])))
        if out == data:  # the changes were no-ops
            return bytes(out), set() if _untagged_keyed(frame, key) else {frame}
        # a changed header breaks any tag and v2's AEAD: only v1 devices without a key take it
        changed = _as_frame(fields, frame.payload)
        keyed = changed.device_id == KEYED_DEVICE or frame.session is not None
        return bytes(out), set() if keyed else {changed}

    def sealed_flip(self) -> Input:
        """1 to 3 bits flipped outside the CRC, CRC recomputed: the v2 decoder must refuse it."""
        frame, data = self.rng.choice(self.sealed)
        out = bytearray(data)
        for _ in range(self.rng.randint(1, 3)):
            out[self.rng.randrange(len(out) - 4)] ^= 1 << self.rng.randrange(8)
        CRC.pack_into(out, len(out) - 4, google_crc32c.value(bytes(out[:-4])))
        return bytes(out), set() if out != data else {frame}  # flips that cancelled out

    def stream_v2(self) -> Input:
        """A live v2 stream's frames mixed with replays of earlier ones, which must not decode."""
        rng, fresh = self.rng, []
        if rng.random() < 0.03:  # a reboot: new session, counter and samples from 0
            self.v2_session += 1
            self.v2_counter = self.v2_first = 0
        for _ in range(rng.randint(1, 8)):
            flags = FLAG_STREAM_START if self.v2_counter == 0 else 0
            x = np.full(64, self.v2_counter % 1000, np.int16)
            frame = audio_frame(V2_STREAM_DEVICE, 0, self.v2_counter, self.v2_first, 8000, x)
            fresh.append(frame._replace(flags=flags, session=self.v2_session))
            self.v2_counter, self.v2_first = self.v2_counter + 1, self.v2_first + 64
        sent = [encode_frame(f, V2_KEY) for f in fresh]
        out = list(sent)
        if len(out) > 1 and rng.random() < 0.3:
            i = rng.randrange(len(out) - 1)
            out[i], out[i + 1] = out[i + 1], out[i]
        for _ in range(rng.randint(0, 3) if self.v2_history else 0):
            out.insert(rng.randrange(len(out) + 1), rng.choice(self.v2_history))
        if rng.random() < 0.2:
            out.append(rng.choice(sent))  # a replay within the same input
        self.v2_history = (self.v2_history + sent)[-V2_HISTORY:]
        return b"".join(out), set(fresh)

    def _field_change(self) -> tuple[int, int]:
        r = self.rng
        return r.choice([
            (1, r.choice([1, 1, 2, 255])),  # version
            (2, r.randint(0, 6)),  # frame type
            (3, r.choice([0, FLAG_STREAM_START, 4, 0x80])),  # flags (no AUTH: tag bytes differ)
            (4, r.randint(0, 4)),  # sample format
            (6, r.choice([1, 2, 3, r.getrandbits(32)])),  # device id
            (7, r.choice([0, 1, r.getrandbits(16)])),  # stream id
            (9, r.getrandbits(32)),  # sequence
            (10, r.choice([0, r.randint(0, 10**6), r.getrandbits(64)])),  # first sample
            (11, r.choice([8000, 16000, 0, r.getrandbits(32)])),  # rate
        ])  # fmt: skip

    def stream(self) -> Input:
        device, start = self.rng.choice([1, 2, 3]), self.rng.randint(0, 2000) * 64
        frames = [
            audio_frame(device, 0, start // 64 + k, start + 64 * k, 8000, np.full(64, k, np.int16))
            for k in range(self.rng.randint(1, 8))
        ]
        sent = list(frames)
        if self.rng.random() < 0.3:
            sent.append(self.rng.choice(frames))
        if len(sent) > 1 and self.rng.random() < 0.3:
            i = self.rng.randrange(len(sent) - 1)
            sent[i], sent[i + 1] = sent[i + 1], sent[i]
        return b"".join(encode_frame(f) for f in sent), set(frames)


def _untagged_keyed(frame: Frame, key: bytes | None) -> bool:
    return frame.device_id == KEYED_DEVICE and key is None


def _as_frame(fields: list[int], payload: bytes) -> Frame:
    """The v1 frame a changed header describes (a changed v2 header never decodes)."""
    _, _, ftype, flags, fmt, _, device, stream, count, seq, first, rate = fields
    return Frame(ftype, device, stream, seq, first, rate, fmt, count, payload, flags & ~FLAG_AUTH)


def _pieces(rng: random.Random, data: bytes) -> list[bytes]:
    if len(data) < 2 or rng.random() < 0.5:
        return [data]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 4))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def fuzz(n_inputs: int, seed: int, checkpoints: int = 10) -> dict[str, object]:
    mutator = Mutator(make_corpus(np.random.default_rng(seed)), seed)
    keys = {KEYED_DEVICE: KEY, V2_DEVICE: V2_KEY, V2_STREAM_DEVICE: V2_KEY}
    receiver = Receiver(ReceiverConfig(max_streams=64), keys=keys, allow_v1=True)
    parser, rng = receiver.parser, random.Random(seed + 1)
    violations, decoded, decoded_v2, points = [], 0, 0, []
    rss_before_mib = round(peak_rss_mib(), 1)  # imports (numpy, numba) and the corpus
    start_s = time.perf_counter()
    for i in range(n_inputs):
        data, allowed = mutator.make()
        frames = []
        for piece in _pieces(rng, data):
            frames += parser.push(piece)
        frames += parser.flush()
        decoded += len(frames)
        decoded_v2 += sum(1 for frame in frames if frame.session is not None)
        for frame in frames:
            if frame._replace(flags=frame.flags & ~FLAG_AUTH, verified=False) not in allowed:
                violations.append(f"input {i}: decoded a frame it does not hold: {frame[:6]}")
        receiver.place(frames, i * 0.004)
        receiver.drain()
        if i % 1000 == 999:
            receiver.poll(i * 0.004)
        if (i + 1) % max(n_inputs // checkpoints, 1) == 0:
            points.append(_checkpoint(i + 1, n_inputs, start_s))
    stats = receiver.stats().link
    if stats.bytes_received != stats.frame_bytes + stats.skipped_bytes + stats.pending_bytes:
        violations.append(f"link byte counters do not add up: {stats}")
    violations += _memory_verdict(points)
    tracemalloc.stop()
    return {
        "inputs": n_inputs, "seed": seed, "decoded_frames": decoded, "decoded_v2": decoded_v2,
        "seconds": round(time.perf_counter() - start_s, 1), "link": vars(stats),
        "streams_tracked": len(receiver.streams), "peak_rss_before_mib": rss_before_mib,
        "checkpoints": points,
        "violations": violations[:20], "n_violations": len(violations),
    }  # fmt: skip


def _checkpoint(done: int, total: int, start_s: float) -> dict[str, float]:
    if done >= total // 2 and not tracemalloc.is_tracing():
        tracemalloc.start()  # trace the second half: the heap must not keep growing
    heap = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
    return {"inputs": done, "seconds": round(time.perf_counter() - start_s, 1),
            "peak_rss_mib": round(peak_rss_mib(), 1), "traced_heap_bytes": heap}  # fmt: skip


def heap_table(points: list[dict[str, float]]) -> list[str]:
    return ["| inputs | seconds | traced heap (2nd half) |", "|---:|---:|---:|"] + [
        f"| {p['inputs']:,} | {p['seconds']} | {p['traced_heap_bytes']:,} |" for p in points
    ]


def _memory_verdict(
    points: list[dict[str, float]], limit_bytes: int = HEAP_GROWTH_LIMIT_BYTES
) -> list[str]:
    traced = [p["traced_heap_bytes"] for p in points if p["traced_heap_bytes"]]
    if len(traced) >= 2 and traced[-1] - traced[0] > limit_bytes:
        return [f"traced heap grew {traced[-1] - traced[0]} bytes over the second half"]
    return []


def render(record: dict[str, Any]) -> str:
    points, link = record["checkpoints"], record["link"]
    lines = [
        f"Fuzz of the firmware-bridge decoder: {record['inputs']:,} inputs, seed {record['seed']}, "
        f"{record['seconds']} s; {platform.machine()}, Python {platform.python_version()}",
        "",
        f"- violations: {record['n_violations']} (crash, made-up frame, counters, memory)",
        f"- frames decoded: {record['decoded_frames']:,} (protocol v2: {record['decoded_v2']:,});"
        f" streams tracked at the end: {record['streams_tracked']}",
        f"- peak RSS before the first input: {record['peak_rss_before_mib']} MiB",
        "- refused by the security policy: "
        + ", ".join(f"{name} {link[name]:,}" for name in POLICY_COUNTERS),
        "",
        "| inputs | seconds | peak RSS MiB | traced heap (2nd half) |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {p['inputs']:,} | {p['seconds']} | {p['peak_rss_mib']} | "
              f"{p['traced_heap_bytes']:,} |" for p in points]  # fmt: skip
    return "\n".join(lines)


def run_cli(
    argv: list[str] | None,
    name: str,
    description: str,
    default_inputs: int,
    run: Callable[[int, int], dict[str, object]],
    show: Callable[[dict[str, object]], str],
) -> int:
    parser = argparse.ArgumentParser(prog=f"bench.{name}", description=description)
    parser.add_argument("--inputs", type=int, default=default_inputs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results")
    args = parser.parse_args(argv)
    record = run(args.inputs, args.seed)
    text = show(record)
    if args.no_write:
        print(text)
    else:
        write_results(name, record, text)
    for violation in record["violations"]:  # type: ignore[attr-defined]
        print(f"VIOLATION {violation}")
    return 1 if record["n_violations"] else 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(argv, "fuzz", __doc__.splitlines()[0], 1_000_000, fuzz, render)


if __name__ == "__main__":
    raise SystemExit(main())
