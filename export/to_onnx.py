"""``lungwatch export``: a checkpoint -> a model folder the device runs (manifest schema 2).

Reads nothing but the checkpoint; writes ``model.pt`` (a copy), ``model.onnx`` and
``manifest.json`` in ``--out``. The graph's I/O, its fixed shapes and the parity check it
must pass: docs/export.md, "The streaming graph".
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import platform
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference.manifest import SCHEMA_VERSION, load_manifest, sha256_file
from edge.inference.manifest_write import file_entry, utc_now, write_manifest
from lungwatch.cli import ArgumentParser
from lungwatch.errors import LungwatchError

FEATURES, STATE, PROBS, STATE_OUT = "features", "state", "probs", "state_out"
DEFAULT_OPSET = 17
DEFAULT_CHUNK_FRAMES = 12  # 0.48 s of output per call (docs/models/sed.md, latency)
PARITY_TOLERANCE = 1e-4  # max |p_onnx_chunked - p_torch_whole|, probabilities
PARITY_CHUNKS = 25  # chunks of random input streamed in the parity check
MODEL_ID_HASH_CHARS = 12
# the packages (import and distribution names alike) whose versions are recorded in "tools"
TOOL_PACKAGES = ("numpy", "scipy", "numba", "soundfile", "torch", "onnx", "onnxruntime", "tensorrt")


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for module in TOOL_PACKAGES:
        if importlib.util.find_spec(module) is not None:
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                versions[module] = importlib.metadata.version(module)
    return versions


class ExportError(LungwatchError):
    """The checkpoint cannot be exported (the message says why)."""


def export_graph(
    model: Any, path: Path, chunk_frames: int, opset: int = DEFAULT_OPSET
) -> dict[str, Any]:
    """Write the streaming graph of the SedNet ``model`` to ``path``; returns the manifest's I/O."""
    import torch

    from training.models.sed import StreamingSed

    if chunk_frames < 1:
        raise ExportError(f"chunk_frames must be >= 1, got {chunk_frames}")
    config = model.config
    model = model.eval()
    features = torch.zeros(1, config.n_kinds, config.n_bands, chunk_frames * config.stride)
    state = model.initial_state(1)
    batch = {0: "batch"}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
        try:
            torch.onnx.export(
                StreamingSed(model).eval(),
                (features, state),
                str(path),
                input_names=[FEATURES, STATE],
                output_names=[PROBS, STATE_OUT],
                dynamic_axes={FEATURES: batch, STATE: batch, PROBS: batch, STATE_OUT: batch},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except (RuntimeError, ValueError) as exc:
            raise ExportError(f"streaming export at opset {opset} failed: {exc}") from None
    _declare_static_outputs(path, [[config.n_outputs, chunk_frames], [model.state_size]])
    return {
        "inputs": {FEATURES: list(features.shape[1:]), STATE: [model.state_size]},
        "outputs": {PROBS: [config.n_outputs, chunk_frames], STATE_OUT: [model.state_size]},
    }


def _declare_static_outputs(path: Path, dims: list[list[int]]) -> None:
    """Pin the outputs' non-batch sizes: the exporter leaves them symbolic, the chunk fixes them."""
    import onnx

    graph_model = onnx.load(str(path))
    for output, sizes in zip(graph_model.graph.output, dims, strict=True):
        shape = output.type.tensor_type.shape.dim
        for dim, size in zip(list(shape)[1:], sizes, strict=True):
            dim.ClearField("dim_param")
            dim.dim_value = size
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, str(path))


def parity(model: Any, onnx_path: Path, chunk_frames: int, seed: int = 0) -> dict[str, Any]:
    """Max |p| difference between ONNX Runtime chunk by chunk and the PyTorch whole pass."""
    import onnxruntime as ort
    import torch

    config = model.config
    t = chunk_frames * config.stride
    rng = np.random.default_rng(seed)
    mean = model.input_mean.numpy()[None, :, :, None]
    std = model.input_std.numpy()[None, :, :, None]
    x = mean + std * rng.standard_normal((1, config.n_kinds, config.n_bands, t * PARITY_CHUNKS))
    x = x.astype(np.float32)
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(x))
    whole = torch.sigmoid(logits).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    state = np.zeros((1, model.state_size), np.float32)
    parts = []
    for c in range(PARITY_CHUNKS):
        probs, state = session.run(None, {FEATURES: x[..., c * t : (c + 1) * t], STATE: state})
        parts.append(probs)
    diff = float(np.abs(np.concatenate(parts, axis=2) - whole).max())
    return {
        "reference": "torch whole pass",
        "chunks": PARITY_CHUNKS,
        "max_abs_prob_diff": diff,
        "ok": diff <= PARITY_TOLERANCE,
    }


def export_folder(
    checkpoint: Path,
    out: Path,
    chunk_frames: int = DEFAULT_CHUNK_FRAMES,
    opset: int = DEFAULT_OPSET,
) -> Path:
    from export.opcheck import check_tensorrt_compat
    from training.models.checkpoint import CheckpointError, load_checkpoint
    from training.models.sed import count_parameters

    try:
        ckpt = load_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    model = ckpt.model
    out.mkdir(parents=True, exist_ok=True)
    pt = out / "model.pt"
    if Path(checkpoint).resolve() != pt.resolve():
        shutil.copyfile(checkpoint, pt)
    onnx_path = out / "model.onnx"
    io = export_graph(model, onnx_path, chunk_frames, opset)
    problems = check_tensorrt_compat(onnx_path)
    if problems:
        raise ExportError(f"{onnx_path}: not TensorRT 10 ready: {problems[0]}")
    check = parity(model, onnx_path, chunk_frames)
    if not check["ok"]:
        raise ExportError(
            f"{onnx_path}: chunked ONNX differs from the PyTorch pass by "
            f"{check['max_abs_prob_diff']:.2e} > {PARITY_TOLERANCE}"
        )
    sha = sha256_file(pt)
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "model_id": f"{ckpt.name}-{sha[:MODEL_ID_HASH_CHARS]}",
        "created_utc": utc_now(),
        "checkpoint": {"file": pt.name, "sha256": sha, "epoch": ckpt.epoch},
        "files": {
            onnx_path.name: file_entry(onnx_path, "fp32", {"source": pt.name, "parity": check})
        },
        "onnx": {"opset": opset, **io},
        "streaming": {
            "chunk_frames": chunk_frames,
            "stride": model.config.stride,
            "lookahead_frames": model.config.lookahead_frames,
            "state_size": model.state_size,
            "flush": ckpt.mean.tolist(),  # (K, F): the training mean
        },
        "feature_spec": ckpt.spec.to_dict(),
        "kinds": list(ckpt.kinds),
        "outputs": list(ckpt.outputs),
        "parameters": count_parameters(model),
        "tools": tool_versions(),
    }
    if ckpt.detector is not None:
        data["detector"] = dict(ckpt.detector)
    if ckpt.quality is not None:
        data["quality"] = dict(ckpt.quality)
    manifest = out / "manifest.json"
    write_manifest(manifest, data)
    load_manifest(manifest)  # what the device will read must load
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch export", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True, help="from lungwatch train")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument(
        "--chunk-frames", type=int, default=DEFAULT_CHUNK_FRAMES, help="outputs per call"
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help="the ONNX opset to export with"
    )
    args = parser.parse_args(argv)
    manifest = export_folder(args.checkpoint, args.out, args.chunk_frames, args.opset)
    print(f"wrote {manifest.parent / 'model.onnx'} and {manifest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
