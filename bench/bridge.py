"""Firmware-bridge decoder throughput on one core, against the target.

    make bench            # or: python -m bench.bridge [--seconds 5] [--repeats 5]

Target (issue 6): decode at least 50 x the bandwidth of 200 simultaneous 8 kHz 16-bit
streams, i.e. 50 x 200 x 8000 = 80 M samples/s (160 MB/s of 16-bit audio; 312,500 frames/s
of 256 samples) on one core.

Workload: 200 devices, frames interleaved round-robin as on one busy UDP port, in order,
read in 64 KiB pieces; the receiver is drained every 8 reads (every ~0.5 MB). Rows:

- ``parser``: bytes -> validated frames (magic search, header checks, CRC-32C);
- ``receiver``: parser + per-stream jitter buffer, gap logic, drift points, and the float32
  timeline segments out (what the runtime gets);
- ``receiver, datagrams``: the same, fed one frame per call (the per-call overhead a caller
  pays feeding single UDP datagrams; ``firmware_bridge.link.Bridge`` parses the datagrams
  waiting at each poll together instead; the socket itself is not timed);
- each with the numba scanner (the default when numba is installed) and the pure-NumPy
  fallback, for 128/256/512-sample int16 frames, and 256-sample frames with HMAC tags.

Times are this process's CPU time (``time.process_time``, median of the repeats), so other
work on the machine does not count against the decoder. Prints a table and writes
bench/results/bridge.{md,json}. The verdict uses the
``receiver`` row at 256 samples per frame (the recommended frame size).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from firmware_bridge.crc32c import backend
from firmware_bridge.protocol import audio_frame, encode_frame
from firmware_bridge.receiver import Output, Receiver
from firmware_bridge.timeline import Segment

RESULTS_DIR = Path(__file__).parent / "results"
N_STREAMS = 200
RATE_HZ = 8000
READ_BYTES = 1 << 16
DRAIN_EVERY_READS = 8
DATAGRAMS_PER_DRAIN = 1000
TARGET_X = 50.0  # x the bandwidth of N_STREAMS streams
TARGET_SAMPLES_PER_S = TARGET_X * N_STREAMS * RATE_HZ
KEY = bytes(range(16))


def build_frames(seconds: float, frame_samples: int, key: bytes | None) -> list[bytes]:
    """N_STREAMS devices' encoded frames, interleaved round-robin."""
    rng = np.random.default_rng(0)
    per_stream = int(seconds * RATE_HZ) // frame_samples
    noise = rng.integers(-3000, 3000, (per_stream, frame_samples)).astype(np.int16)
    return [
        encode_frame(audio_frame(d, 0, k, k * frame_samples, RATE_HZ, noise[k]), key)
        for k in range(per_stream)
        for d in range(N_STREAMS)
    ]


def samples_in(items: list[Output]) -> int:
    return sum(item.samples.size for item in items if isinstance(item, Segment))


def parser_runner(frames: list[bytes], scanner: str, key: bytes | None) -> Callable[[], int]:
    """Frames out of 64 KiB reads (the count of frames is returned)."""
    data = b"".join(frames)

    def run() -> int:
        parser = Receiver(scanner=scanner, default_key=key).parser
        return sum(
            len(parser.push(data[i : i + READ_BYTES])) for i in range(0, len(data), READ_BYTES)
        )

    return run


def receiver_runner(frames: list[bytes], scanner: str, key: bytes | None) -> Callable[[], int]:
    """Timeline samples out of 64 KiB reads, drained every DRAIN_EVERY_READS reads."""
    data = b"".join(frames)

    def run() -> int:
        receiver = Receiver(scanner=scanner, default_key=key)
        samples = 0
        for k, i in enumerate(range(0, len(data), READ_BYTES)):
            receiver.feed(data[i : i + READ_BYTES], 0.0)
            if k % DRAIN_EVERY_READS == DRAIN_EVERY_READS - 1:
                samples += samples_in(receiver.drain())
        return samples + samples_in(receiver.drain())

    return run


