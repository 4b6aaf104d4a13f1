"""FP32 vs INT8 (Q/DQ) ONNX on onnxruntime CPU: per-window latency and model file size.

    python -m bench.export [--model-dir models/edge] [--repeats 30] [--calib DIR] \
        [--sed-fp32 models/sed/model.onnx] [--sed-int8 models/sed/model.int8.onnx] \
        [--sed-variant NAME=PATH ...] [--streaming-only] [--out-dir bench/results]

One thread (intra_op 1, inter_op 1, sequential execution), graph optimisation ORT_ENABLE_ALL,
warm-up runs, then the median of ``--repeats`` timed runs (FP32 and INT8 alternate in 5
rounds, so load drift on a shared machine hits both alike), at batch 1 and batch 16; latency
per window is batch time / batch size. Targets (checked as ratios measured in the same run):
INT8 >= 2.5x faster per window, model file >= 3.5x smaller. They are reported as measured,
met or not.

Investigation rows explain the CPU result: the INT8 model at each ORT optimisation level, the
node types of ORT's optimised INT8 graph (how many Q/DQ pairs became QLinearConv, how many
Convs stayed float), where the INT8 time goes (ORT's profiler), and two re-quantized variants
calibrated on a few windows of ``--calib`` (default: the folder in the manifest): per-tensor
weights (the per-channel effect) and uint8 asymmetric activations (ORT CPU's preferred format,
which TensorRT's explicit quantization does not accept; measured only to show the format's
cost on this CPU).

Streaming model (a SedNet graph of :mod:`export.sed_onnx`, INT8 from
:mod:`export.quantize_streaming`): FP32 vs INT8 in milliseconds of one core per second of audio
per bed, one call for :data:`STREAMING_BEDS` beds (their states batched), each call one chunk;
same session options, warm-up, alternating rounds and medians as above, the speed-up as the
ratio of the two in the same run. ``--sed-variant`` adds other quantized files of the same
model to the same rounds (e.g. uint8 activations). Skipped, with the reason printed, when the
files are absent (the defaults exist only once a streaming model is exported there);
``--streaming-only`` measures only this. Writes ``--out-dir``/export.{md,json} (default
bench/results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from edge.manifest import INPUT_NAME, load_manifest

RESULTS_DIR = Path(__file__).parent / "results"
BATCHES = (1, 16)
WARMUP_RUNS = 3
TARGET_SPEEDUP = 2.5  # INT8 per-window latency vs FP32
TARGET_SIZE_RATIO = 3.5  # FP32 file bytes / INT8 file bytes
VARIANT_CALIB_WINDOWS = 32
PROFILE_RUNS = 5
ROUNDS = 5  # FP32 and INT8 are timed in alternating rounds
TOP_OPS = 6
STREAMING_BEDS = 64
DEFAULT_SED_FP32 = Path("models/sed/model.onnx")
DEFAULT_SED_INT8 = Path("models/sed/model.int8.onnx")


def session(path: Path, level: str = "all", **options: Any) -> Any:
    """A one-thread, sequential onnxruntime CPU session at optimisation ``level``."""
    import onnxruntime as ort

    levels = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = levels[level]
    so.log_severity_level = 3  # errors only (saving an NCHWc-optimised graph warns)
    for key, value in options.items():
        setattr(so, key, value)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def windows_like(shape: tuple[int, ...], batch: int) -> np.ndarray:
    """Log-feature-like float32 input (the values barely matter for these kernels)."""
    rng = np.random.default_rng(0)
    return rng.normal(-12.0, 3.0, size=(batch, *shape)).astype(np.float32)


def ms_per_window(sess: Any, shape: tuple[int, ...], batch: int, repeats: int) -> float:
    x = {INPUT_NAME: windows_like(shape, batch)}
    for _ in range(WARMUP_RUNS):
        sess.run(None, x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, x)
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times) / batch


def latencies(path: Path, shape: tuple[int, ...], repeats: int, level: str = "all") -> dict:
    sess = session(path, level)
    return {f"batch {b}": ms_per_window(sess, shape, b, repeats) for b in BATCHES}


def interleaved(
    paths: dict[str, Path],
    shape: tuple[int, ...],
    repeats: int,
    levels: dict[str, str] | None = None,
) -> dict:
    """:func:`latencies` of each model (at ``levels[name]``, default ``all``), measured in
    alternating rounds (load drift hits all alike); the median over the rounds is kept."""
    levels = levels or {}
    sessions = {name: session(path, levels.get(name, "all")) for name, path in paths.items()}
    rounds: dict[str, dict[str, list[float]]] = {n: defaultdict(list) for n in paths}
    per_round = max(1, repeats // ROUNDS)
    for _ in range(ROUNDS):
        for name, sess in sessions.items():
            for b in BATCHES:
                rounds[name][f"batch {b}"].append(ms_per_window(sess, shape, b, per_round))
    return {n: {b: statistics.median(v) for b, v in rows.items()} for n, rows in rounds.items()}


def initializer_bytes(path: Path) -> int:
    """Bytes of the weights and constants (initializers) alone."""
    import onnx
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(i).nbytes for i in onnx.load(str(path)).graph.initializer)


def optimised_census(path: Path) -> dict[str, int]:
    """Node types of ORT's optimised graph (ORT_ENABLE_ALL) of ``path``."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "optimised.onnx"
        session(path, "all", optimized_model_filepath=str(saved))
        counts = Counter(node.op_type for node in onnx.load(str(saved)).graph.node)
    keys = ("QLinearConv", "Conv", "FusedConv", "QLinearMatMul", "MatMul", "QuantizeLinear")
    return {key: counts.get(key, 0) for key in (*keys, "DequantizeLinear", "Transpose")}


