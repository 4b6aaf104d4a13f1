"""Q/DQ ONNX -> TensorRT engine (TensorRT 10 or 11), built on the device that will run it:
engines are specific to one GPU and one TensorRT version. Options, the two build paths
(``tensorrt`` module or ``trtexec``), TensorRT 11's strong typing and the manifest record:
docs/backends.md, "Native TensorRT"."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.inference.base import INPUT_NAME, STATE_NAME
from edge.inference.manifest import MANIFEST_NAME, sha256_file
from edge.inference.manifest_write import record_artifact
from edge.inference.tensorrt import import_cudart, normalize_trt_version
from lungwatch.cli import ArgumentParser
from lungwatch.errors import LungwatchError

PRECISIONS = ("fp16", "int8", "best")
BUILDER_FLAGS = {"fp16": ("FP16",), "int8": ("INT8",), "best": ("FP16", "INT8")}
TRTEXEC_FLAGS = {"fp16": "--fp16", "int8": "--int8", "best": "--best"}
# TensorRT 11 removed weak typing (BuilderFlag.FP16/INT8, trtexec --fp16/--int8/--best).
STRONGLY_TYPED_MAJOR = 11
TIMING_CACHE_NAME = "timing.cache"
# Where JetPack installs trtexec (not on PATH by default).
TRTEXEC_LOCATIONS: tuple[str, ...] = ("/usr/src/tensorrt/bin/trtexec",)
NO_TENSORRT = (
    "no TensorRT here: install JetPack's TensorRT Python bindings (python3-libnvinfer) or "
    "put trtexec on PATH; engines must be built on the target device itself"
)


class EngineBuildError(LungwatchError):
    """The engine cannot be built (the message says why and what to do)."""


@dataclass(frozen=True)
class BuildPlan:
    """Everything one engine build needs; shapes are without the batch."""

    onnx_path: Path
    out: Path
    precision: str
    input_shape: tuple[int, int, int]
    state_size: int
    timing_cache: Path
    max_batch: int = 64
    opt_batch: int = 16
    workspace_mib: int = 1024

    def profiles(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        shapes = {INPUT_NAME: self.input_shape, STATE_NAME: (self.state_size,)}
        return {
            name: profile_shapes(shape, self.max_batch, self.opt_batch)
            for name, shape in shapes.items()
        }


def _static_dims(onnx_path: Path, name: str, rank: int, layout: str) -> list[int]:
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        raise EngineBuildError(
            "reading the ONNX input shape needs onnx: pip install onnx"
        ) from None
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except (OSError, DecodeError) as exc:
        raise EngineBuildError(f"{onnx_path}: cannot read the ONNX model ({exc})") from None
    inputs = {i.name: i for i in model.graph.input}
    if name not in inputs:
        raise EngineBuildError(f"{onnx_path}: no input {name!r} (inputs: {list(inputs)})")
    dims = inputs[name].type.tensor_type.shape.dim
    values = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    batch_dynamic = len(values) == rank and values[0] in (None, 0)
    if not batch_dynamic or not all(v and v > 0 for v in values[1:]):
        shown = [v if v else (d.dim_param or "?") for v, d in zip(values, dims, strict=True)]
        raise EngineBuildError(
            f"{onnx_path}: input {name!r} must be {layout} with only the batch dynamic, got {shown}"
        )
    return [int(v or 0) for v in values[1:]]


def read_input_shape(onnx_path: Path) -> tuple[int, int, int]:
    k, b, t = _static_dims(onnx_path, INPUT_NAME, 4, "(batch, K, B, T)")
    return k, b, t


def read_state_size(onnx_path: Path) -> int:
    (size,) = _static_dims(onnx_path, STATE_NAME, 2, "(batch, S)")
    return size


def timing_cache_path(out: Path, given: Path | None = None) -> Path:
    """``given``, or ``timing.cache`` beside the engine (shared by builds on this device)."""
    return Path(given) if given is not None else Path(out).parent / TIMING_CACHE_NAME


def profile_shapes(
    input_shape: tuple[int, ...], max_batch: int, opt_batch: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    return (1, *input_shape), (opt_batch, *input_shape), (max_batch, *input_shape)


def shapes_spec(profiles: Mapping[str, tuple[tuple[int, ...], ...]], which: int) -> str:
    """trtexec's syntax for every input at profile end ``which`` (0 min, 1 opt, 2 max)."""
    return ",".join(f"{name}:" + "x".join(map(str, s[which])) for name, s in profiles.items())


def strongly_typed(tensorrt_version: str | None) -> bool:
    if tensorrt_version is None:
        return False
    return int(normalize_trt_version(tensorrt_version).split(".")[0]) >= STRONGLY_TYPED_MAJOR


def check_precision(precision: str, tensorrt_version: str | None) -> None:
    if precision != "int8" and strongly_typed(tensorrt_version):
        raise EngineBuildError(
            f"--precision {precision}: TensorRT {tensorrt_version} builds strongly typed "
            "networks only (its FP16 and INT8 builder flags are gone), so FP16 would have to be "
            "in the ONNX itself; build the Q/DQ model with --precision int8 (INT8 where the "
            "graph quantizes, FP32 elsewhere), or use TensorRT 10"
        )


