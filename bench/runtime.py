"""The runtime on one core: streams served in real time, event latency, memory per stream.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 taskset -c 0 python -m bench.runtime [options]

Each measurement runs in a fresh child process (inheriting the CPU pinning) that builds the
runtime from its public pieces for K file streams looping over the demo recordings, with the
model folder's INT8 model on ONNX Runtime CPU (one thread), the MQTT sink to a local Mosquitto,
the live strip and every bed's evidence recorder, as ``lungwatch run`` does. Streams start one
chunk apart, as beds connected at different times. A "window" is one bed's chunk of network
input.

- **Throughput**: ``Runtime.step`` rounds for ``--seconds`` after a warm-up; streams served in
  real time = audio seconds processed / wall seconds.
- **Latency** (``--paced-streams``, paced in real time): window close -> ``sink.publish`` ->
  broker PUBACK, and sample capture -> PUBACK (:mod:`bench.runtime_probes`).
- **Ward load** (``--ward-audio``): every recording of a folder its own bed, at the event rate
  of real recordings (the demo recordings publish ~10x more).
- **Memory**: per stream = (VmRSS with K streams - with 1) / (K - 1).
- **Profile**: cProfile of the main thread (the sender threads' CPU time is reported apart).
- **Batch sweep**: inference ms per window against batch size (:mod:`bench.runtime_batch`).
- **Baseline** (``--baseline REV``, alone): this checkout against revision ``REV`` (a
  temporary worktree) in alternating pairs of fresh processes; the ratio of their medians
  (``--baseline-paced``: paced pairs, how far each kept up and its p99s).
- **Feature costs** (``--feature-costs``, alone): each per-bed feature's share of the time,
  switched off one at a time in alternating rounds.

Results: ``bench/results/runtime*.{md,json}``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import RESULTS_DIR, write_results
from bench.runtime_batch import sweep
from bench.runtime_probes import AckProbe, TimedBackend, TimedSource, TimingSink, latencies
from bench.runtime_report import profile_summary, render_markdown
from demo.run import DemoConfig, find_recordings
from edge.datapaths import sprsound_root
from edge.evidence.publisher import EvidencePublisher
from edge.inference import DEFAULT_MAX_BATCH, BackendConfig
from edge.monitor import Monitor
from edge.runtime.config import ModelConfig, RuntimeConfig, SinksConfig, StreamConfig
from edge.runtime.loop import Runtime, open_model, open_sinks, open_streams
from edge.runtime.offline import recordings_in
from lungwatch.mqtt import MqttConfig

CHUNK_SAMPLES = 800  # 0.1 s at 8 kHz
PHASES = 5  # a window every 5 chunks (hop 0.5 s): streams start in 5 staggered phases
PACED_WARMUP_S = 3.0
MAX_WARMUP_ROUNDS = 400
MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
MODEL_DIR = "models/sed"
DEFAULT_ROUND_GROUP = RuntimeConfig.round_group  # the runtime's default
TARGETS = {"streams_per_core": 1000.0, "p99_ms": 150.0, "rss_per_stream_mb": 1.0}
# RuntimeConfig sections with an ``enabled`` switch; "live": the live strip
FEATURES = ("respiration", "evidence", "verdict", "live")


# -- the child: one measurement ---------------------------------------------------------------
def runtime_config(
    n_streams: int,
    paced: bool,
    broker: str | None,
    spool: Path,
    max_batch: int = DEFAULT_MAX_BATCH,
    model_dir: str = MODEL_DIR,
    audio: str | None = None,
    round_group: int = DEFAULT_ROUND_GROUP,
    off: Sequence[str] = (),
) -> RuntimeConfig:
    if audio:  # a ward-like load: the folder's recordings, one per bed
        paths = [str(path) for _, path in sorted(recordings_in([Path(audio)]).items())]
    else:
        paths = [str(r.path) for r in find_recordings(DemoConfig())]
    streams = tuple(
        StreamConfig(id=f"bed-{i + 1}", source=paths[i % len(paths)], realtime=paced,
                     loop=True, chunk_samples=CHUNK_SAMPLES)
        for i in range(n_streams)
    )  # fmt: skip
    host, _, port = (broker or "127.0.0.1:1883").rpartition(":")
    config = RuntimeConfig(
        streams=streams,
        site="bench",
        device_id="edge-1",
        model=ModelConfig(dir=model_dir),
        backend=BackendConfig(providers=("cpu",), intra_op_threads=1, max_batch=max_batch),
        sinks=SinksConfig(stdout=False, jsonl=None, mqtt=broker is not None),
        mqtt=MqttConfig(host=host, port=int(port), spool_path=str(spool)),
        round_group=round_group,
    )
    return _without(config, off)


def _without(config: RuntimeConfig, off: Sequence[str]) -> RuntimeConfig:
    changes: dict[str, Any] = {}
    for name in off:
        if name == "live":
            changes["live_interval_s"] = 0.0
        elif name in FEATURES:
            changes[name] = dataclasses.replace(getattr(config, name), enabled=False)
        else:
            raise ValueError(f"unknown feature {name!r}; one of {', '.join(FEATURES)}")
    return dataclasses.replace(config, **changes)


def build(config: RuntimeConfig, paced: bool) -> tuple[Runtime, TimingSink, AckProbe | None]:
    model = open_model(config)
    model.backend = TimedBackend(model.backend)
    streams = open_streams(config, model)
    _prime(model)
    sources = {}
    for i, stream in enumerate(streams):
        phase = i % PHASES
        stream.source = sources[stream.id] = (
            TimedSource(stream.source, delay_s=phase * CHUNK_SAMPLES / stream.rate_hz)
            if paced
            else TimedSource(stream.source, skip_reads=phase)
        )
    sink, mqtt = open_sinks(config)
    probe = AckProbe(mqtt) if mqtt is not None else None
    timing = TimingSink(sink, sources)
    stats = mqtt.stats if mqtt is not None else None
    evidence = None  # as lungwatch run: every bed keeps its audio history and cuts clips
    if mqtt is not None and config.evidence.enabled:
        evidence = EvidencePublisher(config.evidence, mqtt.config).connect()
    runtime = Runtime(config, model, streams, timing, sink_stats=stats, evidence=evidence)
    if mqtt is not None:
        mqtt.connect()
    return runtime, timing, probe


def _prime(model: Monitor) -> None:
    """Warm numba and ORT, or the first push's few hundred ms would undo the streams' stagger."""
    bed = model.open_bed("prime")
    frames = model.settings.streaming.input_frames
    bed.push(np.zeros(2 * frames * model.settings.spec.hop_samples, np.float32))


def warm_up(runtime: Runtime, paced: bool) -> None:
    if paced:
        _rounds(runtime, time.perf_counter() + PACED_WARMUP_S)
        return
    for _ in range(MAX_WARMUP_ROUNDS):
        runtime.step()
        if min(s.counters["windows"] for s in runtime.streams) >= 1:
            return


def _rounds(runtime: Runtime, until_s: float) -> int:
    """The runtime's loop (``Runtime.run`` without its end): step, or wait when idle."""
    idle = threading.Event()
    rounds = 0
    while time.perf_counter() < until_s:
        rounds += 1
        if not runtime.step():
            idle.wait(runtime.config.idle_sleep_s)
    return rounds


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("batch_sweep"):
        return sweep(spec["model"])
    with tempfile.TemporaryDirectory(prefix="lungwatch-bench-") as tmp:
        config = runtime_config(spec["streams"], spec["paced"], spec["broker"],
                                Path(tmp) / "spool.sqlite", spec["max_batch"],
                                spec["model"], spec.get("audio"),
                                spec.get("round_group", DEFAULT_ROUND_GROUP),
                                spec.get("off", ()))  # fmt: skip
        runtime, timing, probe = build(config, spec["paced"])
        warm_up(runtime, spec["paced"])
        result = _measured_rounds(runtime, timing, spec)
        if runtime.evidence_channel is not None:  # as the loads left it, before the close
            result["evidence"] = runtime.evidence_channel.stats()
        stop = threading.Event()
        stop.set()
        runtime.run(stop)  # end every stream's open events, publish the last metrics
        timing.close()  # flush: waits for the outstanding PUBACKs
        if runtime.evidence_channel is not None:
            runtime.evidence_channel.close(timeout_s=0.0)  # unsent clips stay in the spool
    result["latency"] = latencies(timing, probe)
    result["events_published"] = len(timing.published)
    if probe is not None:
        result["mqtt"] = probe.sink.stats()
    return result


