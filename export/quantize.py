"""``lungwatch quantize``: model.onnx -> explicit Q/DQ INT8 ONNX, calibrated on real audio with
the state each chunk really carries.

The method (format, 7-bit weights, Q/DQ placement, calibration ranges, what stays float) is
docs/export.md, "INT8 method"; the options are in its "Commands and their output". Without a
``manifest.json`` beside the model, features use the default spec, the first K kinds and no
look-ahead.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from edge.features import FEATURE_KINDS, FeatureSpec
from edge.inference.manifest import MANIFEST_NAME, sha256_file
from edge.inference.manifest_write import publish, record_artifact
from export.opcheck import check_tensorrt_compat
from export.to_onnx import FEATURES, PROBS, STATE, STATE_OUT
from lungwatch.cli import ArgumentParser
from lungwatch.errors import LungwatchError

METHODS = ("minmax", "percentile", "entropy")
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]
# 7 of 8 bits (reduce_range): non-VNNI x86 kernels cannot saturate (docs/export.md, "Types").
WEIGHT_BITS = 7
ACTIVATIONS = ("qint8", "quint8")
DEFAULT_ACTIVATIONS = "qint8"  # TensorRT-compatible, and as fast as quint8 on ORT CPU once tidied
DEFAULT_METHOD = "percentile"
DEFAULT_PERCENTILE = 99.99  # of |activation|, the percentile method's range
DEFAULT_MAX_FILES = 200
DEFAULT_MAX_CHUNKS = 512
CALIB_BATCH_CHUNKS = 32  # chunks per calibration batch, at most (batches are all one size)
AGREEMENT_RECORDINGS = 32  # calibration recordings streamed for the CLI's agreement check
STATE_RANK = 2  # (batch, state_size)
FEATURES_RANK = 4  # (batch, kinds, bands, frames)
PROBS_RANK = 3  # (batch, outputs, chunk_frames)
QDQ_ZERO_POINT_PREFIX = "Q/DQ node(s) with a zero point"  # the opcheck's zero-point finding
QDQ_STOPS = (*QUANTIZED_OPS, "QuantizeLinear")  # what a kept Q/DQ pair must reach

T = TypeVar("T")
Event = tuple[str, int, int]  # (type, start sample, end sample exclusive)


class StreamingQuantizeError(LungwatchError):
    """The streaming model cannot be quantized (options, inputs) or the result is unusable."""


class OpCheckFailedError(StreamingQuantizeError):
    """The quantized model has TensorRT compatibility problems; ``problems`` lists them."""

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


@dataclass(frozen=True)
class StreamingShapes:
    """The fixed sizes of a streaming graph (every dimension but the batch)."""

    n_kinds: int
    n_bands: int
    input_frames: int  # front-end frames per chunk (chunk_frames * stride)
    n_outputs: int
    chunk_frames: int
    state_size: int

    @property
    def stride(self) -> int:
        return self.input_frames // self.chunk_frames


def _static_dims(value: Any, rank: int, model: Path) -> list[int]:
    dims = list(value.type.tensor_type.shape.dim)
    sizes = [d.dim_value if d.HasField("dim_value") else 0 for d in dims[1:]]
    if len(dims) != rank or min(sizes, default=0) < 1:
        raise StreamingQuantizeError(
            f"{model}: {value.name!r} must have {rank} dims, only the first dynamic"
        )
    return sizes


def read_shapes(model: Path) -> StreamingShapes:
    import onnx
    from google.protobuf.message import DecodeError

    if not model.is_file():
        raise StreamingQuantizeError(f"{model}: model not found")
    try:
        graph = onnx.load(str(model), load_external_data=False).graph
    except (OSError, DecodeError, ValueError) as exc:
        raise StreamingQuantizeError(f"{model}: not an ONNX model ({exc})") from None
    values = {v.name: v for v in (*graph.input, *graph.output)}
    missing = [n for n in (FEATURES, STATE, PROBS, STATE_OUT) if n not in values]
    if missing:
        raise StreamingQuantizeError(
            f"{model}: not a streaming model (no {', '.join(map(repr, missing))}; "
            f"expected inputs {FEATURES!r}, {STATE!r} and outputs {PROBS!r}, {STATE_OUT!r})"
        )
    k, f, t = _static_dims(values[FEATURES], FEATURES_RANK, model)
    (s,) = _static_dims(values[STATE], STATE_RANK, model)
    o, n = _static_dims(values[PROBS], PROBS_RANK, model)
    if t % n:
        raise StreamingQuantizeError(f"{model}: {t} input frames is not a multiple of {n} outputs")
    return StreamingShapes(k, f, t, o, n, s)


def flush_frame(model: Path, shapes: StreamingShapes) -> np.ndarray | None:
    """The (K, F) training mean the graph subtracts from its features: the frame a device feeds
    after a stream's end (:func:`training.data.recordings.flush_value`)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model)).graph
    initializers = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Sub" and node.input[0] == FEATURES and node.input[1] in initializers:
            mean = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)
            if mean.size == shapes.n_kinds * shapes.n_bands:
                return mean.reshape(shapes.n_kinds, shapes.n_bands)
    return None


