"""Firmware-bridge decoder throughput on one core, against the target.

    make bench            # or: python -m bench.bridge [--seconds 5] [--repeats 5]

Target: decode at least 50 x the bandwidth of 200 simultaneous 8 kHz 16-bit streams (80 M
samples/s) on one core; the verdict uses the ``receiver`` row at 256 samples per frame.

Workload: 200 devices' frames interleaved round-robin as on one busy UDP port, read in 64 KiB
pieces, the receiver drained every 8 reads. Rows: ``parser`` (bytes -> validated frames),
``receiver`` (+ jitter buffer, gaps, drift, float32 timeline out), ``receiver, datagrams``
(one frame per call, the socket not timed); each with the numba scanner and the NumPy
fallback, for 128/256/512-sample frames, v1's HMAC tags and protocol v2.

The v1-vs-v2 table (``--compare-only``: it alone) times the two in alternation and takes each
at its fastest run, so a shared machine's load weighs on both alike. Times are this process's
CPU time, median of the repeats. Results: ``bench/results/bridge.{md,json}``
(docs/firmware-protocol.md, "Decoder throughput").
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np

from bench import median_seconds, write_results
from firmware_bridge.parser import FrameParser
from firmware_bridge.protocol import audio_frame, encode_frame
from firmware_bridge.receiver import Output, Receiver
from firmware_bridge.timeline import Segment

N_STREAMS = 200
RATE_HZ = 8000
READ_BYTES = 1 << 16
DRAIN_EVERY_READS = 8
DATAGRAMS_PER_DRAIN = 1000
TARGET_X = 50.0  # x the bandwidth of N_STREAMS streams
TARGET_SAMPLES_PER_S = TARGET_X * N_STREAMS * RATE_HZ
KEY = bytes(range(16))  # v1 HMAC
V2 = bytes(range(32))  # v2 device key (every device's here); the case's "key" for v2
PROTOCOLS = {None: "v1", KEY: "v1 HMAC", V2: "v2 AEAD"}


def build_frames(seconds: float, frame_samples: int, key: bytes | None) -> list[bytes]:
    rng = np.random.default_rng(0)
    per_stream = int(seconds * RATE_HZ) // frame_samples
    noise = rng.integers(-3000, 3000, (per_stream, frame_samples)).astype(np.int16)
    session = 1 if key is V2 else None
    frames = (
        audio_frame(d, 0, k, k * frame_samples, RATE_HZ, noise[k])
        for k in range(per_stream)
        for d in range(N_STREAMS)
    )
    return [encode_frame(frame._replace(session=session), key) for frame in frames]


def make_receiver(scanner: str, key: bytes | None) -> Receiver:
    """A fresh receiver (v2: fresh anti-replay windows) for the case's protocol."""
    return Receiver(scanner=scanner, default_key=key, allow_v1=key is not V2)


def samples_in(items: list[Output]) -> int:
    return sum(item.samples.size for item in items if isinstance(item, Segment))


def parser_runner(frames: list[bytes], scanner: str, key: bytes | None) -> Callable[[], int]:
    data = b"".join(frames)

    def run() -> int:
        parser = make_receiver(scanner, key).parser
        return sum(
            len(parser.push(data[i : i + READ_BYTES])) for i in range(0, len(data), READ_BYTES)
        )

    return run


def receiver_runner(frames: list[bytes], scanner: str, key: bytes | None) -> Callable[[], int]:
    data = b"".join(frames)

    def run() -> int:
        receiver = make_receiver(scanner, key)
        samples = 0
        for k, i in enumerate(range(0, len(data), READ_BYTES)):
            receiver.feed(data[i : i + READ_BYTES], 0.0)
            if k % DRAIN_EVERY_READS == DRAIN_EVERY_READS - 1:
                samples += samples_in(receiver.drain())
        return samples + samples_in(receiver.drain())

    return run


def datagram_runner(frames: list[bytes], scanner: str, key: bytes | None) -> Callable[[], int]:
    def run() -> int:
        receiver = make_receiver(scanner, key)
        samples = 0
        for k, frame in enumerate(frames):
            receiver.feed(frame, 0.0, datagram=True)
            if k % DATAGRAMS_PER_DRAIN == DATAGRAMS_PER_DRAIN - 1:
                samples += samples_in(receiver.drain())
        return samples + samples_in(receiver.drain())

    return run


def warmed(run: Callable[[], int], expected: int) -> Callable[[], int]:
    if run() != expected:  # warm up (JIT cache load) and check the work is all done
        raise RuntimeError("benchmark run did not decode everything")
    return run


