"""``lungwatch quantize``: model.onnx -> explicit Q/DQ INT8 ONNX for TensorRT, calibrated on audio.

    lungwatch quantize models/edge/model.onnx --calib ../shared/data/sprsound/train \\
        --out models/edge/model.int8.onnx [--max-windows 512] [--seed 0] \\
        [--method percentile|minmax|entropy]

Format (what TensorRT's explicit quantization reads): QuantizeLinear/DequantizeLinear pairs in
the standard ONNX domain, signed int8 activations and weights, both symmetric (zero point 0),
weights per output channel (a 1-D scale and an ``axis`` on each weight DequantizeLinear) in
7 bits (|q| <= 64, see :data:`WEIGHT_BITS`), biases left in float. Only the inputs of Conv,
MatMul and Gemm are quantized (the compute heavy ops); softmax, layer norm and the input
normalisation stay in float, and TensorRT fuses the Q/DQ pairs into its int8 kernels.

Calibration windows come from real audio, computed exactly as in training: every .wav/.flac
under ``--calib`` (recursively, sorted) is read with :func:`edge.audio.read_audio` at the
manifest's sample rate and turned into per-kind features by :func:`edge.features.extract`
(:class:`training.features_cache.FeatureStore`), cut into ``window_frames`` windows with a
stride of ``window_frames``; a seeded sample of at most ``--max-windows`` windows is used.
The manifest records the folder, file and window counts, the sha256 of the calibration tensor
and the method. The result must pass :mod:`export.opcheck`, or nothing is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.audio import audio_files_under
from edge.errors import LungwatchError
from edge.manifest import INPUT_NAME, MANIFEST_NAME, OUTPUT_NAME, Manifest
from firmware_bridge.cliparse import ArgumentParser

METHODS = ("minmax", "percentile", "entropy")
DEFAULT_METHOD = "percentile"  # 99.999th percentile of |x|: best held-out fidelity measured
ENTROPY_NOTE = (
    "note: quantize_static builds the entropy histograms with 128 bins for 128 quantized "
    "bins, so its KL search has one candidate and the ranges equal min/max"
)
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]
# Weights use 7 of the 8 bits (onnxruntime's reduce_range). On x86 CPUs without VNNI (AVX2,
# AVX-512 without VNNI) onnxruntime's int8 kernels multiply with VPMADDUBSW, which adds two
# uint8 x int8 products into an int16 and saturates when |w| > 64: with 8-bit weights the
# INT8 logits of a test model correlated 0.92 with FP32 on an emulated Haswell and 0.9995 on a
# VNNI CPU. 7-bit weights keep every pair under 2**15 on every CPU (255 * 64 * 2 < 32767) and
# cost no measurable fidelity here; TensorRT reads the same Q/DQ graph (int8 type, smaller
# values). tests/export/test_quantize.py checks the bound and the emulated-CPU agreement.
WEIGHT_BITS = 7
DEFAULT_MAX_WINDOWS = 512
CALIB_BATCH_WINDOWS = 32
AGREEMENT_WINDOWS = 128  # fp32 vs int8 check on the first calibration windows


class QuantizeError(LungwatchError):
    """Quantization cannot run (options, inputs) or its result is not usable."""


class OpCheckFailedError(QuantizeError):
    """The quantized model has TensorRT compatibility problems; ``problems`` lists them."""

    def __init__(self, message: str, problems: list[str]) -> None:
        super().__init__(message)
        self.problems = problems


@dataclass(frozen=True)
class Calibration:
    """Calibration windows ``(n, K, F, T)`` float32 and where they came from."""

    windows: np.ndarray
    calib_dir: Path
    n_files: int  # audio files found
    n_files_used: int  # files the sampled windows come from
    n_candidates: int  # windows available before sampling
    seed: int

    @property
    def sha256(self) -> str:
        """sha256 of the C-ordered float32 bytes of :attr:`windows`."""
        return hashlib.sha256(np.ascontiguousarray(self.windows).tobytes()).hexdigest()

    def record(self, method: str) -> dict[str, Any]:
        """The manifest's ``calibration`` section."""
        return {
            "dir": str(self.calib_dir),
            "files": self.n_files,
            "files_used": self.n_files_used,
            "windows_available": self.n_candidates,
            "windows": int(self.windows.shape[0]),
            "seed": self.seed,
            "window_stride_frames": int(self.windows.shape[-1]),
            "tensor_sha256": self.sha256,
            "method": method,
            "weight_bits": WEIGHT_BITS,
        }


