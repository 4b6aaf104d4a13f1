"""Export a frame-level (SedNet) checkpoint as a streaming model folder (manifest schema 2).

    python -m export.streaming_model --checkpoint out/proto/base/best.pt --out models/sed \\
        --name sed-phase [--chunk-frames 12] [--detector fitted.json] [--opset 17]

Writes, in ``--out``: ``model.pt`` (the checkpoint, copied), ``model.onnx`` (the streaming
graph of :mod:`export.sed_onnx`, checked against the TensorRT 10 op list and against the
PyTorch whole-recording pass chunk by chunk in ONNX Runtime) and ``manifest.json``
(:mod:`edge.manifest` schema 2: I/O sizes, ``streaming``, ``outputs``, the fitted ``detector``
rules and ``quality`` thresholds when given, tools, parity). ``model.int8.onnx`` is added by
:mod:`export.quantize_streaming`.

The detector JSON (from :mod:`training.sed_calibrate`) holds ``{"thresholds": [{"type",
"on_threshold", "off_threshold", "min_event_ms", "merge_gap_ms"}, ...], "fitted_on": ...,
"validation": {...}}``; it is copied into the manifest's ``detector`` section.
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import LungwatchError
from edge.features import FEATURE_KINDS, FeatureSpec
from edge.manifest import SCHEMA_VERSION, load_manifest, sha256_file
from export.manifest import file_entry, model_id, tool_versions, utc_now, write_manifest
from firmware_bridge.cliparse import ArgumentParser

PARITY_TOLERANCE = 1e-4  # max |p_onnx_chunked - p_torch_whole|, probabilities
PARITY_CHUNKS = 25  # chunks of random input streamed in the parity check


class StreamingModelError(LungwatchError):
    """The checkpoint cannot be exported as a streaming model (the message says why)."""


def load_checkpoint(checkpoint: Path, *, held_out: bool = False) -> tuple[Any, tuple[str, ...]]:
    """The SedNet of a research-trainer checkpoint (``model``, ``config``, ``mean``, ``std``,
    ``kinds``) in eval mode, and its input kinds. A checkpoint written before ``kinds`` was
    saved used the first ``n_kinds`` of :data:`edge.features.FEATURE_KINDS`. ``held_out``:
    refuse a checkpoint trained on the validation records too (``train_on_validation``), for
    whatever fits on, is scored on or teaches from those records."""
    import torch

    from training.models.sed import SedConfig, SedNet

    if not checkpoint.is_file():
        raise StreamingModelError(f"{checkpoint}: checkpoint not found")
    try:
        data = torch.load(checkpoint, map_location="cpu", weights_only=False)
        config = dict(data["config"])
        for key in ("dilations", "kernel_widths"):
            config[key] = tuple(config[key])
        model = SedNet(SedConfig(**config))
        model.load_state_dict(data["model"])
        kinds = tuple(data.get("kinds") or FEATURE_KINDS[: model.config.n_kinds])
        trained_on_validation = bool(data.get("train_on_validation", False))
    except (
        KeyError, TypeError, RuntimeError, ValueError, OSError, EOFError, pickle.UnpicklingError,
    ) as exc:  # fmt: skip
        raise StreamingModelError(f"{checkpoint}: not a SedNet checkpoint ({exc})") from None
    if len(kinds) != model.config.n_kinds or any(k not in FEATURE_KINDS for k in kinds):
        raise StreamingModelError(
            f"{checkpoint}: kinds {list(kinds)} do not fit a model of "
            f"{model.config.n_kinds} kinds from {FEATURE_KINDS}"
        )
    if held_out and trained_on_validation:
        raise StreamingModelError(
            f"{checkpoint}: trained on the validation records too (train_on_validation), so "
            "rules fitted or scores measured on them would not be held out; use a run with a "
            "held-out validation split"
        )
    return model.eval(), kinds


def load_sednet(checkpoint: Path) -> Any:
    """The SedNet of a research-trainer checkpoint, in eval mode (:func:`load_checkpoint`)."""
    return load_checkpoint(checkpoint)[0]


def parity(model: Any, onnx_path: Path, chunk_frames: int, seed: int = 0) -> dict[str, Any]:
    """Max |p| difference between ONNX Runtime chunk by chunk (state carried) and the PyTorch
    whole pass, on a random stream around the training statistics."""
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
        probs, state = session.run(None, {"features": x[..., c * t : (c + 1) * t], "state": state})
        parts.append(probs)
    chunked = np.concatenate(parts, axis=2)
    diff = float(np.abs(chunked - whole).max())
    return {
        "reference": "torch whole pass",
        "chunks": PARITY_CHUNKS,
        "max_abs_prob_diff": diff,
        "ok": diff <= PARITY_TOLERANCE,
    }


def export_folder(
    checkpoint: Path,
    out: Path,
    name: str,
    chunk_frames: int,
    detector: dict[str, Any] | None = None,
    quality: dict[str, float] | None = None,
    opset: int = 17,
) -> Path:
    """Write ``out``/{model.pt, model.onnx, manifest.json}; returns the manifest path."""
    from export.opcheck import check_tensorrt_compat
    from export.sed_onnx import export_streaming
    from training.models.sed import count_parameters
    from training.targets import OUTPUTS

    model, kinds = load_checkpoint(checkpoint, held_out=True)
    if model.config.n_outputs != len(OUTPUTS):
        raise StreamingModelError(
            f"{checkpoint}: {model.config.n_outputs} outputs, expected {len(OUTPUTS)} {OUTPUTS}"
        )
    out.mkdir(parents=True, exist_ok=True)
    pt = out / "model.pt"
    if checkpoint.resolve() != pt.resolve():
        shutil.copyfile(checkpoint, pt)
    onnx_path = out / "model.onnx"
    io = export_streaming(model, onnx_path, chunk_frames, opset)
    problems = check_tensorrt_compat(onnx_path)
    if problems:
        raise StreamingModelError(f"{onnx_path}: not TensorRT 10 ready: {problems[0]}")
    check = parity(model, onnx_path, chunk_frames)
    if not check["ok"]:
        raise StreamingModelError(
            f"{onnx_path}: chunked ONNX differs from the PyTorch pass by "
            f"{check['max_abs_prob_diff']:.2e} > {PARITY_TOLERANCE}"
        )
    sha = sha256_file(pt)
    spec = FeatureSpec()
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "model_id": model_id(name, sha),
        "created_utc": utc_now(),
        "checkpoint": {"file": pt.name, "sha256": sha},
        "files": {
            onnx_path.name: file_entry(onnx_path, "fp32", {"source": pt.name, "parity": check})
        },
        "onnx": {
            "opset": opset,
            "inputs": {k: v for k, v in io["inputs"].items()},
            "outputs": {k: v for k, v in io["outputs"].items()},
        },
        "streaming": {
            "chunk_frames": chunk_frames,
            "stride": model.config.stride,
            "lookahead_frames": model.config.lookahead_frames,
            "state_size": model.state_size,
            "flush": model.input_mean.tolist(),  # (K, F) floats
        },
        "feature_spec": spec.to_dict(),
        "kinds": list(kinds),
        "outputs": list(OUTPUTS),
        "parameters": count_parameters(model),
        "tools": tool_versions(),
    }
    if detector is not None:
        data["detector"] = detector
    if quality is not None:
        data["quality"] = quality
    manifest = out / "manifest.json"
    write_manifest(manifest, data)
    load_manifest(manifest)  # what the device will read must load
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--name", required=True, help="run name (the model id's prefix)")
    parser.add_argument("--chunk-frames", type=int, default=12, help="outputs per call")
    parser.add_argument("--detector", type=Path, help="fitted detector rules (JSON)")
    parser.add_argument("--poor-on", type=float, help="quality output: poor_signal on at >=")
    parser.add_argument("--poor-off", type=float, help="quality output: off below")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    detector = None
    if args.detector is not None:
        try:
            detector = json.loads(args.detector.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise StreamingModelError(f"{args.detector}: cannot read ({exc})") from None
    quality = None
    if args.poor_on is not None or args.poor_off is not None:
        if args.poor_on is None or args.poor_off is None:
            raise StreamingModelError("--poor-on and --poor-off go together")
        quality = {"poor_on": args.poor_on, "poor_off": args.poor_off}
    manifest = export_folder(
        args.checkpoint, args.out, args.name, args.chunk_frames, detector, quality, args.opset
    )
    print(f"wrote {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
