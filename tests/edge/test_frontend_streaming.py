"""The front-end contract for every kind: streaming equals batch for any chunking, reset()
restores the initial state, nothing is reallocated per chunk."""

from __future__ import annotations

import numpy as np
import pytest

from edge.features import FEATURE_KINDS, FeatureSpec, extract, lookahead_samples, make_stream
from lungwatch.errors import InvalidAudioError
from tests.edge.chunking import push_in_chunks

TOLERANCE = 1e-5
SMALL = {"n_bands": 24}  # keeps the kernels' work small; the layout is the same


def _signal(n: int, seed: int = 0) -> np.ndarray:
    """Breath-like noise with a tone burst and clicks, so every band sees energy changes."""
    rng = np.random.default_rng(seed)
    x = 0.02 * rng.standard_normal(n)
    t = np.arange(n) / 8000
    x[n // 4 : n // 2] += 0.2 * np.sin(2 * np.pi * 350 * t[n // 4 : n // 2])
    x[rng.integers(0, n, 12)] += 0.8
    return x


@pytest.mark.parametrize("kind", FEATURE_KINDS)
@pytest.mark.parametrize("chunk", [1, 7, 160, 4096])
def test_stream_equals_batch_for_fixed_chunks(kind: str, chunk: int) -> None:
    x = _signal(9000)
    batch = extract(x, FeatureSpec(kind=kind, **SMALL))  # type: ignore[arg-type]
    streamed = push_in_chunks(make_stream(FeatureSpec(kind=kind, **SMALL)), x, [chunk])
    assert streamed.shape == batch.shape
    assert batch.shape[0] > 50
    np.testing.assert_allclose(streamed, batch, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("kind", FEATURE_KINDS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stream_equals_batch_for_random_chunks(kind: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = _signal(7000, seed)
    cuts = np.sort(rng.choice(np.arange(1, x.size), size=40, replace=False))
    chunks = np.diff(np.concatenate([[0], cuts, [x.size]])).tolist()
    chunks.insert(5, 0)  # an empty chunk is allowed and yields nothing
    batch = extract(x, FeatureSpec(kind=kind, **SMALL))  # type: ignore[arg-type]
    np.testing.assert_allclose(
        push_in_chunks(make_stream(FeatureSpec(kind=kind, **SMALL)), x, chunks),
        batch,
        rtol=0,
        atol=TOLERANCE,
    )


@pytest.mark.parametrize("kind", FEATURE_KINDS)
def test_reset_restores_initial_output_exactly(kind: str) -> None:
    x = _signal(5000, 4)
    stream = make_stream(FeatureSpec(kind=kind, **SMALL))  # type: ignore[arg-type]
    first = stream.push(x).copy()
    stream.push(_signal(3333, 5))
    stream.reset()
    assert stream.frames_emitted == 0
    assert stream.samples_seen == 0
    np.testing.assert_array_equal(stream.push(x), first)


@pytest.mark.parametrize("kind", FEATURE_KINDS)
def test_frames_are_emitted_as_soon_as_complete(kind: str) -> None:
    spec = FeatureSpec(kind=kind, **SMALL)  # type: ignore[arg-type]
    stream = make_stream(spec)
    first = spec.frame_samples + lookahead_samples(spec)
    assert stream.push(np.zeros(first - 1)).shape[0] == 0
    assert stream.push(np.zeros(1)).shape[0] == 1
    assert stream.push(np.zeros(spec.hop_samples - 1)).shape[0] == 0
    assert stream.push(np.zeros(1)).shape[0] == 1


@pytest.mark.parametrize("kind", FEATURE_KINDS)
def test_steady_state_push_reuses_its_buffers(kind: str) -> None:
    stream = make_stream(FeatureSpec(kind=kind, **SMALL))  # type: ignore[arg-type]
    x = _signal(4096)
    stream.push(x[:256])
    buffer = stream.push(x[256:512]).base
    for start in range(512, 4096, 256):
        assert stream.push(x[start : start + 256]).base is buffer


@pytest.mark.parametrize("kind", FEATURE_KINDS)
def test_float32_and_float64_input_agree(kind: str) -> None:
    x = _signal(4000).astype(np.float32)
    a = make_stream(FeatureSpec(kind=kind, **SMALL)).push(x).copy()  # type: ignore[arg-type]
    b = make_stream(FeatureSpec(kind=kind, **SMALL)).push(x.astype(np.float64))  # type: ignore[arg-type]
    np.testing.assert_allclose(a, b, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("bad", [np.zeros((10, 2)), np.zeros(10, dtype=np.int16), np.array(["a"])])
def test_push_rejects_wrong_shape_or_dtype(bad: np.ndarray) -> None:
    stream = make_stream(FeatureSpec())
    with pytest.raises(InvalidAudioError, match=r"shape|dtype"):
        stream.push(bad)


@pytest.mark.parametrize("kind", FEATURE_KINDS)
def test_one_stream_takes_mixed_chunk_types(kind: str) -> None:
    """float64, float32, read-only, unaligned and big-endian chunks into the same stream (each
    chunk type has its own compiled entry point) still give the batch frames."""
    x = _signal(6000, 6)
    spec = FeatureSpec(kind=kind, **SMALL)  # type: ignore[arg-type]
    stream = make_stream(spec)
    read_only = x[1000:2000].copy()
    read_only.setflags(write=False)
    raw = np.zeros(1000 * 8 + 1, np.uint8)
    unaligned = raw[1:].view(np.float64)
    unaligned[:] = x[3000:4000]
    assert not unaligned.flags.aligned
    chunks = [
        x[:500],
        x[500:1000].astype(">f8"),
        read_only,
        x[2000:3000].astype(np.float32),
        unaligned,
        x[4000:5000].astype(np.float32),
        x[5000:].astype(">f8"),
    ]
    streamed = np.concatenate([stream.push(c).copy() for c in chunks])
    reference = x.copy()
    for lo, hi in ((2000, 3000), (4000, 5000)):  # the float32 chunks, as the stream saw them
        reference[lo:hi] = reference[lo:hi].astype(np.float32)
    np.testing.assert_allclose(streamed, extract(reference, spec), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("kind", FEATURE_KINDS)
def test_interleaved_streams_do_not_disturb_each_other(kind: str) -> None:
    """Beds of one ward push in turn (and log-mel streams share their FFT work arrays): each
    stream still gives the batch frames of its own signal, for chunks of differing sizes."""
    spec = FeatureSpec(kind=kind, **SMALL)  # type: ignore[arg-type]
    signals = [_signal(6000, seed) for seed in (7, 8, 9)]
    streams = [make_stream(spec) for _ in signals]
    got: list[list[np.ndarray]] = [[] for _ in signals]
    sizes = ([800, 37, 1600], [333, 800], [4096, 1])  # each stream its own chunking
    positions = [0, 0, 0]
    while any(p < 6000 for p in positions):
        for i, stream in enumerate(streams):
            if positions[i] < 6000:
                size = sizes[i][len(got[i]) % len(sizes[i])]
                got[i].append(stream.push(signals[i][positions[i] : positions[i] + size]).copy())
                positions[i] += size
    for i, x in enumerate(signals):
        np.testing.assert_allclose(np.concatenate(got[i]), extract(x, spec), rtol=0, atol=TOLERANCE)


def test_logmel_streams_share_their_work_arrays_not_their_state() -> None:
    a, b = make_stream(FeatureSpec(**SMALL)), make_stream(FeatureSpec(**SMALL))
    assert a._frames is b._frames  # type: ignore[attr-defined]
    assert a._power is b._power  # type: ignore[attr-defined]
    assert a._ring is not b._ring  # type: ignore[attr-defined]
    assert a._out is not b._out  # type: ignore[attr-defined]