def _measured_rounds(runtime: Runtime, timing: TimingSink, spec: dict[str, Any]) -> dict[str, Any]:
    samples0 = sum(s.counters["samples"] for s in runtime.streams)
    windows0 = sum(s.counters["windows"] for s in runtime.streams)
    backend: TimedBackend = runtime.model.backend  # type: ignore[assignment]
    calls0, infer0_s = backend.calls, backend.seconds
    profiler = cProfile.Profile() if spec.get("profile") else None
    timing.measuring = True
    cpu0, thread0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
    with profiler or contextlib.nullcontext():
        rounds = _rounds(runtime, wall0 + spec["seconds"])
    wall_s = time.perf_counter() - wall0
    cpu_s, thread_s = time.process_time() - cpu0, time.thread_time() - thread0
    timing.measuring = False
    rate_hz = runtime.streams[0].rate_hz
    audio_s = (sum(s.counters["samples"] for s in runtime.streams) - samples0) / rate_hz
    infer_s = backend.seconds - infer0_s
    windows = sum(s.counters["windows"] for s in runtime.streams) - windows0
    result = {
        "model": spec["model"],
        "streams": spec["streams"],
        "paced": spec["paced"],
        "wall_s": wall_s,
        "rounds": rounds,
        "audio_s": audio_s,
        "streams_real_time": audio_s / wall_s,
        "xrt_per_stream": audio_s / wall_s / spec["streams"],
        "windows": windows,
        "inference": {"calls": backend.calls - calls0, "s_total": infer_s,
                      "ms_per_window": infer_s * 1e3 / max(windows, 1),
                      "ms_per_audio_s": infer_s * 1e3 / max(audio_s, 1e-9)},
        "cpu_s": {"process": cpu_s, "main_thread": thread_s, "other_threads": cpu_s - thread_s},
        "rss_kb": _status_kb("VmRSS"),
        "hwm_kb": _status_kb("VmHWM"),
        "file_audio_bytes_per_stream": _file_audio_bytes(runtime),
    }  # fmt: skip
    if profiler is not None:
        result["profile"] = profile_summary(profiler, wall_s)
    return result


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def _file_audio_bytes(runtime: Runtime) -> float:
    sizes = [getattr(getattr(s.source, "inner", None), "samples", None) for s in runtime.streams]
    return sum(a.nbytes for a in sizes if a is not None) / len(runtime.streams)