def find_audio(calib_dir: Path) -> list[Path]:
    """Every .wav/.flac file under ``calib_dir``, recursively, sorted."""
    if not calib_dir.is_dir():
        raise QuantizeError(f"--calib {calib_dir}: not a directory")
    files = audio_files_under(calib_dir)
    if not files:
        raise QuantizeError(f"--calib {calib_dir}: no .wav or .flac files found (recursively)")
    return files


def candidate_windows(counts: list[int], window_frames: int) -> list[tuple[int, int]]:
    """``(file index, start frame)`` of every whole window, stride ``window_frames``."""
    return [
        (index, start)
        for index, n_frames in enumerate(counts)
        for start in range(0, n_frames - window_frames + 1, window_frames)
    ]


def sample_windows(
    candidates: list[tuple[int, int]], max_windows: int, seed: int
) -> list[tuple[int, int]]:
    """A seeded sample of at most ``max_windows`` candidates, in (file, start) order."""
    if len(candidates) <= max_windows:
        return list(candidates)
    chosen = np.random.default_rng(seed).choice(len(candidates), size=max_windows, replace=False)
    return [candidates[i] for i in np.sort(chosen)]


def calibration_set(
    calib_dir: Path, manifest: Manifest, max_windows: int, seed: int
) -> Calibration:
    """The calibration windows of ``calib_dir`` for the manifest's feature spec and kinds."""
    from training.features_cache import FeatureStore

    files = find_audio(calib_dir)
    store = FeatureStore(manifest.feature_spec, manifest.kinds, cache_dir=None, memory_items=1)
    window_frames = manifest.window_frames
    candidates = candidate_windows([store.n_frames(p) for p in files], window_frames)
    if not candidates:
        raise QuantizeError(
            f"--calib {calib_dir}: no file is long enough for one window of {window_frames} frames"
        )
    chosen = sample_windows(candidates, max_windows, seed)
    windows = np.empty((len(chosen), *manifest.input_shape), dtype=np.float32)
    for row, (index, start) in enumerate(chosen):
        features = store.features(files[index])
        if features.shape[-1] < start + window_frames:
            raise QuantizeError(f"{files[index]}: fewer frames than its header promised")
        windows[row] = features[..., start : start + window_frames]
    used = len({index for index, _ in chosen})
    return Calibration(windows, calib_dir, len(files), used, len(candidates), seed)


def make_reader(windows: np.ndarray) -> Any:
    """An onnxruntime CalibrationDataReader over ``windows`` in batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class WindowReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = iter(
                windows[i : i + CALIB_BATCH_WINDOWS]
                for i in range(0, windows.shape[0], CALIB_BATCH_WINDOWS)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    return WindowReader()


def static_qdq(
    source: Path,
    out: Path,
    reader: Any,
    method: str,
    work: Path,
    *,
    signed: bool = True,
    nodes_to_exclude: Sequence[str] = (),
    extra_options: dict[str, Any] | None = None,
) -> None:
    """quant_pre_process into ``work``, then static Q/DQ quantization of :data:`QUANTIZED_OPS`
    into ``out`` with the calibration data of ``reader``: per-channel 7-bit symmetric weights,
    float biases, int8 symmetric activations (``signed``; else uint8 asymmetric), plus
    ``extra_options`` for onnxruntime's quantizer. Shared by both quantizers."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = work / "prepared.onnx"
    quant_pre_process(str(source), str(prepared))
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    with contextlib.redirect_stdout(io.StringIO()):  # histogram calibrators print progress
        quantize_static(
            str(prepared),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True,
            reduce_range=True,  # WEIGHT_BITS = 7 (weights only)
            activation_type=QuantType.QInt8 if signed else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            nodes_to_exclude=list(nodes_to_exclude),
            extra_options={
                "ActivationSymmetric": signed,
                "WeightSymmetric": True,
                "QuantizeBias": False,  # TensorRT takes float biases
                **(extra_options or {}),
            },
        )


