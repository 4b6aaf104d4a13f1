"""No-reference signal quality of an audio segment (NumPy/SciPy, with Numba kernels: on the device).

Three measures (:func:`rms_dbfs`, :func:`clipping_fraction`, :func:`spectral_entropy`) and
:func:`quality_score`, the product of five logistic factors (:func:`_measures`), each in (0, 1),
1 = good, so any one bad factor pulls the score to 0. The calibration on SPRSound and ICBHI:
docs/runtime.md, "The signal quality score". QLung (Kim, Koo, Toikkanen, Kim, "Quality Adaptive
Angular Margin Learning for Respiratory Sound Classification", arXiv:2606.11915) derives its
per-sample quality from the same two ingredients, spectral entropy and RMS energy; training uses
:func:`quality_score` for its margin and the device's quality gate :func:`measure`."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

import numpy as np
from scipy.signal import welch

from edge.audio import validate_samples
from edge.bed.quality_kernels import hop_measures, welch_work
from lungwatch.errors import InvalidAudioError

RMS_FLOOR_DBFS = -120.0  # reported for digital silence and anything quieter: RMS 1e-6 of full scale
DEFAULT_CLIPPING_THRESHOLD = 0.999  # |x| at or above this counts as clipped (int16 max 0.99997)

# the band the spectral entropy reads: below it heart sounds, rumble and mains; above it what
# many stethoscopes no longer pass (docs/runtime.md, "The signal quality score")
DEFAULT_ENTROPY_FMIN_HZ = 100.0
DEFAULT_ENTROPY_FMAX_HZ = 2000.0
WELCH_FRAME_S = 0.128  # Welch frame (Hann, 50 % overlap): 1024 samples, 7.8-Hz bins at 8 kHz
WELCH_OVERLAP_FRACTION = 0.5
MIN_ENTROPY_BINS = 2  # the normalised entropy needs at least two frequency bins
MIN_KERNEL_FRAME = 4  # shortest Welch frame the kernels take (a power of two, as the FFT needs)
_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

QUIET_DBFS = -75.0  # below this RMS level the stethoscope is off the body or muted
QUIET_WIDTH_DB = 2.5
LOUD_DBFS = -4.0  # above this RMS level the input is overdriven (a full-scale sine is -3)
LOUD_WIDTH_DB = 1.0
CLIPPING_FRACTION_LIMIT = 0.01  # 1 % of samples at full scale: clearly clipped
CLIPPING_WIDTH = 0.001
BROADBAND_ENTROPY = 0.94  # spectra flatter than this are friction or ambient noise
BROADBAND_WIDTH = 0.008
TONAL_ENTROPY = 0.20  # spectra more concentrated than this are a tone (a pure one: 0.157)
TONAL_WIDTH = 0.01

#: Names of the score's factors, in the order :attr:`QualityMeasures.limiting_factor` breaks ties.
FACTOR_NAMES: tuple[str, ...] = ("quiet", "loud", "clipping", "broadband", "tonal")


@dataclass(frozen=True)
class QualityMeasures:
    """Every quality measure of one segment; the factors and the score: 1 = good."""

    rms_dbfs: float
    clipping_fraction: float
    spectral_entropy: float
    quiet: float
    loud: float
    clipping: float
    broadband: float
    tonal: float
    score: float

    @property
    def limiting_factor(self) -> str:
        """The lowest factor: what is wrong when the score is low."""
        return min(FACTOR_NAMES, key=lambda name: float(getattr(self, name)))

    def to_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in _MEASURE_NAMES}


_MEASURE_NAMES: tuple[str, ...] = tuple(f.name for f in fields(QualityMeasures))


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level of ``samples`` (shape ``(n,)``, full scale 1) in dBFS, >= RMS_FLOOR_DBFS."""
    return _rms_dbfs(_validated(samples))


def clipping_fraction(samples: np.ndarray, threshold: float = DEFAULT_CLIPPING_THRESHOLD) -> float:
    """Fraction of ``samples`` with ``|x| >= threshold`` (in (0, 1], else ValueError)."""
    if not (isinstance(threshold, numbers.Real) and 0.0 < threshold <= 1.0):
        raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")
    return _clipping_fraction(_validated(samples), threshold)