# -- the parent: every measurement, the report ------------------------------------------------
Broker = tuple[subprocess.Popen[bytes], str, str]  # process, host:port, where it runs


def start_mosquitto(directory: Path) -> Broker | None:
    """Mosquitto on a free loopback port, off the measured CPU when there is another one."""
    binary = next((p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)
    if binary is None:
        return None
    from edge.sinks.broker import _free_port

    port = _free_port("127.0.0.1")
    conf = directory / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "persistence false", "allow_anonymous true",
             "max_queued_messages 100000", "log_dest none"]  # fmt: skip
    conf.write_text("\n".join(lines + (["user root"] if os.geteuid() == 0 else [])) + "\n")
    others = sorted(set(range(os.cpu_count() or 1)) - os.sched_getaffinity(0))
    pin = (lambda: os.sched_setaffinity(0, set(others))) if others else None
    quiet = subprocess.DEVNULL
    process = subprocess.Popen(
        [binary, "-c", str(conf)], preexec_fn=pin, stdout=quiet, stderr=quiet
    )
    time.sleep(0.3)
    where = f"CPU {','.join(map(str, others))}" if others else "the measured CPU (no other)"
    if process.poll() is not None:
        return None
    return process, f"127.0.0.1:{port}", where


@contextlib.contextmanager
def mosquitto_broker(enabled: bool = True) -> Iterator[Broker | None]:
    """:func:`start_mosquitto` for the ``with`` block; None when disabled or not installed."""
    with tempfile.TemporaryDirectory(prefix="lungwatch-bench-broker-") as tmp:
        broker = start_mosquitto(Path(tmp)) if enabled else None
        try:
            yield broker
        finally:
            if broker is not None:
                broker[0].terminate()
                broker[0].wait(timeout=10)