def quantize_qdq(source: Path, out: Path, windows: np.ndarray, method: str, work: Path) -> None:
    """quant_pre_process into ``work``, then static Q/DQ INT8 quantization into ``out``."""
    static_qdq(source, out, make_reader(windows), method, work)


def agreement(fp32: Path, int8: Path, windows: np.ndarray) -> dict[str, float | int]:
    """How the int8 model's logits track the fp32 model's on calibration windows."""
    from export.to_onnx import ort_session

    x = windows[:AGREEMENT_WINDOWS]
    (ref,) = ort_session(fp32).run([OUTPUT_NAME], {INPUT_NAME: x})
    (got,) = ort_session(int8).run([OUTPUT_NAME], {INPUT_NAME: x})
    logit_range = float(ref.max() - ref.min()) or 1.0
    return {
        "windows": int(x.shape[0]),
        "top1_agreement": float(np.mean(ref.argmax(1) == got.argmax(1))),
        "logit_correlation": float(np.corrcoef(ref.ravel(), got.ravel())[0, 1]),
        "max_abs_diff_over_range": float(np.max(np.abs(ref - got)) / logit_range),
    }


def check_options(model: Path, out: Path, max_windows: int, method: str) -> Path:
    """Validate the options; returns the manifest path beside ``model``."""
    if max_windows < 1:
        raise QuantizeError(f"--max-windows must be an integer >= 1, got {max_windows}")
    if method not in METHODS:
        raise QuantizeError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if not model.is_file():
        raise QuantizeError(f"{model}: model not found")
    manifest = model.parent / MANIFEST_NAME
    if not manifest.is_file():
        raise QuantizeError(
            f"{model}: no {MANIFEST_NAME} beside it; export it with `lungwatch export` first"
        )
    if out.resolve() == model.resolve():
        raise QuantizeError(f"--out {out}: would overwrite the fp32 model")
    if out.resolve().parent != model.resolve().parent:
        raise QuantizeError(
            f"--out {out}: must be in the model's folder {model.parent} "
            f"(one {MANIFEST_NAME} covers one model folder)"
        )
    return manifest


def quantize_model(
    model: Path,
    calib_dir: Path,
    out: Path,
    *,
    max_windows: int = DEFAULT_MAX_WINDOWS,
    seed: int = 0,
    method: str = DEFAULT_METHOD,
) -> dict[str, Any]:
    """Quantize, check, write ``out`` and record it; returns the calibration record.

    Raises:
        QuantizeError: bad options, no audio, no manifest; OpCheckFailedError if the result
            has TensorRT problems (then nothing is written).
        ManifestError: the manifest is invalid or ``model`` does not match it.
    """
    from edge.manifest import load_manifest, verify_file
    from export.manifest import record_artifact, set_section, tool_versions

    model, calib_dir, out = Path(model), Path(calib_dir), Path(out)
    manifest_path = check_options(model, out, max_windows, method)
    manifest = load_manifest(manifest_path)
    source_entry = verify_file(manifest, model)
    calibration = calibration_set(calib_dir, manifest, max_windows, seed)
    record = calibration.record(method)
    record["fp32_agreement"] = quantize_checked(model, out, calibration.windows, method)
    extra = {"source": model.name, "source_sha256": source_entry.sha256, "method": method}
    record_artifact(manifest_path, out, precision="int8", extra=extra)
    set_section(manifest_path, "calibration", record)
    set_section(manifest_path, "tools", {**manifest.raw.get("tools", {}), **tool_versions()})
    return record


