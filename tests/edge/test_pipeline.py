"""StreamPipeline windows equal training's batch windows for any chunking; batched inference."""

from __future__ import annotations

import numpy as np
import pytest

from edge.bed.pipeline import PipelineError, StreamPipeline, WindowReady
from edge.features import FeatureSpec, extract
from edge.sources.base import SourceChunk

SPEC = FeatureSpec(n_bands=24)
WINDOW_FRAMES, HOP_FRAMES = 60, 25
TOLERANCE = 1e-4


def signal(seconds: float = 2.5, seed: int = 0) -> np.ndarray:
    """Noise with a tone and bursts, at roughly stethoscope level."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SPEC.sample_rate_hz)
    t = np.arange(n) / SPEC.sample_rate_hz
    x = 0.02 * rng.standard_normal(n) + 0.05 * np.sin(2 * np.pi * 400 * t) * (t % 0.7 < 0.3)
    return x.astype(np.float32)


def batch_windows(x: np.ndarray, kinds: tuple[str, ...]) -> np.ndarray:
    """Training's view: (n_windows, K, B, T), windows at s = 0, hop, 2 hop, ..."""
    per_kind = [extract(x, SPEC.replace(kind=k)) for k in kinds]
    common = min(f.shape[0] for f in per_kind)
    stacked = np.stack([f[:common].T for f in per_kind])
    starts = range(0, common - WINDOW_FRAMES + 1, HOP_FRAMES)
    return np.stack([stacked[:, :, s : s + WINDOW_FRAMES] for s in starts])


def run(pipeline: StreamPipeline, chunks: list[SourceChunk]) -> list[WindowReady]:
    return [w for chunk in chunks for w in pipeline.push(chunk)]


def chunked(x: np.ndarray, sizes: list[int] | np.ndarray) -> list[SourceChunk]:
    chunks, start, i = [], 0, 0
    while start < x.shape[0]:
        size = int(sizes[i % len(sizes)])
        chunks.append(SourceChunk(x[start : start + size], start))
        start, i = start + size, i + 1
    return chunks