def measure(seconds: float, repeats: int, scanners: list[str]) -> list[dict[str, object]]:
    rows = []
    stages = [("parser", parser_runner), ("receiver", receiver_runner)]
    datagrams = [*stages, ("receiver, datagrams", datagram_runner)]
    cases = [(128, None, stages), (256, None, datagrams), (512, None, stages), (256, KEY, stages),
             (256, V2, datagrams)]  # fmt: skip
    for frame_samples, key, case_stages in cases:
        frames = build_frames(seconds, frame_samples, key)
        n_frames, n_samples = len(frames), len(frames) * frame_samples
        n_bytes = sum(map(len, frames))
        for scanner in scanners:
            for stage, make in case_stages:
                expected = n_frames if stage == "parser" else n_samples
                run = warmed(make(frames, scanner, key), expected)
                # CPU time of this process: the machine may be busy with others
                dt = median_seconds(run, repeats, clock=time.process_time)
                rows.append({
                    "stage": stage, "scanner": scanner, "frame_samples": frame_samples,
                    "tagged": key is not None, "protocol": PROTOCOLS[key],
                    "frames_per_s": n_frames / dt,
                    "wire_mb_per_s": n_bytes / dt / 1e6,
                    "x_200_streams": n_samples / dt / (N_STREAMS * RATE_HZ),
                })  # fmt: skip
    return rows


def render(rows: list[dict[str, object]], header: str) -> str:
    lines = [header, "", "| stage | scanner | samples/frame | protocol | frames/s | MB/s (wire) | "
             "x 200 streams |", "|---|---|---:|---|---:|---:|---:|"]  # fmt: skip
    lines += [
        f"| {r['stage']} | {r['scanner']} | {r['frame_samples']} | {r['protocol']} "
        f"| {r['frames_per_s']:,.0f} | {r['wire_mb_per_s']:,.1f} | {r['x_200_streams']:,.1f} |"
        for r in rows
    ]
    return "\n".join(lines)


def v1_v2(seconds: float, repeats: int, scanner: str) -> list[dict[str, object]]:
    """Beds per core, v1 (unauthenticated) against v2, per receiver stage."""
    frames = {protocol: build_frames(seconds, 256, key) for protocol, key in (("v1", None),
              ("v2", V2))}  # fmt: skip
    n_samples = len(frames["v1"]) * 256
    out: list[dict[str, object]] = []
    for stage, make in (("receiver", receiver_runner), ("receiver, datagrams", datagram_runner)):
        runs = {"v1": make(frames["v1"], scanner, None), "v2": make(frames["v2"], scanner, V2)}
        times: dict[str, list[float]] = {"v1": [], "v2": []}
        for run in runs.values():
            warmed(run, n_samples)
        for _ in range(repeats):
            for protocol, run in runs.items():
                t0 = time.process_time()
                run()
                times[protocol].append(time.process_time() - t0)
        beds = {p: n_samples / min(ts) / RATE_HZ for p, ts in times.items()}
        out.append({"stage": stage, "scanner": scanner, "v1_beds_per_core": beds["v1"],
                    "v2_beds_per_core": beds["v2"], "ratio": beds["v2"] / beds["v1"]})  # fmt: skip
    return out


def render_v1_v2(pairs: list[dict[str, object]]) -> str:
    lines = ["| stage (256 samples/frame) | scanner | v1 beds/core | v2 beds/core | v2 / v1 |",
             "|---|---|---:|---:|---:|"]  # fmt: skip
    lines += [f"| {p['stage']} | {p['scanner']} | {p['v1_beds_per_core']:,.0f} | "
              f"{p['v2_beds_per_core']:,.0f} | {p['ratio']:.2f} |" for p in pairs]  # fmt: skip
    return "\n".join(lines)


def verdict(rows: list[dict[str, object]]) -> dict[str, object]:
    (row,) = [r for r in rows if r["stage"] == "receiver" and r["scanner"] == "numba"
              and r["frame_samples"] == 256 and r["protocol"] == "v1"]  # fmt: skip
    measured = float(row["x_200_streams"])  # type: ignore[arg-type]
    return {"target": "receiver, 256-sample int16 frames, x the bandwidth of 200 8 kHz streams",
            "measured": measured, "wanted": TARGET_X, "met": measured >= TARGET_X}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bridge", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="audio per stream")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median is kept)")
    parser.add_argument("--compare-only", action="store_true",
                        help="only the v1-vs-v2 table (printed, nothing written)")  # fmt: skip
    args = parser.parse_args(argv)
    scanners = ["numba", "numpy"] if FrameParser().scanner == "numba" else ["numpy"]
    pairs = v1_v2(args.seconds, 2 * args.repeats + 1, scanners[0])
    if args.compare_only:
        print(render_v1_v2(pairs))
        return 0
    rows = measure(args.seconds, args.repeats, scanners)
    header = (
        f"Firmware-bridge decoder, one core, {N_STREAMS} interleaved 8 kHz streams x "
        f"{args.seconds:g} s, reads of {READ_BYTES // 1024} KiB, CPU time, "
        f"median of {args.repeats}; "
        f"{platform.machine()}, Python {platform.python_version()}"
    )
    table = render(rows, header)
    record = {"header": header, "rows": rows, "target_samples_per_s": TARGET_SAMPLES_PER_S}
    if "numba" in scanners:
        v = record["verdict"] = verdict(rows)
        table += (f"\n\n| target | measured | wanted | met |\n|---|---:|---:|---|\n"
                  f"| {v['target']} | {v['measured']:.1f} | >= {TARGET_X:g} | "
                  f"{'yes' if v['met'] else 'NO'} |")  # fmt: skip
    table += "\n\n" + render_v1_v2(pairs)
    record["v1_v2"] = pairs
    write_results("bridge", record, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
