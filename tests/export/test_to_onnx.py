"""The streaming ONNX graph of SedNet in a real ONNX Runtime session: chunk by chunk with the
state fed back equals the PyTorch whole-recording pass, beds batched keep their own states,
and the graph passes the TensorRT 10 screen (only the batch dynamic, standard ops)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from export.opcheck import check_tensorrt_compat  # noqa: E402
from export.to_onnx import ExportError, export_graph  # noqa: E402
from tests.streaming_fixture import vary_batchnorm  # noqa: E402
from training.models.sed import SedConfig, SedNet  # noqa: E402

CONFIG = SedConfig(
    n_kinds=2, n_bands=8, n_outputs=3, stride=2, channels=8, dilations=(1, 2, 4),
    kernel_widths=(3, 5), lookahead_frames=2, attention_heads=2, attention_frames=6,
)  # fmt: skip
CHUNK = 5


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[SedNet, Path, dict]:
    torch.manual_seed(0)
    model = SedNet(CONFIG)
    vary_batchnorm(model)
    with torch.no_grad():
        model.set_input_stats(torch.randn(2, 8), torch.rand(2, 8) + 0.5)
    model.eval()
    path = tmp_path_factory.mktemp("sed") / "model.onnx"
    return model, path, export_graph(model, path, CHUNK)


def run_chunks(session: ort.InferenceSession, x: np.ndarray, state: np.ndarray) -> np.ndarray:
    width = CHUNK * CONFIG.stride
    outs = []
    for at in range(0, x.shape[-1], width):
        probs, state = session.run(None, {"features": x[..., at : at + width], "state": state})
        outs.append(probs)
    return np.concatenate(outs, axis=2)


def test_chunked_onnx_equals_the_whole_torch_pass(exported: tuple[SedNet, Path, dict]) -> None:
    model, path, io = exported
    assert io["inputs"]["state"] == [model.state_size]
    rng = np.random.default_rng(1)
    beds, n_chunks = 3, 7
    x = rng.standard_normal((beds, 2, 8, n_chunks * CHUNK * CONFIG.stride)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = run_chunks(session, x, np.zeros((beds, model.state_size), np.float32))
    with torch.no_grad():
        whole = torch.sigmoid(model(torch.from_numpy(x))[0]).numpy()
    np.testing.assert_allclose(got, whole, atol=1e-4)
    # each bed's outputs depend on its own audio and state only
    alone = run_chunks(session, x[1:2], np.zeros((1, model.state_size), np.float32))
    np.testing.assert_allclose(alone[0], got[1], atol=1e-5)


def test_only_the_batch_is_dynamic_and_ops_pass_the_tensorrt_screen(tmp_path: Path) -> None:
    # the convolutional model (what ships; the attention layer's shapes are not yet static)
    config = SedConfig(**{**vars(CONFIG), "attention_heads": 0})
    path = tmp_path / "model.onnx"
    torch.manual_seed(1)
    model = SedNet(config)
    vary_batchnorm(model)
    model.eval()
    export_graph(model, path, CHUNK)
    assert check_tensorrt_compat(path) == []
    x = np.random.default_rng(0).standard_normal((2, 2, 8, 3 * CHUNK * 2)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = run_chunks(session, x, np.zeros((2, model.state_size), np.float32))
    with torch.no_grad():
        whole = torch.sigmoid(model(torch.from_numpy(x))[0]).numpy()
    np.testing.assert_allclose(got, whole, atol=1e-4)


def test_a_chunk_of_no_frames_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="chunk_frames"):
        export_graph(SedNet(CONFIG), tmp_path / "m.onnx", 0)
