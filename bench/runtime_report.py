"""``bench/results/runtime.md`` from ``bench.runtime``'s numbers, and its cProfile summary."""

from __future__ import annotations

import cProfile
import pstats
from pathlib import Path
from typing import Any

KB_PER_MB = 1024.0


# (label, file suffix, function name): cumulative main-thread time, summarised in the child process.
PROFILE_PARTS = (
    ("source read (file, loop)", "edge/sources/file.py", "read"),
    ("pipeline push (front end + windows)", "edge/bed/pipeline.py", "push"),
    ("  front end: log-mel streaming", "edge/features/base.py", "push"),
    ("  window cut + quality measures", "edge/bed/pipeline.py", "_window"),
    ("    quality measures (edge.bed.quality)", "edge/bed/quality.py", "measure"),
    ("inference (states + ORT)", "edge/inference/streaming.py", "infer_beds"),
    ("  ONNX Runtime session.run", "~", "<built-in method onnxruntime.capi"),
    ("quality gate: update (per window)", "edge/bed/gate.py", "update"),
    ("quality gate: observe (per chunk)", "edge/bed/gate.py", "observe"),
    ("quality gate: tick (per round)", "edge/bed/gate.py", "tick"),
    ("detector", "edge/bed/detector.py", "update"),
    ("live strip", "edge/runtime/loop.py", "_publish_live"),
    ("events: build (per transition)", "edge/runtime/outbox.py", "emit"),
    ("events: sinks (per round, grouped)", "edge/runtime/outbox.py", "flush"),
    ("  spool put_many (one SQLite commit)", "edge/sinks/spool.py", "put"),
    ("metrics reports", "edge/runtime/loop.py", "_publish_reports"),
)


def profile_summary(profiler: cProfile.Profile, wall_s: float) -> dict[str, Any]:
    """Cumulative seconds of :data:`PROFILE_PARTS` and the top functions by own time."""
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    parts = {
        label: sum(
            value[3]
            for (path, _, func), value in stats.items()
            if (path.endswith(suffix) or path == suffix) and func.startswith(name)
        )
        for label, suffix, name in PROFILE_PARTS
    }
    own = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:15]
    top = [
        {"function": f"{Path(path).name}:{line}({func})", "calls": value[1], "own_s": value[2],
         "cumulative_s": value[3]}
        for (path, line, func), value in own
    ]  # fmt: skip
    return {"wall_s": wall_s, "parts_s": parts, "top_own_time": top}


def render_markdown(record: dict[str, Any]) -> str:
    header, runs = record["header"], record["as_fast_as_possible"]
    lines = [
        "# Runtime benchmark: streams on one core, event latency, memory per stream",
        "",
        f"Measured: {header['date']}  ",
        f"Command: `OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 taskset -c 0 {header['command']}`  ",
        f"Machine: {header['machine']}; threads: {header['threads']}  ",
        f"Model: {header['model']}; chunks of {header['chunk_samples']} samples (0.1 s) read "
        "from each source; live strip on (one point per bed per second)  ",
        f"Sink: MQTT QoS 1 through the SQLite spool; broker: {header['broker']}  ",
        f"Load average when the runs started (1, 5, 15 min): {header['load_average']}",
        "",
        *_targets(record),
        "",
        *_throughput(runs),
        "",
        *_reference(record),
        "",
        *_paced(record.get("paced")),
        "",
        *_ward(record.get("ward")),
        "",
        *_profile(record.get("profile")),
        "",
        *_batch_sweep(record.get("batch_sweep")),
    ]
    return "\n".join(lines)


def _fmt(stats: dict[str, Any] | None, keys: tuple[str, ...] = ("p50", "p99")) -> str:
    if not stats or not stats.get("n"):
        return "n/a"
    return " / ".join(f"{stats[k]:,.1f}" for k in keys)


def rss_per_stream_mb(runs: list[dict[str, Any]]) -> dict[int, float]:
    base = next((r["rss_kb"] for r in runs if r["streams"] == 1), None)
    if base is None:
        return {}
    return {
        r["streams"]: (r["rss_kb"] - base) / (r["streams"] - 1) / KB_PER_MB
        for r in runs
        if r["streams"] > 1
    }


KEPT_UP = 0.99  # audio per stream / wall of a paced run that kept up with real time