def run_child(
    spec: dict[str, Any], timeout_s: float, checkout: Path | None = None
) -> dict[str, Any]:
    """With ``checkout``, that source tree's own ``bench.runtime`` runs the measurement."""
    env = dict(os.environ)
    if checkout is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(checkout), env.get("PYTHONPATH", "")])
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        child = ["-m", "bench.runtime", "--child", json.dumps(spec), "--out", out.name]
        subprocess.run(
            [sys.executable, *child], check=True, timeout=timeout_s, cwd=checkout, env=env
        )
        return dict(json.loads(Path(out.name).read_text()))


def _comparison_spec(
    args: argparse.Namespace, broker: str | None, paced: bool = False
) -> dict[str, Any]:
    return {"broker": broker, "max_batch": args.max_batch, "model": args.model,
            "round_group": args.round_group, "streams": args.baseline_streams,
            "paced": paced, "seconds": args.paced_seconds if paced else args.seconds,
            "audio": args.baseline_audio and str(Path(args.baseline_audio).resolve())}  # fmt: skip


PACED_MEASURES = {  # what a paced comparison keeps of each run: name -> (latency key, field)
    "capture_to_puback_p99_ms": ("capture_to_puback_ms", "p99"),
    "close_to_puback_p99_ms": ("close_to_puback_ms", "p99"),
}


def compare_with(rev: str, args: argparse.Namespace, broker: str | None) -> dict[str, Any]:
    spec = _comparison_spec(args, broker, paced=args.baseline_paced)
    runs: dict[str, list[float]] = {"this checkout": [], rev: []}
    paced: dict[str, dict[str, list[float]]] = {
        name: {"kept_up": [], **{key: [] for key in PACED_MEASURES}} for name in runs
    }
    with tempfile.TemporaryDirectory(prefix="lungwatch-baseline-") as tmp:
        tree = Path(tmp) / "tree"
        git = ["git", "-C", str(Path(__file__).resolve().parents[1])]
        subprocess.run([*git, "worktree", "add", "--detach", str(tree), rev], check=True)
        try:
            # unmeasured: the fresh worktree compiles its Numba kernels here, not in the first pair
            print(f"warming {rev} up ...", flush=True)
            run_child({**spec, "streams": 16, "seconds": 2.0}, 600, tree)
            for pair in range(args.baseline_pairs):
                for name, checkout in (("this checkout", None), (rev, tree)):
                    print(f"pair {pair + 1}: {name}, {spec['streams']} streams ...", flush=True)
                    result = run_child(spec, spec["seconds"] + 300, checkout)
                    runs[name].append(float(result["streams_real_time"]))
                    if spec["paced"]:
                        paced[name]["kept_up"].append(float(result["xrt_per_stream"]))
                        for key, (latency, field) in PACED_MEASURES.items():
                            paced[name][key].append(float(result["latency"][latency][field]))
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(tree)], check=False)
    here, there = (float(np.median(v)) for v in runs.values())
    found = {"baseline": rev, "streams": spec["streams"], "seconds": spec["seconds"],
             "paced": spec["paced"], "load": args.baseline_audio or "the three demo recordings",
             "streams_real_time": runs, "ratio_of_medians": here / there}  # fmt: skip
    if spec["paced"]:
        found["paced_runs"] = paced
        found["paced_ratio_of_medians"] = {
            key: float(np.median(paced["this checkout"][key]) / np.median(paced[rev][key]))
            for key in PACED_MEASURES
        }
    return found


def feature_costs(args: argparse.Namespace, broker: str | None) -> dict[str, Any]:
    spec = _comparison_spec(args, broker)
    variants = {"all on": (), **{f"{name} off": (name,) for name in FEATURES}}
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for pair in range(args.baseline_pairs):
        for name, off in variants.items():
            print(f"round {pair + 1}: {name}, {spec['streams']} streams ...", flush=True)
            result = run_child({**spec, "off": list(off)}, args.seconds + 300)
            runs[name].append(float(result["streams_real_time"]))
    medians = {name: float(np.median(values)) for name, values in runs.items()}
    share = {name.removesuffix(" off"): 1.0 - medians["all on"] / medians[name]
             for name in runs if name != "all on"}  # fmt: skip
    return {"streams": spec["streams"], "seconds": args.seconds,
            "load": args.baseline_audio or "the three demo recordings",
            "streams_real_time": runs, "medians": medians, "share_of_time": share}  # fmt: skip