def spectral_entropy(
    samples: np.ndarray,
    sample_rate_hz: float,
    fmin_hz: float = DEFAULT_ENTROPY_FMIN_HZ,
    fmax_hz: float | None = DEFAULT_ENTROPY_FMAX_HZ,
) -> float:
    """``H = -sum_k p_k ln p_k / ln K``, the normalised Shannon entropy of the Welch spectrum over
    a band's ``K`` bins, in [0, 1] (0 with no power). ``fmax_hz`` None: Nyquist."""
    x = _validated(samples)
    rate_hz = _validated_rate(sample_rate_hz)
    if fmax_hz == DEFAULT_ENTROPY_FMAX_HZ and fmax_hz > rate_hz / 2:
        fmax_hz = None  # the default band is cut at a low rate's Nyquist; a given edge is not
    return _spectral_entropy(_band_power(x, rate_hz, *_band(rate_hz, fmin_hz, fmax_hz)))


def measure(samples: np.ndarray, sample_rate_hz: float) -> QualityMeasures:
    """All quality measures and the score of ``samples`` (full scale 1): by the Numba kernels
    of :mod:`edge.bed.quality_kernels` where the Welch frame is a power of two, else (and for
    every invalid input) by :func:`measure_reference`, which they are tested against."""
    fast = _measure_fast(samples, sample_rate_hz)
    return fast if fast is not None else measure_reference(samples, sample_rate_hz)


def measure_reference(samples: np.ndarray, sample_rate_hz: float) -> QualityMeasures:
    """:func:`measure` in plain NumPy/SciPy (``scipy.signal.welch``): the reference."""
    x = _validated(samples)
    rate_hz = _validated_rate(sample_rate_hz)
    band = _band(rate_hz, DEFAULT_ENTROPY_FMIN_HZ, min(DEFAULT_ENTROPY_FMAX_HZ, rate_hz / 2))
    entropy = _spectral_entropy(_band_power(x, rate_hz, *band))
    clipped = _clipping_fraction(x, DEFAULT_CLIPPING_THRESHOLD)
    return _measures(_rms_dbfs(x), clipped, entropy)


def _measures(level_dbfs: float, clipped: float, entropy: float) -> QualityMeasures:
    factors = {
        "quiet": _logistic(level_dbfs - QUIET_DBFS, QUIET_WIDTH_DB),
        "loud": _logistic(LOUD_DBFS - level_dbfs, LOUD_WIDTH_DB),
        "clipping": _logistic(CLIPPING_FRACTION_LIMIT - clipped, CLIPPING_WIDTH),
        "broadband": _logistic(BROADBAND_ENTROPY - entropy, BROADBAND_WIDTH),
        # a band with no power has no spectrum to judge (entropy 0): silence is "quiet"'s
        "tonal": 1.0 if entropy == 0.0 else _logistic(entropy - TONAL_ENTROPY, TONAL_WIDTH),
    }
    score = math.prod(factors.values())
    return QualityMeasures(level_dbfs, clipped, entropy, score=score, **factors)


def quality_score(samples: np.ndarray, sample_rate_hz: float) -> float:
    return measure(samples, sample_rate_hz).score


def _rms_dbfs(x: np.ndarray) -> float:
    return _level_dbfs(float(np.mean(np.square(x))))


def _level_dbfs(mean_square: float) -> float:
    rms = math.sqrt(mean_square)
    if rms <= 0.0:
        return RMS_FLOOR_DBFS
    return max(RMS_FLOOR_DBFS, 20.0 * math.log10(rms))


def _clipping_fraction(x: np.ndarray, threshold: float) -> float:
    return float(np.count_nonzero(np.abs(x) >= threshold)) / x.shape[0]


def _spectral_entropy(band_power: np.ndarray) -> float:
    total = float(np.sum(band_power))
    if total <= 0.0:
        return 0.0
    p = band_power[band_power > 0.0] / total
    entropy = -float(np.sum(p * np.log(p))) / math.log(band_power.shape[0])
    return min(1.0, max(0.0, entropy))