def builder_flags(precision: str, tensorrt_version: str | None) -> tuple[str, ...]:
    check_precision(precision, tensorrt_version)
    return () if strongly_typed(tensorrt_version) else BUILDER_FLAGS[precision]


def trtexec_argv(
    plan: BuildPlan,
    engine_path: Path,
    trtexec: str = "trtexec",
    tensorrt_version: str | None = None,
) -> list[str]:
    check_precision(plan.precision, tensorrt_version)
    profiles = plan.profiles()
    precision = [] if strongly_typed(tensorrt_version) else [TRTEXEC_FLAGS[plan.precision]]
    return [
        trtexec,
        f"--onnx={plan.onnx_path}",
        f"--saveEngine={engine_path}",
        *precision,
        f"--minShapes={shapes_spec(profiles, 0)}",
        f"--optShapes={shapes_spec(profiles, 1)}",
        f"--maxShapes={shapes_spec(profiles, 2)}",
        f"--timingCacheFile={plan.timing_cache}",
        f"--memPoolSize=workspace:{plan.workspace_mib}M",
        "--skipInference",
    ]


def parse_trtexec_version(text: str) -> str | None:
    """TensorRT version from trtexec output (``TensorRT version: 10.3.0`` or ``v100300``)."""
    match = re.search(r"TensorRT version:\s*(\d+)\.(\d+)\.(\d+)", text)
    if match:
        return ".".join(match.groups())
    match = re.search(r"\[TensorRT v(\d+)\]", text)
    if not match:
        return None
    code = int(match.group(1))
    if code >= 100000:  # TensorRT 10+: major * 10000 + minor * 100 + patch
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return f"{code // 1000}.{code // 100 % 10}.{code % 100}"  # TensorRT 8.x


