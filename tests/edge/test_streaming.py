"""A streaming model through the device's path: the per-bed state wrapper and one backend call
for many beds (real ONNX Runtime session on a tiny exported model), against the PyTorch
whole-recording pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from edge.inference import BackendConfig  # noqa: E402
from edge.inference.base import BackendError  # noqa: E402
from edge.inference.manifest import StreamingInfo, load_manifest  # noqa: E402
from edge.inference.onnxruntime import OrtBackend  # noqa: E402
from edge.inference.streaming import BedState, infer_beds  # noqa: E402
from tests.streaming_fixture import LOG_MEL_MEAN, LOG_MEL_STD, tiny_streaming_folder  # noqa: E402
from training.models.checkpoint import load_checkpoint  # noqa: E402

N_CHUNKS = 9


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_streaming_folder(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def backend(folder: Path):
    backend = OrtBackend(folder / "model.onnx", BackendConfig(providers=("cpu",), max_batch=2))
    yield backend
    backend.close()


def stream_features(seed: int, frames: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = LOG_MEL_MEAN + LOG_MEL_STD * rng.standard_normal((1, 64, frames))
    return x.astype(np.float32)


def chunk(x: np.ndarray, c: int, t: int) -> np.ndarray:
    """The ``c``-th chunk of ``t`` front-end frames of a (K, F, T) stream."""
    return x[:, :, c * t : (c + 1) * t]


def pushed_alone(info: StreamingInfo, backend: OrtBackend, x: np.ndarray, n: int) -> list:
    """The outputs of ``n`` chunks of ``x`` pushed one by one into a fresh bed."""
    bed = BedState(info, backend)
    return [bed.push(chunk(x, c, info.input_frames)) for c in range(n)]


def whole_pass(folder: Path, x: np.ndarray) -> np.ndarray:
    """(n, O) probabilities of the PyTorch whole pass, output j describing frame j - L."""
    model = load_checkpoint(folder / "model.pt").model
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(x[None]))
    return torch.sigmoid(logits)[0].numpy().T


def streaming_info(folder: Path) -> StreamingInfo:
    """The streaming contract of the model in ``folder`` (its manifest must have one)."""
    info = load_manifest(folder / "manifest.json").streaming
    assert info is not None
    return info


def test_chunked_outputs_equal_the_whole_pass_shifted_by_the_lookahead(folder, backend):
    info = streaming_info(folder)
    x = stream_features(0, info.input_frames * N_CHUNKS)
    bed = BedState(info, backend)
    outs = [bed.push(chunk(x, c, info.input_frames)) for c in range(N_CHUNKS)]
    assert outs[0].first_frame == 0
    assert [o.first_frame for o in outs[1:]] == [
        c * info.chunk_frames - info.lookahead_frames for c in range(1, N_CHUNKS)
    ]
    chunked = np.concatenate([o.probs for o in outs])
    whole = whole_pass(folder, x)
    assert chunked.shape == (N_CHUNKS * info.chunk_frames - info.lookahead_frames, 7)
    np.testing.assert_allclose(chunked, whole[info.lookahead_frames :], atol=1e-4)


def test_beds_in_one_call_keep_their_own_state(folder, backend):
    info = streaming_info(folder)
    t = info.input_frames
    streams = [stream_features(seed, t * 4) for seed in (1, 2, 3)]  # 3 beds, max_batch 2
    alone = []
    for x in streams:
        bed = BedState(info, backend)
        alone.append(np.concatenate([bed.push(chunk(x, c, t)).probs for c in range(4)]))
    beds = [BedState(info) for _ in streams]
    together: list[list[np.ndarray]] = [[] for _ in streams]
    for c in range(4):
        chunks = [(b, chunk(x, c, t)) for b, x in zip(beds, streams, strict=True)]
        outs = infer_beds(backend, chunks)
        for i, out in enumerate(outs):
            together[i].append(out.probs)
    for i in range(3):
        np.testing.assert_allclose(np.concatenate(together[i]), alone[i], atol=1e-5)


class RowsSeen:
    """The real backend, noting how many rows each call carries."""

    def __init__(self, inner: OrtBackend) -> None:
        self.inner, self.rows = inner, []
        self.name, self.max_batch = inner.name, inner.max_batch
        self.output_shape = inner.output_shape

    def infer(self, features: np.ndarray, state: np.ndarray):
        self.rows.append(features.shape[0])
        return self.inner.infer(features, state)


def test_beds_go_to_the_backend_in_pieces_of_its_max_batch(folder, backend):
    """Five beds at max_batch 2: calls of 2, 2 and 1 rows (the states of a ward are never
    stacked into one array), each bed's outputs those it gets alone; a bed with two chunks
    in the round gets its second in a later call."""
    info = streaming_info(folder)
    t = info.input_frames
    streams = [stream_features(seed, t * 2) for seed in range(5)]
    alone = []
    for x in streams:
        bed = BedState(info, backend)
        alone.append([bed.push(chunk(x, c, t)).probs for c in range(2)])
    seen = RowsSeen(backend)
    beds = [BedState(info) for _ in streams]
    items = [(b, chunk(x, 0, t)) for b, x in zip(beds, streams, strict=True)]
    items.insert(1, (beds[0], chunk(streams[0], 1, t)))  # bed 0's next chunk, same round
    outs = infer_beds(seen, items)  # type: ignore[arg-type]
    assert seen.rows == [2, 2, 1, 1]
    np.testing.assert_allclose(outs[0].probs, alone[0][0], atol=1e-5)
    np.testing.assert_allclose(outs[1].probs, alone[0][1], atol=1e-5)
    for i in range(1, 5):
        np.testing.assert_allclose(outs[i + 1].probs, alone[i][0], atol=1e-5)


def test_consecutive_chunks_of_one_bed_in_one_round_run_in_order(folder, backend):
    info = streaming_info(folder)
    t = info.input_frames
    x = stream_features(4, t * 3)
    expected = pushed_alone(info, backend, x, 3)
    bed = BedState(info)
    outs = infer_beds(backend, [(bed, chunk(x, c, t)) for c in range(3)])
    for got, want in zip(outs, expected, strict=True):
        assert got.first_frame == want.first_frame
        np.testing.assert_allclose(got.probs, want.probs, atol=1e-6)


def test_reset_starts_a_clean_context_at_the_given_frame(folder, backend):
    info = streaming_info(folder)
    t = info.input_frames
    x = stream_features(5, t * 3)
    expected = pushed_alone(info, backend, x, 3)
    bed = BedState(info, backend)
    bed.push(stream_features(6, t))  # some other audio first
    at = 10 * info.chunk_frames
    bed.reset(at)
    assert not bed.state.any()
    got = [bed.push(chunk(x, c, t)) for c in range(3)]
    assert got[0].first_frame == at  # the look-ahead outputs after a reset are dropped
    for g, e in zip(got, expected, strict=True):
        assert g.first_frame == e.first_frame + at
        np.testing.assert_allclose(g.probs, e.probs, atol=1e-6)


def test_backend_refuses_the_wrong_shapes(folder, backend):
    info = streaming_info(folder)
    x = stream_features(7, info.input_frames)[None]
    with pytest.raises(BackendError, match=r"state must have shape \(1, "):
        backend.infer(x, np.zeros((1, info.state_size + 1), np.float32))
    assert backend.output_shape == (7, info.chunk_frames)