def _logistic(margin: float, width: float) -> float:
    """``1 / (1 + exp(-margin / width))`` in the form that cannot overflow (as ``expit``)."""
    z = margin / width
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _validated(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if not np.issubdtype(x.dtype, np.floating):
        raise InvalidAudioError(
            f"quality: expected floating-point samples in [-1, 1], got dtype {x.dtype} "
            "(convert integer PCM with edge.audio.to_float32)"
        )
    return validate_samples(x, "quality").astype(np.float64, copy=False)


def _validated_rate(sample_rate_hz: float) -> float:
    valid = isinstance(sample_rate_hz, numbers.Real) and not isinstance(sample_rate_hz, bool)
    if not (valid and math.isfinite(sample_rate_hz) and sample_rate_hz > 0):
        raise InvalidAudioError(
            f"quality: sample_rate_hz must be a positive number, got {sample_rate_hz!r}"
        )
    return float(sample_rate_hz)


def _band(rate_hz: float, fmin_hz: float, fmax_hz: float | None) -> tuple[float, float]:
    nyquist_hz = rate_hz / 2.0
    top_hz = nyquist_hz if fmax_hz is None else float(fmax_hz)
    if not (math.isfinite(fmin_hz) and 0.0 <= fmin_hz < nyquist_hz):
        raise ValueError(f"fmin_hz must be in [0, nyquist={nyquist_hz:g}), got {fmin_hz!r}")
    if not (math.isfinite(top_hz) and fmin_hz < top_hz <= nyquist_hz):
        raise ValueError(
            f"fmax_hz must be in (fmin_hz={fmin_hz:g}, nyquist={nyquist_hz:g}], got {fmax_hz!r}"
        )
    return float(fmin_hz), top_hz


def _band_power(x: np.ndarray, rate_hz: float, fmin_hz: float, fmax_hz: float) -> np.ndarray:
    """Welch power of the bins inside ``[fmin_hz, fmax_hz]``, shape ``(K,)``, K >= 2."""
    n_per_frame = min(x.shape[0], max(1, round(WELCH_FRAME_S * rate_hz)))
    freqs_hz, power = welch(
        x,
        fs=rate_hz,
        window="hann",
        nperseg=n_per_frame,
        noverlap=int(WELCH_OVERLAP_FRACTION * n_per_frame),
        detrend="constant",
        scaling="spectrum",
    )
    inside = (freqs_hz >= fmin_hz) & (freqs_hz <= fmax_hz)
    n_bins = int(np.count_nonzero(inside))
    if n_bins < MIN_ENTROPY_BINS:
        raise InvalidAudioError(
            f"quality: a segment of {x.shape[0]} samples at {rate_hz:g} Hz resolves only "
            f"{n_bins} frequency bin(s) in {fmin_hz:g}..{fmax_hz:g} Hz; need "
            f"{MIN_ENTROPY_BINS} (use a longer segment or a wider band)"
        )
    return np.asarray(power[inside], dtype=np.float64)


def _measure_fast(samples: object, sample_rate_hz: object) -> QualityMeasures | None:
    """:func:`measure` through the kernels, or None where only the reference applies."""
    x, rate = samples, sample_rate_hz
    if not (isinstance(x, np.ndarray) and x.ndim == 1 and x.dtype in _KERNEL_DTYPES):
        return None
    if not (isinstance(rate, float | int) and not isinstance(rate, bool) and 0 < rate < math.inf):
        return None
    n, n_per_frame = x.shape[0], max(1, round(WELCH_FRAME_S * rate))
    if n < n_per_frame or n_per_frame < MIN_KERNEL_FRAME or n_per_frame & (n_per_frame - 1):
        return None
    work = welch_work(
        n_per_frame, float(rate), DEFAULT_ENTROPY_FMIN_HZ, WELCH_OVERLAP_FRACTION,
        DEFAULT_ENTROPY_FMAX_HZ,
    )  # fmt: skip
    if work.hi - work.lo < MIN_ENTROPY_BINS:
        return None  # the reference raises, naming the band
    n_frames = 1 + (n - n_per_frame) // work.step
    work.ensure(n_frames)
    sum_squares, n_clipped, entropy, finite = hop_measures(
        x, DEFAULT_CLIPPING_THRESHOLD, work.window, work.step, n_frames, work.lo, work.hi,
        work.frames, work.fft.as_args(), work.power,
    )  # fmt: skip
    if not finite:
        return None  # the reference raises, naming the NaN/Inf samples
    return _measures(_level_dbfs(sum_squares / n), n_clipped / n, entropy)