def assert_windows_equal(windows: list[WindowReady], expected: np.ndarray) -> None:
    assert len(windows) == expected.shape[0]
    for i, w in enumerate(windows):
        assert w.start_frame == i * HOP_FRAMES
        assert w.features.dtype == np.float32
        np.testing.assert_allclose(w.features, expected[i], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("kinds", [("logmel",), ("logmel", "gammatone")])
@pytest.mark.parametrize("size", [1, 80, 257, 4096, "random"])
def test_windows_equal_batch_windows_for_any_chunking(kinds: tuple[str, ...], size: object) -> None:
    x = signal()
    sizes = np.random.default_rng(1).integers(0, 700, 200) if size == "random" else [size]
    windows = run(StreamPipeline(SPEC, kinds, WINDOW_FRAMES, HOP_FRAMES), chunked(x, sizes))
    assert_windows_equal(windows, batch_windows(x, kinds))


def test_kinds_with_lookahead_are_aligned_frame_by_frame() -> None:
    x = signal(2.0)
    sizes = np.random.default_rng(2).integers(1, 1500, 50)
    kinds = ("logmel", "cwt")
    windows = run(StreamPipeline(SPEC, kinds, WINDOW_FRAMES, HOP_FRAMES), chunked(x, sizes))
    assert_windows_equal(windows, batch_windows(x, kinds))


def test_window_timeline_and_quality_span() -> None:
    pipeline = StreamPipeline(SPEC, ("logmel",), WINDOW_FRAMES, HOP_FRAMES)
    windows = run(pipeline, chunked(signal(), [1000]))
    hop, frame = SPEC.hop_samples, SPEC.frame_samples
    for w in windows:
        assert w.start_sample == w.start_frame * hop
        assert w.end_sample == (w.start_frame + WINDOW_FRAMES - 1) * hop + frame
        assert w.end_sample - w.quality_start_sample == HOP_FRAMES * hop or w is windows[0]
        assert w.missing_fraction == 0.0
        assert w.invalid_samples == 0
        assert -60 < w.audio_quality.rms_dbfs < -20
    assert windows[0].quality_start_sample == 0  # the first window is judged whole
    assert pipeline.window_samples == windows[0].end_sample
    assert pipeline.hop_samples == HOP_FRAMES * hop


def test_gaps_and_missing_chunks_are_zeros_marked_missing() -> None:
    x = signal()
    expected_audio = x.copy()
    expected_audio[4000:5000] = 0.0  # a jump in first_sample: nothing delivered
    expected_audio[9000:9800] = 0.0  # a chunk marked missing (its content is ignored)
    chunks = [
        SourceChunk(x[:4000], 0),
        SourceChunk(x[5000:9000], 5000),
        SourceChunk(np.ones(800, np.float32), 9000, missing=True),
        SourceChunk(x[9800:], 9800),
    ]
    pipeline = StreamPipeline(SPEC, ("logmel", "gammatone"), WINDOW_FRAMES, HOP_FRAMES)
    windows = run(pipeline, chunks)
    assert_windows_equal(windows, batch_windows(expected_audio, ("logmel", "gammatone")))
    assert pipeline.missing_samples == 1800
    for w in windows:
        assert w.missing_fraction == pytest.approx(
            lost(w.start_sample, w.end_sample) / pipeline.window_samples
        )
        hop_lost = lost(w.quality_start_sample, w.end_sample)
        assert w.hop_missing_fraction == pytest.approx(
            hop_lost / (w.end_sample - w.quality_start_sample)
        )
    assert sum(w.hop_missing_fraction > 0 for w in windows) == 3


def test_short_losses_hold_the_features_before_them_long_ones_stay_zeros() -> None:
    """With ``conceal_max_samples``: a loss shorter than it (one lost datagram) is still
    zeros marked missing in the audio, but every feature frame whose span touches it repeats
    the frame before it; a loss at least that long is left as computed from the zeros."""
    x = signal()
    short, long_ = (4000, 4256), (12000, 13000)  # 32 ms, 125 ms
    chunks = [
        SourceChunk(x[: short[0]], 0),
        SourceChunk(x[short[1] : long_[0]], short[1]),
        SourceChunk(x[long_[1] :], long_[1]),
    ]
    kinds = ("logmel", "gammatone")
    held = StreamPipeline(SPEC, kinds, WINDOW_FRAMES, HOP_FRAMES, conceal_max_samples=800)
    windows = run(held, chunks)
    zeros = x.copy()
    for lo, hi in (short, long_):
        zeros[lo:hi] = 0.0
    plain = run(StreamPipeline(SPEC, kinds, WINDOW_FRAMES, HOP_FRAMES), chunks)
    assert_windows_equal(plain, batch_windows(zeros, kinds))  # without it: zeros, as before
    hop, size = SPEC.hop_samples, SPEC.frame_samples
    frames = np.concatenate(
        [w.features[:, :, :HOP_FRAMES] for w in windows]
        + [windows[-1].features[:, :, HOP_FRAMES:]],
        axis=2,
    )
    expected = batch_windows(zeros, kinds)
    reference = np.concatenate(
        [e[:, :, :HOP_FRAMES] for e in expected] + [expected[-1][:, :, HOP_FRAMES:]], axis=2
    )
    touched = [
        t for t in range(frames.shape[2]) if t * hop < short[1] and short[0] < t * hop + size
    ]
    assert len(touched) >= 3
    for t in touched:  # held: the frame before the loss, repeated
        np.testing.assert_array_equal(frames[:, :, t], frames[:, :, touched[0] - 1])
    untouched = [t for t in range(frames.shape[2]) if t not in touched]
    np.testing.assert_allclose(frames[:, :, untouched], reference[:, :, untouched], atol=TOLERANCE)
    assert held.missing_samples == (short[1] - short[0]) + (long_[1] - long_[0])
    assert [w.hop_missing_samples for w in windows if w.hop_missing_samples] != []
    with pytest.raises(PipelineError, match="conceal_max_samples must be in"):
        StreamPipeline(SPEC, kinds, WINDOW_FRAMES, HOP_FRAMES, conceal_max_samples=-1)


def lost(start: int, end: int) -> int:
    """Samples of [start, end) in the two gaps of the test above."""
    return sum(max(0, min(end, hi) - max(start, lo)) for lo, hi in ((4000, 5000), (9000, 9800)))


def test_overlapping_samples_are_dropped_and_counted() -> None:
    x = signal(1.5)
    chunks = [SourceChunk(x[:3000], 0), SourceChunk(x[2500:], 2500)]
    pipeline = StreamPipeline(SPEC, ("logmel",), WINDOW_FRAMES, HOP_FRAMES)
    assert_windows_equal(run(pipeline, chunks), batch_windows(x, ("logmel",)))
    assert pipeline.overlap_samples_dropped == 500


def test_nan_and_inf_are_counted_and_replaced_by_zeros() -> None:
    x = signal()
    dirty = x.copy()
    dirty[[3000, 3001, 7777]] = [np.nan, np.inf, -np.inf]
    clean = dirty.copy()
    clean[~np.isfinite(clean)] = 0.0
    pipeline = StreamPipeline(SPEC, ("logmel", "gammatone"), WINDOW_FRAMES, HOP_FRAMES)
    windows = run(pipeline, chunked(dirty, [333]))
    assert_windows_equal(windows, batch_windows(clean, ("logmel", "gammatone")))
    assert pipeline.invalid_samples == 3
    assert all(np.isfinite(w.features).all() for w in windows)
    assert sum(w.invalid_samples for w in windows) == 3  # each hop counted once


@pytest.mark.parametrize(
    ("seed", "window_frames", "hop_frames"), [(0, 60, 25), (1, 60, 25), (2, 10, 40)]
)
def test_missing_and_invalid_counts_match_the_whole_stream_after_many_buffer_shifts(
    seed: int, window_frames: int, hop_frames: int
) -> None:
    """Every window's missing and NaN/Inf counts equal a count over the whole stream's flags,
    on a long stream (the audio buffer shifts many times) with gaps, missing chunks and
    NaN/Inf samples scattered between long clean stretches: clean windows skip the counting,
    so this also checks that no flagged sample is forgotten when they do. Windows flushed at
    the end and hops longer than the window (quality span before the window) included."""
    rng = np.random.default_rng(seed)
    x = signal(30.0, seed)
    n = x.shape[0]
    state = np.zeros(n, np.uint8)  # 0 ok, 1 missing, 2 invalid (the pipeline's own codes)
    chunks, start = [], 0
    while start < n:
        size = int(rng.integers(1, 1500))
        end = min(n, start + size)
        roll = rng.random()
        if roll < 0.04:  # nothing delivered: a jump in first_sample
            state[start:end] = 1
        elif roll < 0.08:  # a chunk marked missing
            chunks.append(SourceChunk(np.ones(end - start, np.float32), start, missing=True))
            state[start:end] = 1
        else:
            piece = x[start:end].copy()
            if roll < 0.12:
                bad = rng.integers(0, end - start, size=3)
                piece[bad] = rng.choice([np.nan, np.inf, -np.inf], size=3)
                state[start + bad] = 2
            chunks.append(SourceChunk(piece, start))
        start = end
    pipeline = StreamPipeline(SPEC, ("logmel",), window_frames, hop_frames)
    windows = run(pipeline, chunks)
    flushed = pipeline.flush(np.zeros((1, SPEC.n_bands)), pipeline.frames_complete + 30)
    assert flushed
    windows += flushed
    assert len(windows) > 50
    assert any(w.hop_missing_fraction == 0 and w.invalid_samples == 0 for w in windows)
    assert any(w.invalid_samples > 0 for w in windows)
    for w in windows:
        whole = state[w.start_sample : w.end_sample]
        hop = state[w.quality_start_sample : w.end_sample]
        assert w.missing_fraction == np.count_nonzero(whole == 1) / pipeline.window_samples
        assert w.hop_missing_samples == np.count_nonzero(hop == 1)
        assert w.invalid_samples == np.count_nonzero(hop == 2)


def test_reset_restores_the_initial_state() -> None:
    x = signal(1.5)
    pipeline = StreamPipeline(SPEC, ("logmel", "gammatone"), WINDOW_FRAMES, HOP_FRAMES)
    first = run(pipeline, chunked(x, [700]))
    pipeline.reset()
    second = run(pipeline, chunked(x, [123]))
    assert len(first) == len(second) > 0
    for a, b in zip(first, second, strict=True):
        np.testing.assert_allclose(a.features, b.features, atol=TOLERANCE, rtol=0)


def test_bad_geometry_is_one_clear_error() -> None:
    with pytest.raises(PipelineError, match="kinds must be distinct"):
        StreamPipeline(SPEC, ("logmel", "logmel"), 10, 5)
    with pytest.raises(PipelineError, match="window_frames and hop_frames must be >= 1"):
        StreamPipeline(SPEC, ("logmel",), 0, 5)


@pytest.mark.parametrize("kinds", [("logmel",), ("cwt", "logmel")])
def test_a_level_front_end_beside_the_models_gives_each_window_its_levels(
    kinds: tuple[str, ...],
) -> None:
    """``level_spec`` (what the breath tracker reads) beside a band-normalised, band-limited
    model front end: each window's ``levels`` equal that front end's batch frames for any
    chunking, the model's features stay its own, and a short loss is held in the levels the
    same way as in the features."""
    x = signal(4.0)
    spec = SPEC.replace(band_norm_s=1.0, fmax_hz=1000.0)
    level = FeatureSpec(n_bands=40)
    sizes = np.random.default_rng(3).integers(1, 900, 300)
    windows = run(
        StreamPipeline(spec, kinds, WINDOW_FRAMES, HOP_FRAMES, level_spec=level), chunked(x, sizes)
    )
    assert len(windows) > 3
    levels, model = extract(x, level).T, extract(x, spec.replace(kind=kinds[0])).T
    for w in windows:
        t = w.start_frame
        assert w.levels is not None
        assert w.levels.shape == (40, WINDOW_FRAMES)
        np.testing.assert_allclose(w.level_frames, levels[:, t : t + WINDOW_FRAMES], atol=TOLERANCE)
        np.testing.assert_allclose(w.features[0], model[:, t : t + WINDOW_FRAMES], atol=TOLERANCE)

    same = run(  # the model's own first front end: nothing more computed
        StreamPipeline(SPEC, kinds[-1:], WINDOW_FRAMES, HOP_FRAMES, level_spec=SPEC),
        chunked(x, [700]),
    )
    assert same[0].levels is None
    np.testing.assert_array_equal(same[0].level_frames, same[0].features[0])
    with pytest.raises(PipelineError, match="level_spec must have the frame and hop"):
        StreamPipeline(SPEC, ("logmel",), WINDOW_FRAMES, HOP_FRAMES, level_spec=level.replace(
            hop_samples=40))  # fmt: skip

    short = (6000, 6256)
    chunks = [SourceChunk(x[: short[0]], 0), SourceChunk(x[short[1] :], short[1])]
    held = run(
        StreamPipeline(spec, kinds, WINDOW_FRAMES, HOP_FRAMES, conceal_max_samples=800,
                       level_spec=level),
        chunks,
    )  # fmt: skip
    hop, size = SPEC.hop_samples, SPEC.frame_samples
    frames = np.concatenate(
        [w.level_frames[:, :HOP_FRAMES] for w in held] + [held[-1].level_frames[:, HOP_FRAMES:]],
        axis=1,
    )
    touched = [
        t for t in range(frames.shape[1]) if t * hop < short[1] and short[0] < t * hop + size
    ]
    assert len(touched) >= 3
    for t in touched:
        np.testing.assert_array_equal(frames[:, t], frames[:, touched[0] - 1])
    np.testing.assert_allclose(frames[:, : touched[0]], levels[:, : touched[0]], atol=TOLERANCE)


@pytest.mark.parametrize(("m", "j"), [(0, 3), (5, 0), (5, 10), (8, 12), (15, 14)])
def test_frames_go_into_the_ring_at_their_columns_around_its_end(m: int, j: int) -> None:
    from edge.bed.pipeline import _store_frames

    rng = np.random.default_rng(m + j)
    ring = rng.standard_normal((6, 15)).astype(np.float32)
    frames = rng.standard_normal((m, 6)).astype(np.float32)
    expected = ring.copy()
    expected[:, (j + np.arange(m)) % 15] = frames.T
    _store_frames(frames, ring, j)
    np.testing.assert_array_equal(ring, expected)


@pytest.mark.parametrize("kinds", [("logmel",), ("cwt", "logmel")])
def test_a_window_carries_only_the_lowest_level_bands_asked_for_each_as_in_the_whole_bank(
    kinds: tuple[str, ...],
) -> None:
    """``level_bands``: the windows' levels are the lowest bands of the whole level front
    end's, to the bit, whether they come from the model's power spectrum (log-mel first) or
    from a front end of their own (cwt first)."""
    x = signal(3.0)
    spec = SPEC.replace(band_norm_s=1.0, fmax_hz=1000.0)
    level = FeatureSpec(n_bands=40)
    sizes = np.random.default_rng(4).integers(1, 900, 200)

    def windows(level_bands: int | None) -> list[WindowReady]:
        pipeline = StreamPipeline(
            spec, kinds, WINDOW_FRAMES, HOP_FRAMES, level_spec=level, level_bands=level_bands
        )
        return run(pipeline, chunked(x, sizes))

    whole, low = windows(None), windows(11)
    assert len(low) == len(whole) > 3
    for a, b in zip(whole, low, strict=True):
        assert b.levels is not None
        assert b.levels.shape == (11, WINDOW_FRAMES)
        np.testing.assert_array_equal(b.levels, a.levels[:11])  # type: ignore[index]
        np.testing.assert_array_equal(b.features, a.features)
    for bad in (0, 41):
        with pytest.raises(PipelineError, match="level_bands must be in"):
            StreamPipeline(spec, kinds, WINDOW_FRAMES, HOP_FRAMES, level_spec=level,
                           level_bands=bad)  # fmt: skip
