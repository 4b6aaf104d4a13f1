"""FP32 vs INT8 (Q/DQ) streaming ONNX on onnxruntime CPU: cost per audio second and file size.

    python -m bench.export [--fp32 models/sed/model.onnx] [--int8 models/sed/model.int8.onnx] \
        [--variant NAME=PATH ...] [--repeats 50] [--out-dir bench/results]

One thread, ORT_ENABLE_ALL, the median of ``--repeats`` timed runs in 5 alternating rounds
(a shared machine's load drift hits every model alike); each call is one chunk of
:data:`STREAMING_BEDS` beds, as the runtime feeds it. Targets, as ratios measured in the same
run: INT8 >= 2x faster than FP32, file >= 3.5x smaller. Also reports the node types of ORT's
optimised INT8 graph (Q/DQ pairs fused into QLinearConv, Convs left float).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench import RESULTS_DIR, median_seconds, target_records, write_results

WARMUP_RUNS = 3
TARGET_SPEEDUP = 2.0  # INT8 vs FP32, ms per audio second per bed
TARGET_SIZE_RATIO = 3.5  # FP32 file bytes / INT8 file bytes
ROUNDS = 5  # the models are timed in alternating rounds
STREAMING_BEDS = 64
DEFAULT_FP32 = Path("models/sed/model.onnx")
DEFAULT_INT8 = Path("models/sed/model.int8.onnx")


def session(path: Path, **options: Any) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only (saving an NCHWc-optimised graph warns)
    for key, value in options.items():
        setattr(so, key, value)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def windows_like(shape: tuple[int, ...], batch: int) -> np.ndarray:
    """Log-feature-like float32 input (the values barely matter for these kernels)."""
    rng = np.random.default_rng(0)
    return rng.normal(-12.0, 3.0, size=(batch, *shape)).astype(np.float32)


def optimised_census(path: Path) -> dict[str, int]:
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "optimised.onnx"
        session(path, optimized_model_filepath=str(saved))
        counts = Counter(node.op_type for node in onnx.load(str(saved)).graph.node)
    keys = ("QLinearConv", "Conv", "FusedConv", "QLinearMatMul", "MatMul", "QuantizeLinear")
    return {key: counts.get(key, 0) for key in (*keys, "DequantizeLinear", "Transpose")}


def streaming_feed(path: Path, beds: int) -> tuple[dict[str, np.ndarray], float]:
    """One chunk's inputs for ``beds`` beds (states >= 0, like ReLU caches), its audio seconds."""
    from export.quantize import folder_info, read_shapes
    from export.to_onnx import FEATURES, STATE

    shapes = read_shapes(path)
    spec = folder_info(path, shapes).spec
    features = windows_like((shapes.n_kinds, shapes.n_bands, shapes.input_frames), beds)
    rng = np.random.default_rng(1)
    state = np.abs(rng.normal(0.0, 1.0, size=(beds, shapes.state_size))).astype(np.float32)
    audio_s = shapes.input_frames * spec.hop_samples / spec.sample_rate_hz
    return {FEATURES: features, STATE: state}, audio_s


def ms_per_call(sess: Any, feed: dict[str, np.ndarray], repeats: int) -> float:
    return 1000.0 * median_seconds(lambda: sess.run(None, feed), repeats, WARMUP_RUNS)


def streaming(
    fp32: Path, int8: Path, repeats: int, variants: dict[str, Path] | None = None
) -> dict[str, Any]:
    paths = {"fp32": fp32, "int8": int8, **(variants or {})}
    absent = [f"{name} {path}" for name, path in paths.items() if not path.is_file()]
    if absent:
        raise SystemExit(f"bench.export: model not found: {', '.join(absent)}")
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
    per_s, size = result["ms_per_audio_s_per_bed"], result["bytes"]
    lines = [
        f"{result['beds']} beds per call, one chunk "
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
        "| target | measured | wanted | met |",
        "|---|---:|---:|---|",
        *[
            f"| {name} | {value:.2f}x | >= {wanted:g}x | {'yes' if ok else 'NO'} |"
            for name, value, wanted, ok in verdicts(result)
        ],
        "",
        "- optimised INT8 graph nodes: "
        + ", ".join(f"{key} {n}" for key, n in result["int8_optimised_graph_nodes"].items()),
    ]
    return lines


def verdicts(result: dict[str, Any]) -> list[tuple[str, float, float, bool]]:
    size = result["bytes"]
    rows = [
        ("INT8 speed-up per audio second (FP32 / INT8)", result["int8_speedup"], TARGET_SPEEDUP),
        ("file size FP32 / INT8", size["fp32"] / size["int8"], TARGET_SIZE_RATIO),
    ]
    return [(name, value, wanted, value >= wanted) for name, value, wanted in rows]


def variant_paths(items: list[str]) -> dict[str, Path]:
    variants = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path or name in ("fp32", "int8"):
            raise ValueError(f"--variant wants NAME=PATH, NAME not fp32 or int8: {item!r}")
        variants[name] = Path(path)
    return variants


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.export", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--fp32", type=Path, default=DEFAULT_FP32, help="FP32 ONNX")
    parser.add_argument("--int8", type=Path, default=DEFAULT_INT8, help="INT8 ONNX")
    parser.add_argument("--variant", action="append", default=[], help="NAME=PATH, another INT8")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs (median is kept)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where results go")
    args = parser.parse_args(argv)
    try:
        variants = variant_paths(args.variant)
    except ValueError as exc:
        parser.error(str(exc))
    result = streaming(args.fp32, args.int8, args.repeats, variants)
    import onnxruntime

    machine = f"{platform.machine()} {platform.processor() or ''}"
    load = f"load average {os.getloadavg()[0]:.1f}"
    header = (
        f"Streaming ONNX FP32 vs INT8 (Q/DQ) on onnxruntime {onnxruntime.__version__} CPU, "
        f"1 thread, median of {args.repeats}; {machine}, {load}"
    )
    table = "\n".join([header, "", *render_streaming(result)])
    record = {"header": header, **result, "targets": target_records(verdicts(result))}
    write_results("export", record, table, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