def datagram_runner(frames: list[bytes], scanner: str, key: bytes | None) -> Callable[[], int]:
    """One frame per datagram, as over UDP (the socket itself is not timed); drained every
    DATAGRAMS_PER_DRAIN datagrams."""

    def run() -> int:
        receiver = Receiver(scanner=scanner, default_key=key)
        samples = 0
        for k, frame in enumerate(frames):
            receiver.feed(frame, 0.0, datagram=True)
            if k % DATAGRAMS_PER_DRAIN == DATAGRAMS_PER_DRAIN - 1:
                samples += samples_in(receiver.drain())
        return samples + samples_in(receiver.drain())

    return run


def median_seconds(run: Callable[[], int], repeats: int, expected: int) -> float:
    if run() != expected:  # warm up (JIT cache load) and check the work is all done
        raise RuntimeError("benchmark run did not decode everything")
    times = []
    for _ in range(repeats):  # CPU time of this process: the machine may be busy with others
        t0 = time.process_time()
        run()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def measure(seconds: float, repeats: int, scanners: list[str]) -> list[dict[str, object]]:
    rows = []
    stages = [("parser", parser_runner), ("receiver", receiver_runner)]
    cases = [(128, None, stages), (256, None, [*stages, ("receiver, datagrams", datagram_runner)]),
             (512, None, stages), (256, KEY, stages)]  # fmt: skip
    for frame_samples, key, case_stages in cases:
        frames = build_frames(seconds, frame_samples, key)
        n_frames, n_samples, n_bytes = (
            len(frames),
            len(frames) * frame_samples,
            sum(map(len, frames)),
        )
        for scanner in scanners:
            for stage, make in case_stages:
                expected = n_frames if stage == "parser" else n_samples
                dt = median_seconds(make(frames, scanner, key), repeats, expected)
                rows.append({
                    "stage": stage, "scanner": scanner, "frame_samples": frame_samples,
                    "tagged": key is not None, "frames_per_s": n_frames / dt,
                    "wire_mb_per_s": n_bytes / dt / 1e6,
                    "x_200_streams": n_samples / dt / (N_STREAMS * RATE_HZ),
                })  # fmt: skip
    return rows


def render(rows: list[dict[str, object]], header: str) -> str:
    lines = [header, "", "| stage | scanner | samples/frame | tag | frames/s | MB/s (wire) | "
             "x 200 streams |", "|---|---|---:|---|---:|---:|---:|"]  # fmt: skip
    lines += [
        f"| {r['stage']} | {r['scanner']} | {r['frame_samples']} | "
        f"{'HMAC' if r['tagged'] else '-'} "
        f"| {r['frames_per_s']:,.0f} | {r['wire_mb_per_s']:,.1f} | {r['x_200_streams']:,.1f} |"
        for r in rows
    ]
    return "\n".join(lines)


def verdict(rows: list[dict[str, object]]) -> dict[str, object]:
    (row,) = [r for r in rows if r["stage"] == "receiver" and r["scanner"] == "numba"
              and r["frame_samples"] == 256 and not r["tagged"]]  # fmt: skip
    measured = float(row["x_200_streams"])  # type: ignore[arg-type]
    return {"target": "receiver, 256-sample int16 frames, x the bandwidth of 200 8 kHz streams",
            "measured": measured, "wanted": TARGET_X, "met": measured >= TARGET_X}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bridge", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="audio per stream")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median is kept)")
    args = parser.parse_args(argv)
    scanners = ["numba", "numpy"] if backend() == "numba" else ["numpy"]
    rows = measure(args.seconds, args.repeats, scanners)
    header = (
        f"Firmware-bridge decoder, one core, {N_STREAMS} interleaved 8 kHz streams x "
        f"{args.seconds:g} s, reads of {READ_BYTES // 1024} KiB, CPU time, "
        f"median of {args.repeats}; "
        f"{platform.machine()}, Python {platform.python_version()}"
    )
    table = render(rows, header)
    if "numba" in scanners:
        v = verdict(rows)
        table += (f"\n\n| target | measured | wanted | met |\n|---|---:|---:|---|\n"
                  f"| {v['target']} | {v['measured']:.1f} | >= {TARGET_X:g} | "
                  f"{'yes' if v['met'] else 'NO'} |")  # fmt: skip
    print(table)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "bridge.md").write_text(table + "\n")
    record = {"header": header, "rows": rows, "target_samples_per_s": TARGET_SAMPLES_PER_S}
    if "numba" in scanners:
        record["verdict"] = verdict(rows)
    (RESULTS_DIR / "bridge.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