def trtexec_version(trtexec: str, timeout_s: float = 60.0) -> str | None:
    try:
        result = subprocess.run(
            [trtexec, "--help"], capture_output=True, text=True, check=False, timeout=timeout_s
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineBuildError(f"{trtexec}: cannot run trtexec --help ({exc})") from None
    return parse_trtexec_version((result.stdout or "") + (result.stderr or ""))


def find_trtexec() -> str | None:
    found = shutil.which("trtexec")
    if found:
        return found
    return next((p for p in TRTEXEC_LOCATIONS if os.access(p, os.X_OK)), None)


def choose_builder(has_tensorrt: bool, trtexec: str | None, use_trtexec: bool) -> str:
    if use_trtexec:
        if trtexec is None:
            raise EngineBuildError(
                "--use-trtexec: trtexec not found on PATH or in " + ", ".join(TRTEXEC_LOCATIONS)
            )
        return "trtexec"
    if has_tensorrt:
        return "python-api"
    if trtexec is not None:
        return "trtexec"
    raise EngineBuildError(NO_TENSORRT)


def _tensorrt_module() -> Any | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt


def _atomic_write(path: Path, data: Any) -> None:
    """Write bytes (or a buffer such as IHostMemory) to ``path`` via a same-folder rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(memoryview(data))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _parse_network(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    """(network, parser); the parser owns the weights, so it must outlive the build."""
    # TensorRT 10: explicit batch is the only mode; 11: strong typing is too (flag 0 either way)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)).strip() for i in range(parser.num_errors)]
        detail = "; ".join(errors) or "no parser error reported"
        raise EngineBuildError(f"{onnx_path}: TensorRT cannot parse the ONNX model: {detail}")
    return network, parser


def _builder_config(trt: Any, builder: Any, plan: BuildPlan) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mib << 20)
    for flag in builder_flags(plan.precision, trt.__version__):
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    for name, shapes in plan.profiles().items():
        profile.set_shape(name, *shapes)
    config.add_optimization_profile(profile)
    cached = plan.timing_cache.read_bytes() if plan.timing_cache.is_file() else b""
    if not config.set_timing_cache(config.create_timing_cache(cached), False):
        print(f"lungwatch engine: ignoring timing cache {plan.timing_cache}", file=sys.stderr)
        config.set_timing_cache(config.create_timing_cache(b""), False)
    return config


def build_with_python_api(trt: Any, plan: BuildPlan) -> str:
    check_precision(plan.precision, trt.__version__)  # before the parse, which takes a while
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse_network(trt, builder, logger, plan.onnx_path)
    config = _builder_config(trt, builder, plan)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{plan.onnx_path}: TensorRT could not build an engine (log above)")
    _atomic_write(plan.out, serialized)
    _atomic_write(plan.timing_cache, config.get_timing_cache().serialize())
    return normalize_trt_version(trt.__version__)


def build_with_trtexec(trtexec: str, plan: BuildPlan) -> str | None:
    tmp = plan.out.with_name(f".{plan.out.name}.{os.getpid()}.tmp")
    argv = trtexec_argv(plan, tmp, trtexec, trtexec_version(trtexec))
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        output = (result.stdout or "") + (result.stderr or "")
        if result.returncode != 0 or not tmp.is_file():
            tail = [line.strip() for line in output.splitlines() if line.strip()][-3:]
            raise EngineBuildError(
                f"trtexec exited with {result.returncode}: " + " | ".join(tail or ["no output"])
            )
        os.replace(tmp, plan.out)
    finally:
        tmp.unlink(missing_ok=True)
    return parse_trtexec_version(output)


def device_info() -> dict[str, str] | None:
    try:
        cudart = import_cudart()
        err, prop = cudart.cudaGetDeviceProperties(0)
        if err == cudart.cudaError_t.cudaSuccess:
            raw = prop.name
            name = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            return {"name": name.strip("\x00 "), "compute_capability": f"{prop.major}.{prop.minor}"}
    except LungwatchError:
        pass
    return _nvidia_smi_device()


def _nvidia_smi_device() -> dict[str, str] | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    query = [smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"]
    try:
        result = subprocess.run(query, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""
    name, _, capability = first.rpartition(",")
    if result.returncode != 0 or not name:
        return None
    return {"name": name.strip(), "compute_capability": capability.strip()}


def engine_extra(
    plan: BuildPlan, tensorrt_version: str | None, built_with: str, device: dict[str, str] | None
) -> dict[str, Any]:
    """The manifest fields recorded for an engine (besides sha256, bytes, precision)."""
    return {
        "tensorrt_version": tensorrt_version,
        "device": device,
        "precision": plan.precision,
        "strongly_typed": strongly_typed(tensorrt_version),
        "max_batch": plan.max_batch,
        "opt_batch": plan.opt_batch,
        "source": plan.onnx_path.name,
        "source_sha256": sha256_file(plan.onnx_path),
        "built_with": built_with,
    }


def manifest_beside(out: Path) -> Path:
    manifest = Path(out).parent / MANIFEST_NAME
    if not manifest.is_file():
        raise EngineBuildError(
            f"no {MANIFEST_NAME} beside {out}: write the engine into the model folder "
            "(where `lungwatch export` wrote the manifest)"
        )
    return manifest


def record_engine(plan: BuildPlan, extra: dict[str, Any]) -> Path:
    manifest = manifest_beside(plan.out)
    record_artifact(manifest, plan.out, precision=plan.precision, extra=extra)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="lungwatch engine", description="Q/DQ ONNX -> TensorRT engine, built on this device."
    )
    parser.add_argument("onnx", type=Path, help="the (Q/DQ INT8) ONNX model")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        required=True,
        help="fp16: FP16; int8: INT8 from the Q/DQ nodes (rest FP32); best: FP16 + INT8 "
        "(TensorRT 11+: int8 only, the network is strongly typed)",
    )
    parser.add_argument("--out", type=Path, required=True, help="engine file to write (.plan)")
    parser.add_argument("--timing-cache", type=Path, default=None, help="default: beside --out")
    parser.add_argument("--max-batch", type=int, default=64, help="largest batch (default 64)")
    parser.add_argument("--opt-batch", type=int, default=16, help="batch to tune for (16)")
    parser.add_argument("--workspace-mib", type=int, default=1024, help="builder workspace")
    parser.add_argument("--use-trtexec", action="store_true", help="build with trtexec")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if not args.onnx.is_file():
            raise EngineBuildError(f"{args.onnx}: ONNX model not found")
        if not 1 <= args.opt_batch <= args.max_batch:
            raise EngineBuildError(
                f"--opt-batch must be in [1, --max-batch={args.max_batch}], got {args.opt_batch}"
            )
        if args.workspace_mib < 1:
            raise EngineBuildError(f"--workspace-mib must be >= 1, got {args.workspace_mib}")
        input_shape = read_input_shape(args.onnx)  # a bad file is named before TensorRT is
        trt = _tensorrt_module()
        trtexec = find_trtexec()
        built_with = choose_builder(trt is not None, trtexec, args.use_trtexec)
        manifest_beside(args.out)
        plan = BuildPlan(
            args.onnx,
            args.out,
            args.precision,
            input_shape,
            read_state_size(args.onnx),
            timing_cache_path(args.out, args.timing_cache),
            args.max_batch,
            args.opt_batch,
            args.workspace_mib,
        )
        start = time.perf_counter()
        version: str | None
        if built_with == "python-api":
            version = build_with_python_api(trt, plan)
        else:
            version = build_with_trtexec(str(trtexec), plan)
        seconds = time.perf_counter() - start
    except EngineBuildError as exc:
        print(f"lungwatch engine: error: {exc}", file=sys.stderr)
        return 1
    manifest = record_engine(plan, engine_extra(plan, version, built_with, device_info()))
    size_mib = plan.out.stat().st_size / 2**20
    print(
        f"wrote {plan.out} ({size_mib:.1f} MiB, {plan.precision}, TensorRT {version or '?'}, "
        f"{built_with}) in {seconds:.1f} s; recorded in {manifest}"
    )
    return 0