def ort_session(model: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise StreamingQuantizeError(f"{model}: ONNX Runtime cannot load it ({exc})") from None


def _check_recordings(recordings: Sequence[np.ndarray], shapes: StreamingShapes) -> None:
    if not recordings:
        raise StreamingQuantizeError("no recordings given")
    kf = (shapes.n_kinds, shapes.n_bands)
    for i, features in enumerate(recordings):
        if features.ndim != FEATURES_RANK - 1 or features.shape[:2] != kf:
            raise StreamingQuantizeError(
                f"recording {i}: features {features.shape}, the model takes ({kf[0]}, {kf[1]}, T)"
            )


def run_streams(
    session: Any,
    shapes: StreamingShapes,
    recordings: Sequence[np.ndarray],
    n_chunks: int,
    *,
    pad: np.ndarray | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Stream the recordings as one batch of beds from zero state, padded with ``pad`` after
    their ends. Yields ``(chunk, features (B, K, F, T), state carried in (B, S), probs)``."""
    width = shapes.input_frames
    x = np.empty((len(recordings), shapes.n_kinds, shapes.n_bands, n_chunks * width), np.float32)
    for row, features in enumerate(recordings):
        n = min(features.shape[2], x.shape[3])
        x[row, :, :, :n] = features[:, :, :n]
        fill = pad if pad is not None else features.astype(np.float32).mean(axis=2)
        x[row, :, :, n:] = fill[:, :, None]
    state = np.zeros((len(recordings), shapes.state_size), np.float32)
    for c in range(n_chunks):
        features = np.ascontiguousarray(x[..., c * width : (c + 1) * width])
        probs, new_state = session.run([PROBS, STATE_OUT], {FEATURES: features, STATE: state})
        yield c, features, state, probs
        state = new_state


def calibration_chunks(
    fp32_model: Path, recordings: list[np.ndarray], max_chunks: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """A seeded sample of at most ``max_chunks`` whole chunks in (recording, chunk) order, each
    ``{"features": (1, K, F, T), "state": (1, S)}`` with the state the FP32 model carried in."""
    if max_chunks < 1:
        raise StreamingQuantizeError(f"max_chunks must be an integer >= 1, got {max_chunks}")
    fp32_model = Path(fp32_model)
    shapes = read_shapes(fp32_model)
    _check_recordings(recordings, shapes)
    width = shapes.input_frames
    candidates = [
        (r, c) for r, features in enumerate(recordings) for c in range(features.shape[2] // width)
    ]
    if not candidates:
        raise StreamingQuantizeError(f"no recording is long enough for one chunk of {width} frames")
    candidates = _sample(candidates, max_chunks, seed)
    wanted: dict[int, list[tuple[int, int]]] = {}  # chunk -> [(recording, output index)]
    for index, (r, c) in enumerate(candidates):
        wanted.setdefault(c, []).append((r, index))
    chunks: list[dict[str, np.ndarray]] = [{} for _ in candidates]
    session = ort_session(fp32_model)
    n_chunks = max(wanted) + 1
    for c, features, state, _ in run_streams(session, shapes, recordings, n_chunks):
        for r, index in wanted.get(c, []):
            chunks[index] = {FEATURES: features[r : r + 1].copy(), STATE: state[r : r + 1].copy()}
    return chunks


def _sample(items: list[T], most: int, seed: int) -> list[T]:
    if len(items) <= most:
        return items
    picked = np.random.default_rng(seed).choice(len(items), most, replace=False)
    return [items[i] for i in np.sort(picked)]


def chunks_sha256(chunks: Sequence[dict[str, np.ndarray]]) -> str:
    """sha256 of the float32 bytes of every chunk's features, then its state, in order."""
    digest = hashlib.sha256()
    for chunk in chunks:
        for name in (FEATURES, STATE):
            digest.update(np.ascontiguousarray(chunk[name], dtype=np.float32).tobytes())
    return digest.hexdigest()


def make_reader(chunks: Sequence[dict[str, np.ndarray]]) -> Any:
    """Batches of one size: onnxruntime 1.32's histogram calibrators fail on a shorter last one."""
    from onnxruntime.quantization import CalibrationDataReader

    size = max(d for d in range(1, CALIB_BATCH_CHUNKS + 1) if len(chunks) % d == 0)
    batches = (
        {
            name: np.concatenate([c[name] for c in chunks[i : i + size]])
            for name in (FEATURES, STATE)
        }
        for i in range(0, len(chunks), size)
    )

    class ChunkReader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(batches, None)

    return ChunkReader()


def quantize_qdq(
    source: Path,
    out: Path,
    chunks: Sequence[dict[str, np.ndarray]],
    *,
    method: str,
    activations: str,
    work: Path,
    percentile: float = DEFAULT_PERCENTILE,
    nodes_to_exclude: Sequence[str] = (),
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    signed = activations == "qint8"
    prepared = work / "prepared.onnx"
    quant_pre_process(str(source), str(prepared))
    with contextlib.redirect_stdout(io.StringIO()):  # histogram calibrators print progress
        quantize_static(
            str(prepared),
            str(out),
            make_reader(chunks),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True,
            reduce_range=True,  # WEIGHT_BITS = 7 (weights only)
            activation_type=QuantType.QInt8 if signed else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method={m.name.lower(): m for m in CalibrationMethod}[method],
            nodes_to_exclude=list(nodes_to_exclude),
            extra_options={
                "ActivationSymmetric": signed,
                "WeightSymmetric": True,
                "QuantizeBias": False,  # TensorRT takes float biases
                "CalibPercentile": percentile,  # read by the percentile method only
                "CalibTensorRangeSymmetric": signed,  # percentile of |x| (int8) or both tails
            },
        )


# Tensor names the quantizer derives from the FP32 names; replaced by short ids.
GENERATED_NAME = re.compile(
    r"(_zero_point|_scale|_quantized|_QuantizeLinear_Output|_DequantizeLinear_Output)$"
)


def compact(graph: Any) -> None:
    """Shrink ``graph`` without changing what it computes: short generated tensor names, no Q/DQ
    node names, no ``value_info`` (the FP32 export has none; runtimes infer shapes)."""
    ids: dict[str, str] = {}

    def short(name: str) -> str:
        return ids.setdefault(name, f"q{len(ids):x}") if GENERATED_NAME.search(name) else name

    for node in graph.node:
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            node.name = ""
    for initializer in graph.initializer:
        initializer.name = short(initializer.name)
    del graph.value_info[:]


def tidy_qdq(graph: Any) -> dict[str, int]:
    """Rewrite the Q/DQ placement of ``graph`` (docs/export.md, "Q/DQ placement"): only
    quantized ops read a dequantized tensor, and a pair reaching no quantized op is removed."""
    rewired = sum(
        _read_float(node, q, dq)
        for q, dq, consumers in _activation_pairs(graph)
        if any(node.op_type in QUANTIZED_OPS for node in consumers)
        for node in consumers
        if node.op_type not in QUANTIZED_OPS
    )
    removed = 0
    outputs = {value.name for value in graph.output}
    for q, dq, consumers in _activation_pairs(graph):
        if dq.output[0] in outputs or _first_reached(graph, dq.output[0], QDQ_STOPS):
            continue
        for node in consumers:
            _read_float(node, q, dq)
        graph.node.remove(dq)
        if not any(q.output[0] in node.input for node in graph.node):
            graph.node.remove(q)
        removed += 1
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return {"float_readers": rewired, "pairs_removed": removed}


def _readers(graph: Any) -> dict[str, list[Any]]:
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _activation_pairs(graph: Any) -> list[tuple[Any, Any, list[Any]]]:
    """(QuantizeLinear, DequantizeLinear, the DQ's readers) of every activation Q/DQ pair."""
    initializers = {i.name for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers = _readers(graph)
    pairs = []
    for dq in graph.node:
        q = producer.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in initializers:
            pairs.append((q, dq, readers.get(dq.output[0], [])))
    return pairs


def _first_reached(graph: Any, tensor: str, ops: Sequence[str]) -> list[str]:
    """The names of the ``ops`` nodes that ``tensor`` reaches through nodes of other ops."""
    readers = _readers(graph)
    found: dict[str, None] = {}  # in the order reached
    seen, todo = {tensor}, [tensor]
    while todo:
        for node in readers.get(todo.pop(), []):
            if node.op_type in ops:
                found[node.name] = None
                continue
            fresh = [out for out in node.output if out not in seen]
            seen.update(fresh)
            todo += fresh
    return list(found)


def _read_float(node: Any, q: Any, dq: Any) -> int:
    slots = [k for k, name in enumerate(node.input) if name == dq.output[0]]
    for k in slots:
        node.input[k] = q.input[0]
    return len(slots)


def streaming_agreement(
    fp32: Path,
    int8: Path,
    recordings: Sequence[np.ndarray],
    *,
    lookahead_frames: int = 0,
    spec: FeatureSpec | None = None,
) -> dict[str, Any]:
    """How INT8 tracks FP32 over whole recordings streamed as on the device: each is padded with
    the graph's flush frame for its last chunk and the look-ahead (whose first outputs are
    dropped); events (default detector config) match if they overlap one of the same type; the
    quarter figures show whether error builds up over a stream."""
    from edge.bed.detector import DetectorConfig, FrameGrid, detect_events
    from training.data.targets import OUTPUTS

    fp32, int8 = Path(fp32), Path(int8)
    shapes = read_shapes(fp32)
    if read_shapes(int8) != shapes:
        raise StreamingQuantizeError(f"{int8}: its I/O sizes differ from {fp32}'s")
    _check_recordings(recordings, shapes)
    if shapes.n_outputs != len(OUTPUTS):
        raise StreamingQuantizeError(
            f"{fp32}: {shapes.n_outputs} outputs, the detector expects {len(OUTPUTS)} {OUTPUTS}"
        )
    spec = spec or FeatureSpec()
    grid = FrameGrid.of(spec.sample_rate_hz, spec.hop_samples, spec.frame_samples, shapes.stride)
    pad = flush_frame(fp32, shapes)
    n_out = [-(-r.shape[2] // shapes.stride) for r in recordings]  # output frames per recording
    n_chunks = -(-(max(n_out) + lookahead_frames) // shapes.chunk_frames)
    probs = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        session = ort_session(path)
        parts = [p for _, _, _, p in run_streams(session, shapes, recordings, n_chunks, pad=pad)]
        probs[name] = np.concatenate(parts, axis=2)[:, :, lookahead_frames:]  # (B, O, N)
    ref, got = [], []
    first_q, last_q = 0.0, 0.0
    events: dict[str, list[list[Event]]] = {"fp32": [], "int8": []}
    config = DetectorConfig()
    for row, n in enumerate(n_out):
        a, b = probs["fp32"][row, :, :n], probs["int8"][row, :, :n]
        ref.append(a)
        got.append(b)
        quarter = max(1, n // 4)
        diff = np.abs(a - b)
        first_q = max(first_q, float(diff[:, :quarter].max()))
        last_q = max(last_q, float(diff[:, -quarter:].max()))
        for name, p in (("fp32", a), ("int8", b)):
            found = detect_events(p.T, OUTPUTS, config, grid)
            events[name].append([(e.type, e.start_sample, e.end_sample) for e in found])
    a_all, b_all = np.concatenate(ref, axis=1), np.concatenate(got, axis=1)  # (O, frames)
    return {
        "recordings": len(recordings),
        "frames": int(a_all.shape[1]),
        "max_abs_prob_diff": float(np.abs(a_all - b_all).max()),
        "mean_abs_prob_diff": float(np.abs(a_all - b_all).mean()),
        "prob_correlation": _correlation(a_all, b_all),
        "max_abs_prob_diff_first_quarter": first_q,
        "max_abs_prob_diff_last_quarter": last_q,
        "per_output": {
            name: {
                "max_abs_prob_diff": float(np.abs(a_all[i] - b_all[i]).max()),
                "prob_correlation": _correlation(a_all[i], b_all[i]),
            }
            for i, name in enumerate(OUTPUTS)
        },
        "events_fp32": sum(map(len, events["fp32"])),
        "events_int8": sum(map(len, events["int8"])),
        **{
            f"{x}_events_matched": _share_matched(events[x], events[y])
            for x, y in (("fp32", "int8"), ("int8", "fp32"))
        },
    }


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.std() == 0.0 or b.std() == 0.0:
        return None
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _share_matched(
    ours: Sequence[Sequence[Event]], theirs: Sequence[Sequence[Event]]
) -> float | None:
    """The share of ``ours`` that overlap an event of the same type in ``theirs`` (per row)."""
    total = sum(map(len, ours))
    if total == 0:
        return None
    matched = sum(
        any(t == u and s < e2 and s2 < e for u, s2, e2 in their)
        for our, their in zip(ours, theirs, strict=True)
        for t, s, e in our
    )
    return matched / total


def quantize_model(
    fp32_model: Path,
    out: Path,
    chunks: Sequence[dict[str, np.ndarray]],
    *,
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    activations: str = DEFAULT_ACTIVATIONS,
    seed: int | None = None,
    agreement_recordings: Sequence[np.ndarray] = (),
    lookahead_frames: int = 0,
    nodes_to_exclude: Sequence[str] = (),
    spec: FeatureSpec | None = None,
) -> dict[str, Any]:
    """Quantize ``fp32_model`` on ``chunks``, compact, tidy and screen it for TensorRT 10, and
    write ``out``, or raise OpCheckFailedError and write nothing. Returns the calibration record
    (``seed`` is only recorded); FP32 agreement is on ``agreement_recordings`` (framed by
    ``spec``), else the chunks."""
    import onnx

    fp32_model, out = Path(fp32_model), Path(out)
    if method not in METHODS:
        raise StreamingQuantizeError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not 50.0 < percentile <= 100.0:
        raise StreamingQuantizeError(f"percentile must be in (50, 100], got {percentile}")
    if activations not in ACTIVATIONS:
        raise StreamingQuantizeError(
            f"activations must be one of {', '.join(ACTIVATIONS)}, got {activations!r}"
        )
    shapes = read_shapes(fp32_model)
    if not chunks:
        raise StreamingQuantizeError("no calibration chunks")
    wanted: dict[str, tuple[int, ...]] = {
        FEATURES: (shapes.n_kinds, shapes.n_bands, shapes.input_frames),
        STATE: (shapes.state_size,),
    }
    for i, chunk in enumerate(chunks):
        for name, shape in wanted.items():
            if name not in chunk or chunk[name].shape[1:] != shape:
                got = chunk[name].shape if name in chunk else "nothing"
                raise StreamingQuantizeError(f"chunk {i}: {name} {got}, expected (n, *{shape})")
    check_out(fp32_model, out)
    check_excluded(fp32_model, nodes_to_exclude)
    with tempfile.TemporaryDirectory(prefix=".quantize.", dir=out.parent) as work_dir:
        work = Path(work_dir)
        quantized = work / out.name
        quantize_qdq(
            fp32_model, quantized, chunks, method=method, activations=activations, work=work,
            percentile=percentile, nodes_to_exclude=nodes_to_exclude,
        )  # fmt: skip
        model = onnx.load(str(quantized))
        compact(model.graph)
        tidied = tidy_qdq(model.graph)
        onnx.checker.check_model(model)
        onnx.save(model, str(quantized))
        problems = check_tensorrt_compat(quantized)
        if activations == "quint8":  # its zero points are no finding: not for TensorRT anyway
            problems = [p for p in problems if QDQ_ZERO_POINT_PREFIX not in p]
        if problems:
            raise OpCheckFailedError(
                f"{out.name}: {len(problems)} TensorRT 10 compatibility problem(s), "
                f"first: {problems[0]}; nothing written",
                problems,
            )
        if agreement_recordings:
            agreement = streaming_agreement(
                fp32_model, quantized, agreement_recordings, lookahead_frames=lookahead_frames,
                spec=spec,
            )  # fmt: skip
            agreement["on"] = "whole recordings, streamed"
        else:
            agreement = chunk_agreement(fp32_model, quantized, chunks)
        publish(quantized, out)
    return {
        "method": method,
        **({"percentile": percentile} if method == "percentile" else {}),
        "format": "QDQ",
        "quantized_ops": list(QUANTIZED_OPS),
        "activation_type": "int8 symmetric" if activations == "qint8" else "uint8 asymmetric",
        "weight_type": "int8 symmetric, per output channel",
        "weight_bits": WEIGHT_BITS,
        "chunks": len(chunks),
        "chunk_frames": shapes.chunk_frames,
        "seed": seed,
        "tensor_sha256": chunks_sha256(chunks),
        "nodes_excluded": list(nodes_to_exclude),
        "qdq_tidied": tidied,
        "tensorrt_compatible": activations == "qint8",
        "fp32_agreement": agreement,
    }


def first_layers(fp32_model: Path) -> list[str]:
    """The quantizable nodes reached from ``features`` through no other: the stem convolutions."""
    import onnx

    graph = onnx.load(str(fp32_model), load_external_data=False).graph
    return _first_reached(graph, FEATURES, QUANTIZED_OPS)


def check_excluded(fp32_model: Path, names: Sequence[str]) -> None:
    """Every name must be a quantizable node: onnxruntime ignores an unknown name, so a typo
    would quantize the layer one meant to keep."""
    if not names:
        return
    import onnx

    graph = onnx.load(str(fp32_model), load_external_data=False).graph
    quantizable = [n.name for n in graph.node if n.op_type in QUANTIZED_OPS]
    unknown = [name for name in names if name not in quantizable]
    if unknown:
        shown = ", ".join(quantizable[:3] + ["…"] * (len(quantizable) > 3))
        raise StreamingQuantizeError(
            f"--exclude {unknown[0]}: no {'/'.join(QUANTIZED_OPS)} node of that name in "
            f"{fp32_model.name} ({len(quantizable)} there: {shown})"
        )


def check_out(fp32_model: Path, out: Path) -> None:
    if out.resolve() == fp32_model.resolve():
        raise StreamingQuantizeError(f"{out}: would overwrite the fp32 model")
    if not out.parent.is_dir():
        raise StreamingQuantizeError(f"{out}: folder {out.parent} not found")


def chunk_agreement(
    fp32: Path, int8: Path, chunks: Sequence[dict[str, np.ndarray]]
) -> dict[str, Any]:
    feed = {name: np.concatenate([c[name] for c in chunks]) for name in (FEATURES, STATE)}
    (a,) = ort_session(fp32).run([PROBS], feed)
    (b,) = ort_session(int8).run([PROBS], feed)
    return {
        "on": "calibration chunks",
        "chunks": len(chunks),
        "max_abs_prob_diff": float(np.abs(a - b).max()),
        "prob_correlation": _correlation(a, b),
    }


@dataclass(frozen=True)
class FolderInfo:
    spec: FeatureSpec
    kinds: tuple[str, ...]
    lookahead_frames: int
    source: str  # where this came from


def folder_info(model: Path, shapes: StreamingShapes) -> FolderInfo:
    manifest = model.parent / "manifest.json"
    if not manifest.is_file():
        kinds = FEATURE_KINDS[: shapes.n_kinds]
        return FolderInfo(FeatureSpec(), kinds, 0, "defaults (no manifest.json beside the model)")
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        spec = FeatureSpec.from_dict(data["feature_spec"], source=f"{manifest} feature_spec")
        kinds = tuple(data["kinds"])
        lookahead = int(data.get("streaming", {}).get("lookahead_frames", 0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StreamingQuantizeError(f"{manifest}: cannot read it ({exc})") from None
    return FolderInfo(spec, kinds, lookahead, str(manifest))


def load_calibration_audio(
    calib_dir: Path, info: FolderInfo, shapes: StreamingShapes, max_files: int, seed: int
) -> tuple[list[np.ndarray], int]:
    """Features (K, F, T) of a seeded sample of at most ``max_files`` files; how many were found."""
    from edge.audio import audio_files_under
    from training.data.features import FeatureStore

    if max_files < 1:
        raise StreamingQuantizeError(f"--max-files must be an integer >= 1, got {max_files}")
    if info.spec.n_bands != shapes.n_bands or len(info.kinds) != shapes.n_kinds:
        raise StreamingQuantizeError(
            f"{info.source}: {len(info.kinds)} kinds of {info.spec.n_bands} bands, the model "
            f"takes {shapes.n_kinds} of {shapes.n_bands}"
        )
    if not calib_dir.is_dir():
        raise StreamingQuantizeError(f"--calib-dir {calib_dir}: not a directory")
    found = audio_files_under(calib_dir)
    if not found:
        raise StreamingQuantizeError(
            f"--calib-dir {calib_dir}: no .wav or .flac files found (recursively)"
        )
    store = FeatureStore(info.spec, info.kinds, cache_dir=None, memory_items=0)
    try:
        return [store.features(path) for path in _sample(found, max_files, seed)], len(found)
    except LungwatchError as exc:
        raise StreamingQuantizeError(f"--calib-dir {calib_dir}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    prog = "lungwatch quantize"
    parser = ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="FP32 streaming ONNX")
    parser.add_argument("--out", type=Path, required=True, help="INT8 ONNX to write")
    parser.add_argument("--calib-dir", type=Path, required=True, help="folder of .wav/.flac")
    parser.add_argument("--max-files", type=int, default=DEFAULT_MAX_FILES, help="audio files")
    parser.add_argument("--max-chunks", type=int, default=DEFAULT_MAX_CHUNKS, help="chunks")
    parser.add_argument("--seed", type=int, default=0, help="seed of the file and chunk samples")
    parser.add_argument(
        "--method", choices=METHODS, default=DEFAULT_METHOD,
        help="how calibration picks each activation's range",
    )  # fmt: skip
    parser.add_argument(
        "--percentile", type=float, default=DEFAULT_PERCENTILE, help="of |x|, --method percentile"
    )
    parser.add_argument(
        "--activations", choices=ACTIVATIONS, default=DEFAULT_ACTIVATIONS,
        help="the activations' integer type (qint8: what TensorRT takes)",
    )  # fmt: skip
    parser.add_argument(
        "--exclude", action="append", default=[], metavar="NODE",
        help="an ONNX node name kept in float (repeatable), e.g. /model/head/Conv",
    )  # fmt: skip
    parser.add_argument(
        "--keep-first", action="store_true",
        help="keep each kind's first convolution (the stem's) in float",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        if args.max_chunks < 1:
            raise StreamingQuantizeError(
                f"--max-chunks must be an integer >= 1, got {args.max_chunks}"
            )
        shapes = read_shapes(args.model)
        check_out(args.model, args.out)
        if args.keep_first:  # the file reads as a streaming model: find its first layers
            args.exclude = [*args.exclude, *first_layers(args.model)]
        info = folder_info(args.model, shapes)
        recordings, n_files = load_calibration_audio(
            args.calib_dir, info, shapes, args.max_files, args.seed
        )
        chunks = calibration_chunks(args.model, recordings, args.max_chunks, args.seed)
        record = quantize_model(
            args.model, args.out, chunks, method=args.method, percentile=args.percentile,
            activations=args.activations,
            seed=args.seed, agreement_recordings=recordings[:AGREEMENT_RECORDINGS],
            lookahead_frames=info.lookahead_frames, nodes_to_exclude=args.exclude, spec=info.spec,
        )  # fmt: skip
    except LungwatchError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    agree = record["fp32_agreement"]
    print(
        f"calibration: {record['chunks']} chunks from {len(recordings)}/{n_files} files in "
        f"{args.calib_dir} ({info.source}; seed {args.seed}, {record['method']}, "
        f"sha256 {record['tensor_sha256'][:12]}…)"
    )
    trt = "no problems found" if record["tensorrt_compatible"] else "not for TensorRT (uint8)"
    print(f"activations {record['activation_type']}, weights {record['weight_bits']} bits; {trt}")
    print(
        f"quantized vs fp32 over {agree['recordings']} streamed calibration recordings: prob "
        f"correlation {_number(agree['prob_correlation'], '.4f')}, |diff| mean "
        f"{agree['mean_abs_prob_diff']:.4f} max {agree['max_abs_prob_diff']:.3f}; events fp32 "
        f"{agree['events_fp32']}, quantized {agree['events_int8']}, matched by the other "
        f"{_number(agree['fp32_events_matched'], '.3f')} / "
        f"{_number(agree['int8_events_matched'], '.3f')}"
    )
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    manifest = args.out.parent / MANIFEST_NAME
    if manifest.is_file() and args.model.resolve().parent == args.out.resolve().parent:
        source = {"source": args.model.name, "source_sha256": sha256_file(args.model)}
        sample = {"dir": str(args.calib_dir), "files": len(recordings), "files_found": n_files}
        extra = {**source, "calibration": {**record, **sample}}  # files: the sample calibrated on
        try:
            record_artifact(manifest, args.out, precision="int8", extra=extra)
        except LungwatchError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 1
        print(f"recorded {args.out.name} in {manifest}")
    return 0


def _number(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


if __name__ == "__main__":
    sys.exit(main())
