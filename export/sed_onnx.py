"""The streaming ONNX form of a frame-level detector (:class:`training.models.sed.SedNet`).

    export_streaming(model, Path("model.onnx"), chunk_frames=12)

One call of the graph takes one chunk of every bed's new front-end frames and the beds'
carried states, and returns the chunk's per-frame probabilities and the new states::

    features  (B, K, F, chunk_frames * stride)  float32   log spectrogram frames, as streamed
    state     (B, S)                            float32   zeros when a stream starts
    ->  probs     (B, O, chunk_frames)          float32   sigmoid outputs
        state_out (B, S)                        float32   feed back with the next chunk

Only the batch is dynamic (the lungwatch contract that ``export/opcheck.py`` checks, and what
a TensorRT engine with one optimisation profile over the batch wants); the chunk length is
fixed at export. Output ``j`` of the stream describes network frame ``j - lookahead_frames``
(``SedConfig.lookahead_frames``): the device drops the first ``lookahead_frames`` outputs and
flushes the same number of chunks' worth of frames at the end.

The TorchScript exporter (``dynamo=False``) is used: it gives a
plain graph of standard ops (Conv, Relu, Concat, Slice, Mul, Add, MatMul, Softmax, Sigmoid)
with no data-dependent shapes.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from edge.errors import LungwatchError

FEATURES, STATE, PROBS, STATE_OUT = "features", "state", "probs", "state_out"
DEFAULT_OPSET = 17


class StreamingExportError(LungwatchError, RuntimeError):
    """The streaming model could not be exported (the message says why)."""


def export_streaming(
    model: Any, path: Path, chunk_frames: int, opset: int = DEFAULT_OPSET
) -> dict[str, Any]:
    """Write the streaming graph of the SedNet ``model`` (eval mode) to ``path``; returns the
    I/O description for the manifest."""
    import torch

    from training.models.sed import StreamingSed

    if chunk_frames < 1:
        raise StreamingExportError(f"chunk_frames must be >= 1, got {chunk_frames}")
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
            raise StreamingExportError(f"streaming export at opset {opset} failed: {exc}") from None
    _declare_static_outputs(path, [[config.n_outputs, chunk_frames], [model.state_size]])
    return {
        "opset": opset,
        "inputs": {FEATURES: list(features.shape[1:]), STATE: [model.state_size]},
        "outputs": {PROBS: [config.n_outputs, chunk_frames], STATE_OUT: [model.state_size]},
        "chunk_frames": chunk_frames,
        "stride": config.stride,
        "lookahead_frames": config.lookahead_frames,
    }


def _declare_static_outputs(path: Path, dims: list[list[int]]) -> None:
    """Write the outputs' non-batch sizes into the graph (the exporter names them as symbols
    although they follow from the fixed chunk)."""
    import onnx

    graph_model = onnx.load(str(path))
    for output, sizes in zip(graph_model.graph.output, dims, strict=True):
        shape = output.type.tensor_type.shape.dim
        for dim, size in zip(list(shape)[1:], sizes, strict=True):
            dim.ClearField("dim_param")
            dim.dim_value = size
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, str(path))
