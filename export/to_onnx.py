"""``lungwatch export CKPT --out model.onnx``: a checkpoint as one self-contained ONNX file.

    lungwatch export models/edge/model.pt --out models/edge/model.onnx [--opset 17] [--hop-frames N]

The graph follows the contract of :mod:`edge.backends.base`: input ``features`` float32
``(batch, n_kinds, n_bands, window_frames)``, output ``logits`` float32 ``(batch, n_classes)``,
only the batch dynamic, input normalisation inside the graph. Steps:

1. export a logits-only wrapper of the model with the TorchScript exporter (``dynamo=False``:
   static reshapes, a fixed opset, no external data) to a temporary file beside ``--out``;
2. check it: ``onnx.checker``, single file (no initializer stored as external data), names,
   dtypes and dims of the input and output;
3. run it in a real onnxruntime CPU session and compare with torch on a seeded random batch
   drawn around the model's input statistics (max abs difference <= 1e-4);
4. move it into place and write ``manifest.json`` beside it (see :mod:`export.manifest`).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge.errors import LungwatchError
from edge.manifest import INPUT_NAME, MANIFEST_NAME, OUTPUT_NAME
from firmware_bridge.cliparse import ArgumentParser

if TYPE_CHECKING:
    import torch

    from training.checkpoint import LoadedModel

MIN_OPSET = 17
MAX_OPSET = 20  # the TorchScript exporter's newest opset, also TensorRT 10.0's
DEFAULT_OPSET = 17
EXPORT_BATCH = 2  # example batch for tracing (not 1, so nothing specialises on it)
PARITY_BATCH = 4
PARITY_SEED = 0
PARITY_ATOL = 1e-4  # max |torch - onnxruntime| of the logits
BATCH_AXIS_NAME = "batch"


class ExportError(LungwatchError):
    """The checkpoint could not be exported, or the ONNX file breaks the contract."""


def logits_only(model: torch.nn.Module) -> torch.nn.Module:
    """A wrapper whose ``forward(features)`` returns only the class logits."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            logits, _binary, _embedding = self.inner(features)
            return logits

    return LogitsOnly(model).eval()


def example_batch(loaded: LoadedModel, batch: int, seed: int = PARITY_SEED) -> np.ndarray:
    """Seeded float32 features ``(batch, K, F, T)`` drawn around the model's input statistics."""
    model = loaded.model
    mean = model.input_mean.detach().numpy()[None, :, :, None]
    std = model.input_std.detach().numpy()[None, :, :, None]
    shape = (batch, *input_shape(loaded))
    noise = np.random.default_rng(seed).standard_normal(shape)
    return (mean + std * noise).astype(np.float32)


def input_shape(loaded: LoadedModel) -> tuple[int, int, int]:
    """``(n_kinds, n_bands, window_frames)``: the model input without the batch."""
    return (len(loaded.kinds), loaded.spec.n_bands, loaded.run.data.window_frames)


def torch_export(loaded: LoadedModel, path: Path, opset: int) -> None:
    """Trace the logits-only model into ``path`` (one file, dynamic batch only)."""
    import torch

    example = torch.from_numpy(example_batch(loaded, EXPORT_BATCH))
    batch_axis = {0: BATCH_AXIS_NAME}
    with warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (see the module docstring); its
        # deprecation notices (from torch.onnx itself) are not news to the user of this command.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
        try:
            torch.onnx.export(
                logits_only(loaded.model),
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: batch_axis, OUTPUT_NAME: batch_axis},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except (RuntimeError, ValueError) as exc:
            raise ExportError(f"ONNX export at opset {opset} failed: {exc}") from None


def check_single_file(model: Any, path: Path) -> None:
    """Refuse initializers stored as external data (the artifact must be one file)."""
    from onnx import TensorProto

    external = [i.name for i in model.graph.initializer if i.data_location == TensorProto.EXTERNAL]
    if external:
        raise ExportError(
            f"{path}: {len(external)} initializer(s) use external data, e.g. {external[0]!r}; "
            "the model must be one self-contained file"
        )


def _io_shape(value: Any) -> list[int | str]:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def check_contract(model: Any, path: Path, shape: tuple[int, int, int], n_classes: int) -> None:
    """Input ``features`` (batch, *shape) and output ``logits`` (batch, n_classes), float32."""
    from onnx import TensorProto

    graph = model.graph
    expected = {
        INPUT_NAME: [BATCH_AXIS_NAME, *shape],
        OUTPUT_NAME: [BATCH_AXIS_NAME, n_classes],
    }
    found = {v.name: v for v in (*graph.input, *graph.output)}
    for name, dims in expected.items():
        value = found.get(name)
        if value is None:
            raise ExportError(f"{path}: graph has no tensor named {name!r}")
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise ExportError(f"{path}: {name} must be float32")
        if _io_shape(value) != dims:
            raise ExportError(f"{path}: {name} has dims {_io_shape(value)}, expected {dims}")
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ExportError(f"{path}: expected exactly one input and one output")