def op_time_shares(path: Path, shape: tuple[int, ...]) -> dict[str, float]:
    """Share of kernel time per op type at batch 16 (ORT profiler), the largest first."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = session(path, "all", enable_profiling=True, profile_file_prefix=f"{tmp}/p")
        x = {INPUT_NAME: windows_like(shape, BATCHES[-1])}
        for _ in range(PROFILE_RUNS):
            sess.run(None, x)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values()) or 1.0
    ranked = sorted(per_op.items(), key=lambda kv: -kv[1])[:TOP_OPS]
    return {op: round(100.0 * t / total, 1) for op, t in ranked}


def variant(fp32: Path, out: Path, windows: np.ndarray, *, per_channel: bool, uint8: bool) -> None:
    """Re-quantize ``fp32`` with other options (investigation only; not for TensorRT)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from export.quantize import QUANTIZED_OPS, make_reader

    prepared = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(
        str(prepared),
        str(out),
        make_reader(windows),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=None if uint8 else QUANTIZED_OPS,
        per_channel=per_channel,
        activation_type=QuantType.QUInt8 if uint8 else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": not uint8, "WeightSymmetric": True},
    )


def variants(model_dir: Path, calib: Path | None, repeats: int) -> dict[str, Any]:
    """Latency of the per-tensor and uint8-activation variants (or why they were skipped)."""
    from export.quantize import calibration_set

    manifest = load_manifest(model_dir / "manifest.json")
    if calib is None or not calib.is_dir():
        return {"skipped": f"calibration folder {calib} not found"}
    windows = calibration_set(calib, manifest, VARIANT_CALIB_WINDOWS, seed=0).windows
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, per_channel, uint8 in (
            ("int8 per-tensor weights (TensorRT-compatible)", False, False),
            ("uint8 asymmetric activations, all ops (ORT CPU format, not TensorRT)", True, True),
        ):
            out = Path(tmp) / "variant.onnx"
            variant(model_dir / "model.onnx", out, windows, per_channel=per_channel, uint8=uint8)
            rows[name] = latencies(out, manifest.input_shape, repeats)
    return rows


def measure(model_dir: Path, calib: Path | None, repeats: int) -> dict[str, Any]:
    manifest = load_manifest(model_dir / "manifest.json")
    fp32, int8 = model_dir / "model.onnx", model_dir / "model.int8.onnx"
    shape = manifest.input_shape
    result: dict[str, Any] = {
        "model_id": manifest.model_id,
        "input_shape": [None, *shape],
        "ms_per_window": interleaved({"fp32": fp32, "int8": int8}, shape, repeats),
        "bytes": {"fp32": fp32.stat().st_size, "int8": int8.stat().st_size},
        "initializer_bytes": {"fp32": initializer_bytes(fp32), "int8": initializer_bytes(int8)},
    }
    levels = ("disabled", "basic", "extended", "all")
    by_level = interleaved({lv: int8 for lv in levels}, shape, repeats, {lv: lv for lv in levels})
    result["int8_by_optimisation_level_batch16"] = {lv: by_level[lv]["batch 16"] for lv in levels}
    result["int8_optimised_graph_nodes"] = optimised_census(int8)
    result["fp32_optimised_graph_nodes"] = optimised_census(fp32)
    result["int8_kernel_time_share_percent"] = op_time_shares(int8, shape)
    result["fp32_kernel_time_share_percent"] = op_time_shares(fp32, shape)
    result["variants_ms_per_window"] = variants(model_dir, calib, repeats)
    return result


