"""Per-band running normalisation (edge.features.bandnorm): the Numba kernel against a plain
NumPy reference, streaming equals batch for any chunking and every kind (and reset), a fixed
frequency response is removed, digital silence leaves the mean alone."""

from __future__ import annotations

import numpy as np
import pytest

from edge.features import FEATURE_KINDS, FeatureSpec, extract, make_stream
from edge.features.bandnorm import BandNormStream, alpha_of, normalise_bands, silent_below
from edge.features.base import silence_value
from lungwatch.config import InvalidValueError
from tests.edge.chunking import KERNEL_SIZES, frames_with_a_gap, push_in_chunks
from tests.edge.chunking import tone_in_noise as signal

SPEC = FeatureSpec(n_bands=24, band_norm_s=2.0)


def reference(frames: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """The module doc's recursion, written out in NumPy."""
    mean, count, out = np.zeros(frames.shape[1]), 0, np.empty_like(frames, dtype=np.float64)
    for t, frame in enumerate(frames.astype(np.float64)):
        if (frame > silent_below(spec)).any():
            count += 1
            mean += max(1.0 / count, alpha_of(spec)) * (frame - mean)
        out[t] = frame - mean
    return out


@pytest.mark.parametrize(("n_frames", "n_bands"), KERNEL_SIZES)
def test_the_kernel_equals_the_reference(n_frames: int, n_bands: int) -> None:
    frames, spec = frames_with_a_gap(SPEC, n_frames, n_bands)
    np.testing.assert_allclose(normalise_bands(frames, spec), reference(frames, spec), atol=1e-5)


@pytest.mark.parametrize("kind", FEATURE_KINDS)
@pytest.mark.parametrize("chunks", [[1], [7], [160], [4096], [13, 800, 3, 2000]])
def test_streaming_equals_batch_for_any_chunking(kind: str, chunks: list[int]) -> None:
    x = signal(12000)
    x[5000:6000] = 0.0  # digital silence inside the stream
    spec = SPEC.replace(kind=kind)
    batch = extract(x, spec)
    assert batch.shape[0] > 100
    stream = make_stream(spec)
    assert isinstance(stream, BandNormStream)
    streamed = push_in_chunks(stream, x, chunks)
    np.testing.assert_allclose(streamed, batch, rtol=0.0, atol=1e-5)


def test_reset_restores_the_initial_state() -> None:
    stream = make_stream(SPEC)
    x = signal(6000, seed=3)
    first = stream.push(x).copy()
    stream.push(signal(3000, seed=4))
    stream.reset()
    np.testing.assert_array_equal(stream.push(x), first)


def test_a_fixed_frequency_response_is_removed() -> None:
    """A per-band gain (another stethoscope) is an offset per log band: gone once normalised."""
    x = signal(16000, seed=5)
    plain = extract(x, SPEC.replace(band_norm_s=0.0))
    tilt = np.linspace(-3.0, 2.0, SPEC.n_bands, dtype=np.float32)  # -13 to +9 dB
    np.testing.assert_allclose(
        normalise_bands(plain + tilt, SPEC), normalise_bands(plain, SPEC), atol=1e-4
    )
    assert np.abs(plain + tilt - plain).max() > 2.9  # the raw features do differ


def test_digital_silence_does_not_move_the_mean() -> None:
    frames = np.full((300, 4), -5.0, np.float32)
    frames[100:200] = silence_value(SPEC)
    out = normalise_bands(frames, SPEC)
    np.testing.assert_allclose(out[200:], 0.0, atol=1e-6)  # the mean is still -5 after the gap
    assert (out[100:200] < -15).all()  # the gap itself stands out


def test_only_log_features_are_normalised() -> None:
    with pytest.raises(InvalidValueError, match="band_norm_s must be 0 unless normalisation"):
        FeatureSpec(normalisation="power", band_norm_s=4.0)
    with pytest.raises(InvalidValueError, match="band_norm_s must be a number >= 0"):
        FeatureSpec(band_norm_s=-1.0)