def _feature_table(record: dict[str, Any]) -> str:
    header = record["header"]
    lines = [
        "# Runtime benchmark: what each per-bed feature costs",
        "",
        f"Measured: {header['date']}  ",
        f"Command: `{header['command']}`  ",
        f"Machine: {header['machine']}; threads: {header['threads']}  ",
        f"Model: {header['model']}; {header['broker']}  ",
        f"Load: {record['load']}, {record['streams']} beds as fast as possible, "
        f"{record['seconds']:g} s per run, alternating rounds of fresh processes",
        "",
        "| run | streams in real time (each round) | median | share of the time |",
        "|---|---|---:|---:|",
    ]
    for name, values in record["streams_real_time"].items():
        share = record["share_of_time"].get(name.removesuffix(" off"))
        lines.append(
            f"| {name} | {' / '.join(f'{v:,.0f}' for v in values)} | "
            f"{record['medians'][name]:,.0f} | {'-' if share is None else f'{share:.1%}'} |"
        )
    lines += ["", "Share of the time = 1 - (all on) / (that feature off), of the medians: the "
              "part of a core the feature takes at this load."]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.child:
        result = measure(json.loads(args.child))
        Path(args.out).write_text(json.dumps(result))
        return 0
    if args.feature_costs:
        with mosquitto_broker(not args.no_mqtt) as broker:
            found = feature_costs(args, broker[1] if broker else None)
        record = {"header": _header(args, argv, broker), **found}
        write_results("runtime_features", record, _feature_table(record))
        return 0
    if args.baseline:
        with mosquitto_broker(not args.no_mqtt) as broker:
            found = compare_with(args.baseline, args, broker[1] if broker else None)
        header = _header(args, argv, broker)
        name = "runtime_baseline" + ("_paced" if args.baseline_paced else "")
        name += "_ward.json" if args.baseline_audio else ".json"
        (RESULTS_DIR / name).write_text(json.dumps({"header": header, **found}, indent=2) + "\n")
        print(json.dumps(found["streams_real_time"]))
        ratio = found["ratio_of_medians"]
        print(f"streams in real time, this checkout / {args.baseline}: {ratio:.3f}")
        if args.baseline_paced:
            print(json.dumps(found["paced_runs"]))
            for key, value in found["paced_ratio_of_medians"].items():
                print(f"{key}, this checkout / {args.baseline}: {value:.3f}")
        return 0
    with mosquitto_broker(not args.no_mqtt) as broker:
        header = _header(args, argv, broker)
        runs = _all_runs(args, broker[1] if broker else None)
    record = {"header": header, "targets": TARGETS, **runs}
    write_results("runtime", record, render_markdown(record))
    return 0


def _all_runs(args: argparse.Namespace, broker: str | None) -> dict[str, Any]:
    limit_s = args.seconds + 300
    common = {"broker": broker, "max_batch": args.max_batch, "model": args.model,
              "round_group": args.round_group}  # fmt: skip
    fast = {**common, "paced": False, "seconds": args.seconds}
    runs = []
    for k in sorted(set(args.streams) | {1}):
        print(f"as fast as possible: {k} streams, {args.seconds:g} s ...", flush=True)
        runs.append(run_child({**fast, "streams": k}, limit_s))
    paced = []
    for k in args.paced_streams:
        print(f"paced in real time: {k} streams, {args.paced_seconds:g} s ...", flush=True)
        spec = {**common, "streams": k, "paced": True, "seconds": args.paced_seconds}
        paced.append(run_child(spec, args.paced_seconds + 300))
    profile = None
    if args.profile_streams:
        print(f"profile: {args.profile_streams} streams, {args.seconds:g} s ...", flush=True)
        profile = run_child({**fast, "streams": args.profile_streams, "profile": True}, limit_s)
    batch = None
    if args.batch_sweep:
        print("inference cost per window against batch size ...", flush=True)
        batch = run_child({"batch_sweep": True, "model": args.model}, 600)
    reference = None
    if args.reference and args.reference_streams:
        k = args.reference_streams
        print(f"reference {args.reference}: {k} streams, {args.seconds:g} s ...", flush=True)
        reference = run_child({**fast, "model": args.reference, "streams": k}, limit_s)
    ward = None
    if args.ward_audio and args.ward_streams:
        ward = {"folder": args.ward_audio, "as_fast_as_possible": [], "paced": []}
        for k in args.ward_streams:
            print(f"ward load {args.ward_audio}: {k} streams ...", flush=True)
            spec = {**fast, "streams": k, "audio": args.ward_audio}
            ward["as_fast_as_possible"].append(run_child(spec, limit_s))
            spec.update(paced=True, seconds=args.paced_seconds)
            ward["paced"].append(run_child(spec, limit_s))
    return {"as_fast_as_possible": runs, "paced": paced, "profile": profile,
            "batch_sweep": batch, "reference": reference, "ward": ward}  # fmt: skip