def streaming_feed(path: Path, beds: int) -> tuple[dict[str, np.ndarray], float]:
    """One chunk's inputs for ``beds`` beds (log-feature-like features, non-negative states as
    the caches of ReLU outputs are) and the seconds of audio a chunk holds."""
    from export.quantize_streaming import folder_info, read_shapes
    from export.sed_onnx import FEATURES, STATE

    shapes = read_shapes(path)
    spec = folder_info(path, shapes).spec
    features = windows_like((shapes.n_kinds, shapes.n_bands, shapes.input_frames), beds)
    rng = np.random.default_rng(1)
    state = np.abs(rng.normal(0.0, 1.0, size=(beds, shapes.state_size))).astype(np.float32)
    audio_s = shapes.input_frames * spec.hop_samples / spec.sample_rate_hz
    return {FEATURES: features, STATE: state}, audio_s


def ms_per_call(sess: Any, feed: dict[str, np.ndarray], repeats: int) -> float:
    for _ in range(WARMUP_RUNS):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def streaming(
    fp32: Path, int8: Path, repeats: int, variants: dict[str, Path] | None = None
) -> dict[str, Any]:
    """FP32 vs INT8 (and ``variants``) of a streaming model, ms per audio second per bed at
    :data:`STREAMING_BEDS` beds, alternating rounds; or ``{"skipped": reason}``."""
    paths = {"fp32": fp32, "int8": int8, **(variants or {})}
    absent = [f"{name} {path}" for name, path in paths.items() if not path.is_file()]
    if absent:
        return {"skipped": f"streaming model not found: {', '.join(absent)}"}
    feed, audio_s = streaming_feed(fp32, STREAMING_BEDS)
    sessions = {name: session(path) for name, path in paths.items()}
    rounds: dict[str, list[float]] = defaultdict(list)
    per_round = max(1, repeats // ROUNDS)
    for _ in range(ROUNDS):
        for name, sess in sessions.items():
            rounds[name].append(ms_per_call(sess, feed, per_round))
    per_s = {
        name: statistics.median(times) / STREAMING_BEDS / audio_s for name, times in rounds.items()
    }
    return {
        "models": {name: str(path) for name, path in paths.items()},
        "beds": STREAMING_BEDS,
        "audio_s_per_chunk": audio_s,
        "ms_per_audio_s_per_bed": per_s,
        "int8_speedup": per_s["fp32"] / per_s["int8"],
        "bytes": {name: path.stat().st_size for name, path in paths.items()},
        "int8_optimised_graph_nodes": optimised_census(int8),
    }


def render_streaming(result: dict[str, Any]) -> list[str]:
    """The streaming model's lines of the report."""
    if "skipped" in result:
        return [f"Streaming model: skipped ({result['skipped']})."]
    per_s, size = result["ms_per_audio_s_per_bed"], result["bytes"]
    lines = [
        f"Streaming model, {result['beds']} beds per call, one chunk "
        f"({result['audio_s_per_chunk']:.2f} s of audio) per call:",
        "",
        "| model | file | bytes | ms per audio second per bed |",
        "|---|---|---:|---:|",
    ]
    lines += [
        f"| {name} | {result['models'][name]} | {size[name]:,} | {per_s[name]:.4f} |"
        for name in per_s
    ]
    lines += [
        "",
        f"- INT8 speed-up per audio second (FP32 / INT8, same run): {result['int8_speedup']:.2f}x",
        "- optimised INT8 graph nodes: " + _pairs(result["int8_optimised_graph_nodes"]),
    ]
    return lines


def verdicts(result: dict[str, Any]) -> list[tuple[str, float, float, bool]]:
    """(target, measured, wanted, met) rows."""
    ms, size = result["ms_per_window"], result["bytes"]
    rows = [
        (f"INT8 speed-up per window, {b}", ms["fp32"][b] / ms["int8"][b], TARGET_SPEEDUP)
        for b in ms["fp32"]
    ]
    rows.append(("file size FP32 / INT8", size["fp32"] / size["int8"], TARGET_SIZE_RATIO))
    return [(name, value, wanted, value >= wanted) for name, value, wanted in rows]


def render(result: dict[str, Any], header: str) -> str:
    ms, size, init = result["ms_per_window"], result["bytes"], result["initializer_bytes"]
    lines = [header, "", "| model | bytes | weights bytes |"]
    lines += ["|---|---:|---:|"]
    lines += [f"| {p} | {size[p]:,} | {init[p]:,} |" for p in ("fp32", "int8")]
    lines += ["", "| ms per window | " + " | ".join(ms["fp32"]) + " |", "|---|---:|---:|"]
    lines += [f"| {p} | " + " | ".join(f"{v:.3f}" for v in ms[p].values()) + " |" for p in ms]
    lines += ["", "| target | measured | wanted | met |", "|---|---:|---:|---|"]
    lines += [
        f"| {name} | {value:.2f}x | >= {wanted:g}x | {'yes' if ok else 'NO'} |"
        for name, value, wanted, ok in verdicts(result)
    ]
    lines += ["", "Investigation (INT8 on onnxruntime CPU):", ""]
    levels = result["int8_by_optimisation_level_batch16"]
    lines.append("- ms/window at batch 16 by ORT optimisation level: " + _pairs(levels, ".3f"))
    lines.append("- optimised INT8 graph nodes: " + _pairs(result["int8_optimised_graph_nodes"]))
    lines.append("- optimised FP32 graph nodes: " + _pairs(result["fp32_optimised_graph_nodes"]))
    shares = result["int8_kernel_time_share_percent"]
    lines.append("- INT8 kernel time share, %: " + _pairs(shares, ".1f"))
    fp32_shares = result["fp32_kernel_time_share_percent"]
    lines.append("- FP32 kernel time share, %: " + _pairs(fp32_shares, ".1f"))
    for name, row in result["variants_ms_per_window"].items():
        text = row if isinstance(row, str) else _pairs(row, ".3f")
        lines.append(f"- variant {name}: ms/window {text}")
    if "streaming" in result:
        lines += ["", *render_streaming(result["streaming"])]
    return "\n".join(lines)


def _pairs(mapping: dict[str, Any], fmt: str = "") -> str:
    return ", ".join(f"{key} {value:{fmt}}" for key, value in mapping.items())


def variant_paths(items: list[str]) -> dict[str, Path]:
    """``NAME=PATH`` arguments -> {name: path}."""
    variants = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path or name in ("fp32", "int8"):
            raise ValueError(f"--sed-variant wants NAME=PATH, NAME not fp32 or int8: {item!r}")
        variants[name] = Path(path)
    return variants


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.export", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model-dir", type=Path, default=Path("models/edge"))
    parser.add_argument("--repeats", type=int, default=50, help="timed runs (median is kept)")
    parser.add_argument("--calib", type=Path, default=None, help="audio for the variants")
    parser.add_argument("--sed-fp32", type=Path, default=DEFAULT_SED_FP32, help="streaming FP32")
    parser.add_argument("--sed-int8", type=Path, default=DEFAULT_SED_INT8, help="streaming INT8")
    parser.add_argument(
        "--sed-variant", action="append", default=[], help="NAME=PATH, another streaming INT8"
    )
    parser.add_argument("--streaming-only", action="store_true", help="skip the window model")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where results go")
    args = parser.parse_args(argv)
    try:
        variants = variant_paths(args.sed_variant)
    except ValueError as exc:
        parser.error(str(exc))
    result: dict[str, Any] = {}
    if not args.streaming_only:
        manifest = load_manifest(args.model_dir / "manifest.json")
        calib = args.calib or Path(manifest.raw.get("calibration", {}).get("dir", ""))
        result = measure(args.model_dir, calib if str(calib) else None, args.repeats)
    result["streaming"] = streaming(args.sed_fp32, args.sed_int8, args.repeats, variants)
    import onnxruntime

    machine = f"{platform.machine()} {platform.processor() or ''}"
    load = f"load average {os.getloadavg()[0]:.1f}"
    if args.streaming_only:
        header = (
            f"Streaming ONNX FP32 vs INT8 (Q/DQ) on onnxruntime {onnxruntime.__version__} CPU, "
            f"1 thread, median of {args.repeats}; {machine}, {load}"
        )
        table = "\n".join([header, "", *render_streaming(result["streaming"])])
    else:
        header = (
            f"ONNX FP32 vs INT8 (Q/DQ) on onnxruntime {onnxruntime.__version__} CPU, 1 thread, "
            f"{manifest.model_id}, median of {args.repeats}; {machine}, {load}"
        )
        table = render(result, header)
    print(table)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "export.md").write_text(table + "\n")
    targets = [] if args.streaming_only else verdicts(result)
    record = {
        "header": header,
        **result,
        "targets": [
            dict(zip(("target", "measured", "wanted", "met"), row, strict=True)) for row in targets
        ],
    }
    (args.out_dir / "export.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