# Tensor names the quantizer derives from the FP32 names (e.g. "/inner/.../Conv_output_0_scale");
# they are replaced by short ids. The FP32 layer and tensor names are kept.
GENERATED_NAME = re.compile(
    r"(_zero_point|_scale|_quantized|_QuantizeLinear_Output|_DequantizeLinear_Output)$"
)


def compact(path: Path) -> None:
    """Rewrite ``path`` smaller without changing what it computes: shorten the quantizer's
    generated tensor names, drop Q/DQ node names and the shape-inference ``value_info`` that
    ``quant_pre_process`` added (the FP32 export has none; runtimes infer shapes)."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    ids: dict[str, str] = {}

    def short(name: str) -> str:
        if not GENERATED_NAME.search(name):
            return name
        return ids.setdefault(name, f"q{len(ids):x}")

    for node in graph.node:
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            node.name = ""
    for initializer in graph.initializer:
        initializer.name = short(initializer.name)
    del graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def quantize_checked(model: Path, out: Path, windows: np.ndarray, method: str) -> dict[str, Any]:
    """Quantize in a temporary folder beside ``out``; publish only if opcheck finds nothing.

    Returns:
        The fp32 vs int8 agreement on the first calibration windows.
    """
    from export.manifest import publish
    from export.opcheck import check_tensorrt_compat

    with tempfile.TemporaryDirectory(prefix=".quantize.", dir=out.parent) as work_dir:
        work = Path(work_dir)
        quantized = work / out.name
        quantize_qdq(model, quantized, windows, method, work)
        compact(quantized)
        problems = check_tensorrt_compat(quantized)
        if problems:
            raise OpCheckFailedError(
                f"{out.name}: {len(problems)} TensorRT 10 compatibility problem(s), "
                f"first: {problems[0]}; nothing written",
                problems,
            )
        result = agreement(model, quantized, windows)
        publish(quantized, out)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch quantize", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="fp32 ONNX from `lungwatch export`")
    parser.add_argument("--calib", type=Path, required=True, help="folder of .wav/.flac audio")
    parser.add_argument("--out", type=Path, required=True, help="INT8 ONNX to write")
    parser.add_argument(
        "--max-windows", type=int, default=DEFAULT_MAX_WINDOWS, help="calibration windows, at most"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the window sample")
    parser.add_argument(
        "--method", choices=METHODS, default=DEFAULT_METHOD, help=f"default {DEFAULT_METHOD}"
    )
    args = parser.parse_args(argv)
    if args.method == "entropy":
        print(ENTROPY_NOTE)
    try:
        record = quantize_model(
            args.model,
            args.calib,
            args.out,
            max_windows=args.max_windows,
            seed=args.seed,
            method=args.method,
        )
    except OpCheckFailedError as exc:
        print("opcheck (TensorRT 10) findings:")
        print("\n".join(f"  - {p}" for p in exc.problems))
        raise
    print_summary(args.out, record)
    return 0


def print_summary(out: Path, record: dict[str, Any]) -> None:
    agree = record["fp32_agreement"]
    print(
        f"calibration: {record['windows']} windows of {record['windows_available']} from "
        f"{record['files_used']}/{record['files']} files in {record['dir']} "
        f"(seed {record['seed']}, {record['method']}, sha256 {record['tensor_sha256'][:12]}…)"
    )
    print("opcheck (TensorRT 10): no problems found")
    print(
        f"int8 vs fp32 on {agree['windows']} calibration windows: top-1 agreement "
        f"{agree['top1_agreement']:.3f}, logit correlation {agree['logit_correlation']:.4f}"
    )
    print(f"wrote {out} ({out.stat().st_size:,} bytes); recorded in {out.parent / MANIFEST_NAME}")