def _header(
    args: argparse.Namespace, argv: list[str] | None, broker: tuple[Any, str, str] | None
) -> dict[str, Any]:
    skipped = "--no-mqtt" if args.no_mqtt else "mosquitto not installed"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python -m bench.runtime", *(sys.argv[1:] if argv is None else argv)]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, pinned to CPUs {sorted(os.sched_getaffinity(0))}",
        "broker": f"Mosquitto on {broker[2]}" if broker else f"none (MQTT skipped: {skipped})",
        "threads": {
            k: os.environ.get(k, "unset") for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")
        },
        "model": f"{args.model}/model.int8.onnx, ONNX Runtime CPU, 1 intra-op thread, "
        f"max_batch {args.max_batch}, round_group {args.round_group}",
        "reference": f"{args.reference}/model.int8.onnx" if args.reference else None,
        "chunk_samples": CHUNK_SAMPLES,
        "load_average": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.runtime", description=__doc__.splitlines()[0]
    )
    add = parser.add_argument
    add("--model", default=MODEL_DIR, help="model folder (its model.int8.onnx)")
    add("--streams", type=_ints, default=[1, 64, 256, 1000], help="K values, e.g. 1,16,64")
    add("--seconds", type=float, default=20.0, help="measured wall seconds per run")
    add("--paced-streams", type=_ints, default=[600, 1000], help="K of the paced runs ('': none)")
    add(
        "--paced-seconds", type=float, default=90.0,
        help="length of a paced run (near a core's limit a backlog grows by a few ms a second: "
        "30 s can show a load as kept up that 90 s shows falling behind)",
    )  # fmt: skip
    add("--profile-streams", type=int, default=256, help="K of the profiled run (0: skip)")
    add("--reference", default="", help="reference model folder ('': no reference run)")
    add("--reference-streams", type=int, default=200, help="K of the reference run (0: skip)")
    add("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="windows per inference call")
    add(
        "--round-group",
        type=int,
        default=DEFAULT_ROUND_GROUP,
        help="streams a round reads, infers and publishes together (0: all)",
    )
    add("--no-batch-sweep", dest="batch_sweep", action="store_false", help="skip the batch sweep")
    add(
        "--ward-audio",
        default=_default_ward_audio(),
        help="folder of recordings, one per bed (looped): a ward-like load ('': skip; default "
        "SPRSound intra_test where ../shared/data has it)",
    )
    add("--ward-streams", type=_ints, default=[1000], help="K of the ward-load runs ('': none)")
    add("--no-mqtt", action="store_true", help="no MQTT sink (no broker needed)")
    add(
        "--baseline",
        default="",
        help="only compare with this git revision: streams in real time, ratio in one run",
    )
    add(
        "--feature-costs", action="store_true",
        help="only measure what each per-bed feature (respiration, evidence, verdict, live "
        "strip) costs: every feature on against each one off, in alternating rounds "
        "(--baseline-streams, --baseline-pairs, --baseline-audio set the load)",
    )  # fmt: skip
    add(
        "--baseline-paced", action="store_true",
        help="--baseline with the runs paced in real time (--paced-seconds each): how far each "
        "kept up and its capture -> PUBACK and close -> PUBACK p99",
    )  # fmt: skip
    add("--baseline-streams", type=int, default=1000, help="K of the comparison")
    add("--baseline-pairs", type=int, default=3, help="alternating pairs of runs")
    add(
        "--baseline-audio", default=None,
        help="--baseline on a folder's recordings, one per bed (the ward load); default the demo's",
    )  # fmt: skip
    add("--child", help=argparse.SUPPRESS)
    add("--out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _default_ward_audio() -> str:
    folder = sprsound_root() / "intra_test"
    return str(folder) if folder.is_dir() else ""


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


if __name__ == "__main__":
    raise SystemExit(main())