def _operating_point(paced: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Paced run with the most streams that kept up with real time, else with the most streams."""
    kept = [r for r in paced if r["xrt_per_stream"] >= KEPT_UP]
    return max(kept or paced, key=lambda r: r["streams"], default=None)


def _targets(record: dict[str, Any]) -> list[str]:
    targets, runs = record["targets"], record["as_fast_as_possible"]
    best = max(runs, key=lambda r: r["streams_real_time"])
    per_stream = rss_per_stream_mb(runs)
    largest = max(per_stream) if per_stream else None
    paced = _operating_point(record.get("paced") or [])
    per_cpu = max(runs, key=lambda r: r["audio_s"] / r["cpu_s"]["process"])
    per_cpu_streams = per_cpu["audio_s"] / per_cpu["cpu_s"]["process"]
    rows = [
        ("streams served in real time on one core", f"{best['streams_real_time']:,.0f} "
         f"(K = {best['streams']})", f">= {targets['streams_per_core']:g}",
         best["streams_real_time"] >= targets["streams_per_core"]),
        ("the same per CPU second of the process (a core to itself)", f"{per_cpu_streams:,.0f} "
         f"(K = {per_cpu['streams']})", f">= {targets['streams_per_core']:g}",
         per_cpu_streams >= targets["streams_per_core"]),
    ]  # fmt: skip
    for key, what in (("close_to_puback_ms", "window close"), ("capture_to_puback_ms", "capture")):
        rows.append(_latency_row(f"p99 {what} -> PUBACK", paced, key, targets))
    rss = "n/a" if largest is None else f"{per_stream[largest]:.2f} MB (K = {largest})"
    ok = largest is not None and per_stream[largest] <= targets["rss_per_stream_mb"]
    rows.append(("RSS per stream", rss, f"<= {targets['rss_per_stream_mb']:g} MB", ok))
    if largest is not None:  # a live source (microphone, bridge) holds no decoded file
        run = next(r for r in runs if r["streams"] == largest)
        live = per_stream[largest] - run["file_audio_bytes_per_stream"] / 2**20
        rows.append(("RSS per stream less the file sources' decoded audio", f"{live:.2f} MB "
                     f"(K = {largest})", f"<= {targets['rss_per_stream_mb']:g} MB",
                     live <= targets["rss_per_stream_mb"]))  # fmt: skip
    rows += _ward_targets(record)
    lines = ["## Targets", "", "| target | measured | wanted | met |", "|---|---:|---:|---|"]
    lines += [f"| {n} | {m} | {w} | {'yes' if ok else 'NO'} |" for n, m, w, ok in rows]
    return lines


def _ward_targets(record: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    ward, targets = record.get("ward"), record["targets"]
    if not ward or not ward["as_fast_as_possible"]:
        return []
    best = max(ward["as_fast_as_possible"], key=lambda r: r["streams_real_time"])
    rows = [(f"streams served in real time on one core, ward load ({_folder(ward)})",
             f"{best['streams_real_time']:,.0f} (K = {best['streams']})",
             f">= {targets['streams_per_core']:g}",
             best["streams_real_time"] >= targets["streams_per_core"])]  # fmt: skip
    paced = _operating_point(ward["paced"])
    if paced is not None:
        label = "p99 window close -> PUBACK, ward load"
        rows.append(_latency_row(label, paced, "close_to_puback_ms", targets))
    return rows


def _latency_row(
    label: str, paced: dict[str, Any] | None, key: str, targets: dict[str, float]
) -> tuple[str, str, str, bool]:
    """The p99 target row from operating point ``paced``: met only if it kept up with real time."""
    p99 = ((paced or {}).get("latency", {}).get(key) or {}).get("p99")
    wanted = f"<= {targets['p99_ms']:g} ms"
    if paced is None or p99 is None:
        return label, "n/a", wanted, False
    kept = paced["xrt_per_stream"] >= KEPT_UP
    shown = f"{p99:,.0f} ms (paced, K = {paced['streams']}"
    shown += ")" if kept else f", kept up {paced['xrt_per_stream']:.2f})"
    return label, shown, wanted, kept and p99 <= targets["p99_ms"]


def _folder(ward: dict[str, Any]) -> str:
    return f"`{Path(ward['folder']).name}`"


def _ward(ward: dict[str, Any] | None) -> list[str]:
    if not ward:
        return ["## Ward load: not measured"]
    return [
        f"## Ward load: every recording of {_folder(ward)} as its own bed (looped)",
        "",
        f"Folder: `{ward['folder']}`. The same runs as above with the folder's recordings "
        "instead of the three demo recordings: the event rate of real recordings.",
        "",
        *_throughput(ward["as_fast_as_possible"], level="###", notes=False),
        "",
        *_paced(ward["paced"], f"every recording of {_folder(ward)}, one per bed", level="###"),
    ]


def _throughput(runs: list[dict[str, Any]], level: str = "##", notes: bool = True) -> list[str]:
    per_stream = rss_per_stream_mb(runs)
    lines = [
        f"{level} As fast as possible (K looping file streams, one core)",
        "",
        "| K | audio s | wall s | streams in real time | CPU share % | streams per CPU s "
        "| x RT per stream | windows/s | inference ms/window | inference ms per bed-audio-s "
        "| RSS MB | RSS/stream MB | file audio/stream MB | close->PUBACK p50 / p99 ms "
        "| other threads CPU % | clips submitted / sent / dropped / waiting |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lat = r.get("latency", {}).get("close_to_puback_ms")
        other = 100.0 * r["cpu_s"]["other_threads"] / r["wall_s"]
        rss = per_stream.get(r["streams"])
        cpu_s = r["cpu_s"]["process"]
        lines.append(
            f"| {r['streams']} | {r['audio_s']:,.0f} | {r['wall_s']:.1f} "
            f"| {r['streams_real_time']:,.0f} | {100 * cpu_s / r['wall_s']:.0f} "
            f"| {r['audio_s'] / cpu_s:,.0f} | {r['xrt_per_stream']:,.1f} "
            f"| {r['windows'] / r['wall_s']:,.0f} | {r['inference']['ms_per_window']:.2f} "
            f"| {r['inference'].get('ms_per_audio_s', float('nan')):.3f} "
            f"| {r['rss_kb'] / KB_PER_MB:,.0f} | {'-' if rss is None else f'{rss:.2f}'} "
            f"| {r['file_audio_bytes_per_stream'] / 2**20:.2f} | {_fmt(lat)} | {other:.0f} "
            f"| {_clips(r)} |"
        )
    if not notes:
        return lines
    lines += [
        "",
        "Streams in real time = audio seconds processed per wall second, summed over the K "
        "streams. A window is one model input: one bed's chunk (every frame once, its state "
        "carried). CPU share = the "
        "process's CPU time / wall time (below 100 %: other work on "
        "the core, or waits such as the spool's fsync); streams per CPU s = audio seconds per "
        "CPU second of the process, the capacity of a core given to it alone. Latency here is "
        "under full load (the run is as fast as possible); the paced run below is the "
        "operating point. RSS/stream includes the file sources' decoded audio "
        "(float32, the *file audio* column), which a microphone or wearable stream does not hold.",
    ]
    return lines


def _reference(record: dict[str, Any]) -> list[str]:
    ref = record.get("reference")
    if not ref:
        return []
    best = max(record["as_fast_as_possible"], key=lambda r: r["streams_real_time"])
    ratio = best["streams_real_time"] / ref["streams_real_time"]
    return [
        f"## Reference in the same run: {record['header'].get('reference')}",
        "",
        "| model | K | streams in real time | streams per CPU s | inference ms/window "
        "| inference ms per bed-audio-s |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {r['model']} | {r['streams']} | {r['streams_real_time']:,.0f} "
            f"| {r['audio_s'] / r['cpu_s']['process']:,.0f} "
            f"| {r['inference']['ms_per_window']:.2f} "
            f"| {r['inference'].get('ms_per_audio_s', float('nan')):.3f} |"
            for r in (best, ref)
        ),
        "",
        f"Streams in real time on one core, {best['model']} / {ref['model']}: **{ratio:.2f}x**.",
    ]


DEMO_LOAD = "the three demo recordings looped (SPRSound `intra_test`, adventitious sounds)"


def _paced(
    paced: list[dict[str, Any]] | None, load: str = DEMO_LOAD, level: str = "##"
) -> list[str]:
    if not paced:
        return [f"{level} Paced in real time: not measured"]
    lines = [
        f"{level} Paced in real time (the operating point)",
        "",
        "| K | wall s | audio per stream / wall (1.00 = kept up) | events | close->publish "
        "p50 / p99 ms | close->PUBACK p50 / p99 / max ms | capture->PUBACK p50 / p99 / max ms "
        "| unacked | runtime's read wait p99, median / worst bed report ms "
        "| clips submitted / sent / dropped / waiting |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in paced:
        lat, three = run["latency"], ("p50", "p99", "max")
        lines.append(
            f"| {run['streams']} | {run['wall_s']:.0f} | {run['xrt_per_stream']:.2f} "
            f"| {lat['close_to_publish_ms'].get('n', 0)} | {_fmt(lat['close_to_publish_ms'])} "
            f"| {_fmt(lat.get('close_to_puback_ms'), three)} "
            f"| {_fmt(lat.get('capture_to_puback_ms'), three)} "
            f"| {lat.get('close_to_puback_ms', {}).get('unacked', 'n/a')} "
            f"| {_fmt(lat.get('read_wait_p99_ms'), ('median', 'max'))} | {_clips(run)} |"
        )
    lines += [
        "",
        "Window close = when the chunk completing the window was read and pushed; the event is "
        "published at the end of the same round (after the batch inference, with the round's "
        "other events in one spool transaction), and PUBACK comes back through the spool, the "
        "MQTT sender thread and paho's network thread. Capture = when the "
        "window's last sample was due from the (paced) source: it adds the wait before the "
        "runtime got to read the chunk, which grows without bound when the core cannot keep up. "
        "The runtime's read wait is its own measure of that wait (`read_wait_ms_p99` in each "
        "bed's metrics report, every 10 s; docs/runtime.md, section 'Load'): the median and "
        "the largest over the beds' reports published while measuring; over "
        "`read_wait_warn_ms` (500 ms) the runtime logs that it is behind. Clips: the evidence "
        "channel's counts when the measured rounds ended (since the runtime started): handed "
        "over by the loop, acknowledged by the broker, dropped on a full queue, and waiting "
        "(queued or spooled).",
        "",
        _event_load(paced, load),
    ]
    return lines


def _clips(run: dict[str, Any]) -> str:
    """The evidence channel's counts of a run (n/a: no clips, e.g. no broker)."""
    ev = run.get("evidence")
    if ev is None:
        return "n/a"
    waiting = ev["queued"] + ev["spooled"]
    return f"{ev['submitted']:,} / {ev['sent']:,} / {ev['dropped']:,} / {waiting:,}"


def _event_load(paced: list[dict[str, Any]], load: str) -> str:
    rates = [
        f"{run['latency']['close_to_publish_ms'].get('n', 0) * 3600.0 / run['audio_s']:,.0f} "
        f"(K = {run['streams']})"
        for run in paced
        if run["audio_s"] > 0
    ]
    return (
        f"Load: {load}; each bed publishes {', '.join(rates)} events per hour of audio (onset "
        "and ended of adventitious and technical events, including those a loop's splice "
        "causes); every event goes through the spool's SQLite transaction and QoS 1."
    )


def _profile(profile: dict[str, Any] | None) -> list[str]:
    if not profile:
        return ["## Profile: not measured"]
    p, cpu = profile["profile"], profile["cpu_s"]
    wall = p["wall_s"]
    return [
        f"## Where the time goes: cProfile of the main thread, {profile['streams']} streams, "
        f"{wall:.0f} s",
        "",
        f"Process CPU {cpu['process']:.1f} s = main thread {cpu['main_thread']:.1f} s + other "
        f"threads (MQTT sender, paho, ORT) {cpu['other_threads']:.1f} s, over {wall:.1f} s wall. "
        "cProfile slows Python-heavy code more than native kernels, so the shares lean "
        "towards Python.",
        "",
        "| part (cumulative, nested parts indented) | s | % of wall |",
        "|---|---:|---:|",
        *(
            f"| {label.replace('  ', '&nbsp;&nbsp;')} | {s:.2f} | {100 * s / wall:.1f} |"
            for label, s in p["parts_s"].items()
        ),
        "",
        "| top functions by own time | calls | own s | cumulative s |",
        "|---|---:|---:|---:|",
        *(
            f"| `{t['function']}` | {t['calls']:,} | {t['own_s']:.2f} | {t['cumulative_s']:.2f} |"
            for t in p["top_own_time"]
        ),
    ]


def _batch_sweep(sweep: dict[str, Any] | None) -> list[str]:
    if not sweep:
        return ["## Inference cost against batch size: not measured"]
    sizes, ms = sweep["sizes"], sweep["ms_per_window"]
    what = "one bed's chunk, state carried" if sweep.get("streaming") else "one window"
    lines = [
        f"## Inference cost per window ({what}) against batch size: "
        f"{sweep.get('model', 'models/edge')} on ONNX Runtime CPU, 1 thread",
        "",
        "| model | " + " | ".join(str(n) for n in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    for model, values in ms.items():
        best = min(values)
        cells = [f"**{v:.2f}**" if v == best else f"{v:.2f}" for v in values]
        lines.append(f"| {model} ms/window | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Median of 7 interleaved repeats of 96 windows (random features) per batch size, through "
        "`OrtBackend` as the runtime opens it (bench/runtime_batch.py); bold: the cheapest. "
        "The runtime sends every window of a round in one call, which the backend "
        "splits into pieces of at most `max_batch`.",
    ]
    return lines