def check_onnx_file(path: Path, shape: tuple[int, int, int], n_classes: int) -> int:
    """onnx.checker, single file, contract; returns the default-domain opset."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    check_single_file(model, path)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{path}: onnx.checker rejected the model ({exc})") from None
    check_contract(model, path, shape, n_classes)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def ort_session(path: Path) -> Any:
    """A single-threaded onnxruntime CPU session."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def parity_max_abs_diff(loaded: LoadedModel, path: Path, batch: int = PARITY_BATCH) -> float:
    """max |torch - onnxruntime| of the logits on a seeded random batch."""
    import torch

    x = example_batch(loaded, batch)
    with torch.no_grad():
        expected = loaded.model(torch.from_numpy(x))[0].numpy()
    (actual,) = ort_session(path).run([OUTPUT_NAME], {INPUT_NAME: x})
    if actual.shape != expected.shape:
        raise ExportError(f"{path}: onnxruntime gave {actual.shape}, torch {expected.shape}")
    return float(np.max(np.abs(actual - expected)))


def check_options(loaded: LoadedModel, ckpt: Path, opset: int, hop_frames: int | None) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"--opset must be in [{MIN_OPSET}, {MAX_OPSET}], got {opset}")
    window_frames = loaded.run.data.window_frames
    if hop_frames is not None and not 1 <= hop_frames <= window_frames:
        raise ExportError(
            f"--hop-frames must be in [1, window_frames={window_frames}] for {ckpt}, "
            f"got {hop_frames}"
        )


def export_checkpoint(
    ckpt: Path, out: Path, opset: int = DEFAULT_OPSET, hop_frames: int | None = None
) -> Path:
    """Export ``ckpt`` to ``out``, check it, write/update the manifest beside it; returns ``out``.

    Raises:
        CheckpointError: the checkpoint cannot be read.
        ExportError: bad options, export failure, contract violation or parity above 1e-4.
    """
    from export.manifest import publish, write_export_manifest
    from training.checkpoint import load_model

    ckpt, out = Path(ckpt), Path(out)
    loaded = load_model(ckpt)
    check_options(loaded, ckpt, opset, hop_frames)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".onnx", dir=out.parent)
    os.close(fd)
    temp = Path(temp_name)
    try:
        torch_export(loaded, temp, opset)
        check_onnx_file(temp, input_shape(loaded), len(loaded.classes))
        diff = parity_max_abs_diff(loaded, temp)
        if not diff <= PARITY_ATOL:
            raise ExportError(
                f"{out}: onnxruntime logits differ from torch by {diff:.3g} (> {PARITY_ATOL:g})"
            )
        publish(temp, out)
    finally:
        temp.unlink(missing_ok=True)
    parity = {"reference": "torch", "batch": PARITY_BATCH, "max_abs_diff": diff}
    manifest = out.parent / MANIFEST_NAME
    write_export_manifest(
        manifest, ckpt, loaded, out, opset=opset, hop_frames=hop_frames, extra={"parity": parity}
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="training checkpoint (.pt)")
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (17..20)")
    parser.add_argument(
        "--hop-frames", type=int, default=None, help="device window hop (default window // 4)"
    )
    args = parser.parse_args(argv)
    out = export_checkpoint(args.checkpoint, args.out, args.opset, args.hop_frames)
    report(out)
    return 0


def report(out: Path) -> None:
    """Print what was written, from the manifest (the same facts the device will read)."""
    from edge.manifest import load_manifest

    manifest = load_manifest(out.parent / MANIFEST_NAME)
    entry = manifest.files[out.name]
    dims = ", ".join(map(str, manifest.input_shape))
    print(
        f"wrote {out} ({entry.bytes:,} bytes, opset {manifest.raw['onnx']['opset']}): "
        f"{INPUT_NAME} [batch, {dims}] -> {OUTPUT_NAME} [batch, {len(manifest.classes)}]"
    )
    parity = entry.extra.get("parity", {})
    print(
        f"parity: onnxruntime CPU vs torch on {parity.get('batch')} random windows: "
        f"max |diff| {parity.get('max_abs_diff', float('nan')):.2g} (limit {PARITY_ATOL:g})"
    )
    print(f"manifest: {manifest.path} (model_id {manifest.model_id})")
