"""Tests of edge.bed.quality: level, clipping, spectral entropy and the combined score."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from scipy.signal import welch

from edge.bed import quality, quality_kernels
from edge.bed.quality import (
    FACTOR_NAMES,
    RMS_FLOOR_DBFS,
    clipping_fraction,
    measure,
    quality_score,
    rms_dbfs,
    spectral_entropy,
)
from lungwatch.errors import EmptyAudioError, InvalidAudioError
from training.data.synthetic import synthesize

RATE_HZ = 8000
DURATION_S = 2.0
N_SAMPLES = round(RATE_HZ * DURATION_S)
SEED = 20240611
GOOD_SCORE = 0.9  # every clean breath recording scores above this
BAD_SCORE = 0.5  # every defective segment scores below this
BREATH_SEEDS = (1, 2, 3, 4)


def _time_s() -> np.ndarray:
    return np.arange(N_SAMPLES) / RATE_HZ


def _white(rms: float = 0.1, seed: int = SEED) -> np.ndarray:
    return rms * np.random.default_rng(seed).standard_normal(N_SAMPLES)


def _tone(frequency_hz: float = 437.3, amplitude: float = 0.1) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * frequency_hz * _time_s())


def _breath(seed: int) -> np.ndarray:
    recording = synthesize(DURATION_S, RATE_HZ, seed=seed, crackles=3, wheezes=1)
    return recording.samples.astype(np.float64)


def _clipped(seed: int = 1, gain: float = 40.0) -> np.ndarray:
    return np.clip(gain * _breath(seed), -1.0, 1.0)


def _overdriven(seed: int = 1, drive: float = 10.0) -> np.ndarray:
    """Breath driven into a soft limiter that stays below the clipping threshold (~-1.5 dBFS)."""
    x = _breath(seed)
    return 0.99 * np.tanh(drive * x / np.sqrt(np.mean(x**2)))


# --- levels and clipping ----------------------------------------------------------------


def test_rms_dbfs_of_hand_computed_signals() -> None:
    assert rms_dbfs(np.full(100, 0.1)) == pytest.approx(-20.0)
    assert rms_dbfs(np.sign(np.sin(np.arange(1000)) + 0.5)) == pytest.approx(0.0)
    assert rms_dbfs(np.sin(2 * np.pi * 100 * _time_s())) == pytest.approx(-10 * math.log10(2))


@pytest.mark.parametrize("level", [0.0, 1e-9])
def test_rms_dbfs_floors_silence(level: float) -> None:
    assert rms_dbfs(np.full(N_SAMPLES, level)) == RMS_FLOOR_DBFS


def test_clipping_fraction_counts_samples_at_threshold() -> None:
    x = np.array([0.0, 0.5, 1.0, -1.0, 0.9995, 0.998, -0.999, 0.2])
    assert clipping_fraction(x) == pytest.approx(4 / 8)
    assert clipping_fraction(x, threshold=0.5) == pytest.approx(6 / 8)


# --- spectral entropy -------------------------------------------------------------------


def test_white_noise_entropy_is_near_one() -> None:
    assert spectral_entropy(_white(), RATE_HZ) > 0.98


@pytest.mark.parametrize("frequency_hz", [123.4, 437.3, 1000.0, 1800.3])
def test_tone_entropy_is_near_zero(frequency_hz: float) -> None:
    # ln of a Hann main lobe's three bins over ln of the ~243 bins of 100..2000 Hz: 0.158
    assert spectral_entropy(_tone(frequency_hz), RATE_HZ) < quality.TONAL_ENTROPY - 0.03
    assert spectral_entropy(_tone(frequency_hz), RATE_HZ, fmax_hz=4000.0) < 0.15


def test_bin_centred_tone_entropy_matches_hann_main_lobe() -> None:
    # A tone on bin k of a periodic Hann frame has power 1/6, 2/3, 1/6 in bins k-1, k, k+1.
    frame = round(quality.WELCH_FRAME_S * RATE_HZ)
    bin_hz = RATE_HZ / frame
    freqs_hz = np.arange(frame // 2 + 1) * bin_hz
    band = (freqs_hz >= quality.DEFAULT_ENTROPY_FMIN_HZ) & (
        freqs_hz <= quality.DEFAULT_ENTROPY_FMAX_HZ
    )
    n_bins = int(np.count_nonzero(band))
    p = np.array([1 / 6, 2 / 3, 1 / 6])
    expected = -float(np.sum(p * np.log(p))) / math.log(n_bins)
    assert spectral_entropy(_tone(128 * bin_hz), RATE_HZ) == pytest.approx(expected, abs=1e-6)


def test_entropy_is_band_limited() -> None:
    # White noise band-limited to 1 kHz: flat inside 100..1000 Hz, concentrated in 100..4000 Hz.
    spectrum = np.fft.rfft(_white())
    spectrum[np.fft.rfftfreq(N_SAMPLES, 1 / RATE_HZ) > 1000.0] = 0.0
    lowpassed = np.fft.irfft(spectrum, N_SAMPLES)
    assert spectral_entropy(lowpassed, RATE_HZ, fmax_hz=1000.0) > 0.97
    assert spectral_entropy(lowpassed, RATE_HZ, fmax_hz=4000.0) < 0.87
    default = spectral_entropy(lowpassed, RATE_HZ)  # 100..2000 Hz, half of it empty
    assert spectral_entropy(lowpassed, RATE_HZ, fmax_hz=4000.0) < default < 0.9


def test_empty_bins_count_in_the_normalisation() -> None:
    # Power spread evenly over 2 of 4 bins: ln 2 / ln 4 = 0.5 (not ln 2 / ln 2).
    band_power = np.array([1.0, 1.0, 0.0, 0.0])
    assert quality._spectral_entropy(band_power) == pytest.approx(0.5)


def test_entropy_of_silence_is_zero() -> None:
    assert spectral_entropy(np.zeros(N_SAMPLES), RATE_HZ) == 0.0


def test_breath_entropy_lies_between_tone_and_noise() -> None:
    for seed in BREATH_SEEDS:
        entropy = spectral_entropy(_breath(seed), RATE_HZ)
        assert spectral_entropy(_tone(), RATE_HZ) < entropy < spectral_entropy(_white(), RATE_HZ)


# --- the score --------------------------------------------------------------------------


def test_clean_breath_scores_high() -> None:
    for seed in BREATH_SEEDS:
        assert quality_score(_breath(seed), RATE_HZ) > GOOD_SCORE


@pytest.mark.parametrize(
    ("name", "make", "factor"),
    [
        ("silence", lambda: np.zeros(N_SAMPLES), "quiet"),
        ("off body", lambda: 1e-5 * _breath(1), "quiet"),
        ("white noise", _white, "broadband"),
        ("pure tone", _tone, "tonal"),
        ("clipped", _clipped, "clipping"),
        ("overdriven", _overdriven, "loud"),
    ],
)
def test_defects_score_low_and_name_their_cause(
    name: str, make: Callable[[], np.ndarray], factor: str
) -> None:
    measures = measure(make(), RATE_HZ)
    assert measures.score < BAD_SCORE, name
    assert measures.limiting_factor == factor, name
    worst_breath = min(quality_score(_breath(seed), RATE_HZ) for seed in BREATH_SEEDS)
    assert measures.score < worst_breath, name


def test_score_falls_smoothly_as_the_level_drops() -> None:
    gains = 10.0 ** (-np.arange(0, 5.5, 0.25))  # 0 to -110 dB
    scores = [quality_score(gain * _breath(1), RATE_HZ) for gain in gains]
    assert scores[0] > GOOD_SCORE
    assert scores[-1] < 1e-3
    steps = np.diff(scores)
    assert np.all(steps <= 1e-12)  # never rises as the level falls
    assert np.max(np.abs(steps)) < 0.6  # and never jumps


def test_logistic_factor_is_the_expit_of_the_margin_without_overflow() -> None:
    from scipy.special import expit

    margins = np.concatenate([np.linspace(-50.0, 50.0, 2001), [-1e6, -800.0, 800.0, 1e6]])
    got = np.array([quality._logistic(float(m), 2.5) for m in margins])
    np.testing.assert_allclose(got, expit(margins / 2.5), rtol=1e-15, atol=1e-300)
    assert quality._logistic(-1e6, 1.0) == 0.0
    assert quality._logistic(1e6, 1.0) == 1.0


def test_measure_is_consistent_with_the_single_measures() -> None:
    x = _breath(2)
    measures = measure(x, RATE_HZ)
    assert measures.rms_dbfs == pytest.approx(rms_dbfs(x))
    assert measures.clipping_fraction == pytest.approx(clipping_fraction(x))
    assert measures.spectral_entropy == pytest.approx(spectral_entropy(x, RATE_HZ))
    assert measures.score == pytest.approx(math.prod(getattr(measures, f) for f in FACTOR_NAMES))
    assert measures.score == pytest.approx(quality_score(x, RATE_HZ))
    assert set(measures.to_dict()) >= {"rms_dbfs", "spectral_entropy", "score", *FACTOR_NAMES}
    assert 0.0 <= measures.score <= 1.0


def test_float32_and_float64_agree() -> None:
    x = _breath(3)
    assert quality_score(x.astype(np.float32), RATE_HZ) == pytest.approx(
        quality_score(x, RATE_HZ), abs=1e-4
    )


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (np.zeros((2, 100)), "1-D"),
        (np.array([0.0, np.nan, 0.1] * 100), "NaN or Inf"),
        (np.array([0.0, np.inf, 0.1] * 100), "NaN or Inf"),
        (np.zeros(100, dtype=np.int16), "floating-point"),
        (np.array([0.5]), "frequency bin"),
    ],
)
def test_bad_samples_raise_invalid_audio(samples: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidAudioError, match=message):
        measure(samples, RATE_HZ)


def test_empty_samples_raise() -> None:
    with pytest.raises(EmptyAudioError, match="no samples"):
        quality_score(np.zeros(0), RATE_HZ)


@pytest.mark.parametrize("rate", [0, -8000, math.nan, True])
def test_bad_rate_raises(rate: float) -> None:
    with pytest.raises(InvalidAudioError, match="sample_rate_hz"):
        spectral_entropy(_white(), rate)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fmax_hz": 5000.0}, "fmax_hz"),
        ({"fmin_hz": 4000.0}, "fmin_hz"),
        ({"fmin_hz": -1.0}, "fmin"),
    ],
)
def test_bad_band_raises(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spectral_entropy(_white(), RATE_HZ, **kwargs)


@pytest.mark.parametrize("threshold", [0.0, 1.5])
def test_bad_clipping_threshold_raises(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        clipping_fraction(_white(), threshold)


# --- the kernels behind measure() against the NumPy/SciPy reference ---------------------

KERNEL_RTOL = 1e-12
MEASURE_NAMES = tuple(quality.QualityMeasures.__dataclass_fields__)


def _signals(n: int, rate_hz: int) -> dict[str, np.ndarray]:
    t = np.arange(n) / rate_hz
    rng = np.random.default_rng(n + rate_hz)
    breath = synthesize(max(DURATION_S, n / rate_hz), rate_hz, seed=5, crackles=3, wheezes=1)
    return {
        "noise": 0.05 * rng.standard_normal(n),
        "tone": 0.1 * np.sin(2 * np.pi * 437.3 * t) + 0.02,
        "clipped": np.clip(2.0 * rng.standard_normal(n), -1.0, 1.0),
        "silence": np.zeros(n),
        "breath": breath.samples[:n].astype(np.float64),
    }


def _assert_measures_equal(got: quality.QualityMeasures, want: quality.QualityMeasures) -> None:
    for name in MEASURE_NAMES:
        assert getattr(got, name) == pytest.approx(
            getattr(want, name), rel=KERNEL_RTOL, abs=KERNEL_RTOL
        ), name


@pytest.mark.parametrize("rate_hz", [4000, 8000, 16000])
@pytest.mark.parametrize("seconds", [0.128, 0.2, 0.5, 0.5001, 2.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_measure_kernels_match_the_reference(rate_hz: int, seconds: float, dtype: type) -> None:
    n = round(seconds * rate_hz)
    for name, x in _signals(n, rate_hz).items():
        samples = x.astype(dtype)
        got, want = measure(samples, rate_hz), quality.measure_reference(samples, rate_hz)
        try:
            _assert_measures_equal(got, want)
        except AssertionError as exc:
            raise AssertionError(f"{name}, {n} samples at {rate_hz} Hz: {exc}") from None


@pytest.mark.parametrize(
    ("n", "rate_hz"),
    [(1000, 8000), (4000, 11025), (4000, 8100.0)],  # shorter than a frame; frame not 2**k
)
def test_measure_falls_back_to_the_reference(n: int, rate_hz: float) -> None:
    x = _white()[:n]
    assert quality._measure_fast(x, rate_hz) is None
    assert measure(x, rate_hz) == quality.measure_reference(x, rate_hz)


def test_kernel_path_reports_nan_like_the_reference() -> None:
    x = _white()[:4000].copy()
    x[1234] = np.nan
    with pytest.raises(InvalidAudioError, match="1 of 4000 samples are NaN or Inf"):
        measure(x, RATE_HZ)


@pytest.mark.parametrize("n", [1, 7, 4000, 16001])
def test_level_sums_kernel(n: int) -> None:
    x = np.random.default_rng(n).uniform(-1.0, 1.0, n)
    x[:: max(1, n // 3)] = 1.0
    sum_squares, clipped, finite = quality_kernels.level_sums(x, 0.999)
    assert finite
    assert sum_squares == pytest.approx(float(np.sum(x * x)), rel=KERNEL_RTOL)
    assert clipped == int(np.count_nonzero(np.abs(x) >= 0.999))
    x[n // 2] = np.inf
    assert not quality_kernels.level_sums(x, 0.999)[2]


@pytest.mark.parametrize(("n_per_frame", "n"), [(8, 8), (64, 100), (1024, 4000), (2048, 16000)])
def test_welch_frames_kernel(n_per_frame: int, n: int) -> None:
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    work = quality_kernels.WelchWork(n_per_frame, 8000.0, 50.0, 0.5)
    n_frames = 1 + (n - n_per_frame) // work.step
    work.ensure(n_frames)
    quality_kernels.welch_frames(x, work.window, work.step, n_frames, work.frames)
    starts = np.arange(n_frames) * work.step
    segments = x.astype(np.float64)[starts[:, None] + np.arange(n_per_frame)]
    expected = (segments - segments.mean(axis=1, keepdims=True)) * work.window
    np.testing.assert_allclose(work.frames[:n_frames], expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize(("n_per_frame", "n"), [(64, 64), (256, 1000), (1024, 4000)])
def test_band_entropy_kernel(n_per_frame: int, n: int) -> None:
    x = _breath(1)[:n]
    work = quality_kernels.WelchWork(n_per_frame, RATE_HZ, 50.0, 0.5)
    n_frames = 1 + (n - n_per_frame) // work.step
    work.ensure(n_frames)
    quality_kernels.welch_frames(x, work.window, work.step, n_frames, work.frames)
    work.power[:n_frames] = np.abs(np.fft.rfft(work.frames[:n_frames], axis=1)) ** 2
    got = quality_kernels.band_entropy(work.power, n_frames, work.lo, work.hi)
    freqs_hz, power = welch(x, RATE_HZ, "hann", n_per_frame, n_per_frame // 2, scaling="spectrum")
    band = power[freqs_hz >= 50.0]
    assert band.shape[0] == work.hi - work.lo
    assert got == pytest.approx(quality._spectral_entropy(band), rel=KERNEL_RTOL)
    work.power[:] = 0.0
    assert quality_kernels.band_entropy(work.power, n_frames, work.lo, work.hi) == 0.0


def test_kernel_scratch_is_per_thread() -> None:
    segments = [_breath(seed)[:4000] for seed in BREATH_SEEDS] * 8
    want = [quality.measure_reference(x, RATE_HZ).score for x in segments]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda x: quality_score(x, RATE_HZ), segments))
    np.testing.assert_allclose(got, want, rtol=KERNEL_RTOL)


def test_to_dict_is_asdict() -> None:
    measures = measure(_breath(1), RATE_HZ)
    assert measures.to_dict() == dataclasses.asdict(measures)
    assert list(measures.to_dict()) == [f.name for f in dataclasses.fields(measures)]
