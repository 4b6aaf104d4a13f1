"""Log-mel against independent references: an HTK mel matrix, librosa, SciPy's STFT."""

from __future__ import annotations

import numpy as np
import pytest

from bench.frontend import scipy_reference
from edge.features import FeatureSpec, extract, make_stream, make_streams
from edge.features.logmel import SecondBank, analysis_window, mel_filterbank
from lungwatch.config import InvalidValueError


def _reference_mel(sr: int, n_fft: int, n_bands: int, fmin: float, fmax: float) -> np.ndarray:
    """Textbook HTK triangles, written independently of the package (loops, no broadcasting)."""

    def mel(f: float) -> float:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def hz(m: float) -> float:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    step = (mel(fmax) - mel(fmin)) / (n_bands + 1)
    edges = [hz(mel(fmin) + i * step) for i in range(n_bands + 2)]
    weights = np.zeros((n_bands, n_fft // 2 + 1))
    for b in range(n_bands):
        lo, mid, hi = edges[b], edges[b + 1], edges[b + 2]
        for k in range(n_fft // 2 + 1):
            f = k * sr / n_fft
            if lo < f <= mid:
                weights[b, k] = (f - lo) / (mid - lo)
            elif mid < f < hi:
                weights[b, k] = (hi - f) / (hi - mid)
    return weights


@pytest.mark.parametrize(("n_fft", "n_bands"), [(512, 64), (256, 26), (1024, 80)])
def test_mel_filterbank_matches_textbook(n_fft: int, n_bands: int) -> None:
    spec = FeatureSpec(n_fft=n_fft, n_bands=n_bands, frame_samples=min(256, n_fft), fmin_hz=100.0)
    expected = _reference_mel(8000, n_fft, n_bands, 100.0, 4000.0)
    np.testing.assert_allclose(mel_filterbank(spec), expected, atol=1e-12)


def test_mel_filterbank_matches_librosa() -> None:
    librosa = pytest.importorskip("librosa", reason="librosa (dev extra) not installed")
    spec = FeatureSpec()
    expected = librosa.filters.mel(
        sr=8000, n_fft=512, n_mels=64, fmin=50.0, fmax=4000.0, htk=True, norm=None
    )
    np.testing.assert_allclose(mel_filterbank(spec), expected, atol=1e-6)


def test_logmel_matches_scipy_stft_reference() -> None:
    """The front end against SciPy's STFT through the same filterbank (the benchmark's
    reference; the filterbank itself is checked against an independent one above)."""
    spec = FeatureSpec()
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 8000
    x = 0.05 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * 440 * t)
    reference = np.asarray(scipy_reference(spec, x)()).T
    ours = extract(x, spec)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_sine_power_is_spectrum_scaled() -> None:
    """A sine of amplitude A at a bin centre gives bin power A**2 / 4 (window sums to one)."""
    spec = FeatureSpec(normalisation="power")
    assert analysis_window(spec.frame_samples).sum() == pytest.approx(1.0)
    bin_index = 32  # 500 Hz at n_fft 512
    t = np.arange(4000)
    x = 0.5 * np.sin(2 * np.pi * bin_index * t / spec.n_fft)
    bands = extract(x, spec)
    weights = mel_filterbank(spec)
    band = int(np.argmax(weights[:, bin_index]))
    assert np.argmax(bands.mean(axis=0)) == band
    # Hann leakage puts power in the neighbouring bins too; the band sums them.
    assert bands[:, band].mean() >= weights[band, bin_index] * 0.25**2 * 0.99


def test_empty_mel_band_is_refused() -> None:
    with pytest.raises(InvalidValueError, match="n_fft"):
        mel_filterbank(FeatureSpec(n_fft=256, n_bands=128, fmin_hz=0.0))


def test_short_signal_gives_no_frames() -> None:
    spec = FeatureSpec()
    assert extract(np.zeros(spec.frame_samples - 1), spec).shape == (0, spec.n_bands)
    assert extract(np.zeros(spec.frame_samples), spec).shape == (1, spec.n_bands)


def test_two_filterbanks_over_one_spectrum_give_each_specs_own_frames() -> None:
    """``make_streams`` with two log-mel specs over the same frames (the model's band-limited,
    band-normalised bands and the breath tracker's wide ones) computes one STFT: each stream's
    frames equal its own stream's, for any chunking, bit for bit; specs over other frames, or a
    second spec with band normalisation, get two separate streams."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(8000 * 3).astype(np.float32)
    model = FeatureSpec(band_norm_s=1.0, fmax_hz=1000.0)
    wide = FeatureSpec(n_bands=40)
    first, second = make_streams(model, wide)
    assert isinstance(second, SecondBank)
    alone_model, alone_wide = make_stream(model), make_stream(wide)
    got_model, got_wide, want_model, want_wide = [], [], [], []
    sizes = rng.integers(1, 1500, 60)
    for chunk in np.split(x, np.cumsum(sizes)[np.cumsum(sizes) < x.size]):
        got_model.append(first.push(chunk).copy())
        got_wide.append(second.push(chunk).copy())
        want_model.append(alone_model.push(chunk).copy())
        want_wide.append(alone_wide.push(chunk).copy())
    np.testing.assert_array_equal(np.concatenate(got_model), np.concatenate(want_model))
    np.testing.assert_array_equal(np.concatenate(got_wide), np.concatenate(want_wide))
    assert np.concatenate(got_wide).shape == (extract(x, wide).shape[0], 40)

    first.reset()
    second.reset()
    first.push(x[:500])
    with pytest.raises(RuntimeError, match="out of step"):
        second.push(x[:400])
    for other in (wide.replace(hop_samples=40), wide.replace(band_norm_s=2.0)):
        separate = make_streams(model, other)[1]
        assert not isinstance(separate, SecondBank)


def test_a_second_bank_of_its_lowest_bands_gives_those_bands_of_the_whole_bank() -> None:
    x = np.random.default_rng(6).standard_normal(8000).astype(np.float32)
    model, wide = FeatureSpec(band_norm_s=1.0, fmax_hz=1000.0), FeatureSpec(n_bands=40)
    (whole_first, whole), (low_first, low) = (
        make_streams(model, wide),
        make_streams(model, wide, second_bands=9),
    )
    np.testing.assert_array_equal(low_first.push(x), whole_first.push(x))
    got, want = low.push(x), whole.push(x)
    assert got.shape == (want.shape[0], 9)
    np.testing.assert_array_equal(got, want[:, :9])
    for bad in (0, 41):
        with pytest.raises(InvalidValueError, match="second_bands"):
            make_streams(model, wide, second_bands=bad)
