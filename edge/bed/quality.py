"""No-reference signal quality of an audio segment (NumPy/SciPy, with Numba kernels: on the device).

Three measures and one score, all computed from the segment alone:

- :func:`rms_dbfs`: RMS level in dB relative to full scale (a constant of RMS 1.0 is 0 dBFS,
  so a full-scale sine is -3.01 dBFS), floored at :data:`RMS_FLOOR_DBFS` (digital silence).
- :func:`clipping_fraction`: fraction of samples with ``|x| >= threshold``.
- :func:`spectral_entropy`: normalised Shannon entropy of the Welch-averaged power spectrum
  inside ``[fmin_hz, fmax_hz]`` (100..2000 Hz by default); 1 for white noise, 0.16 for a pure
  tone.
- :func:`quality_score`: the product of five logistic factors, each in (0, 1), 1 = good:

  ======================  ==================================================================
  factor                  ``expit(...)`` argument: centre and width are named constants
  ======================  ==================================================================
  ``quiet``               ``(rms_dbfs - QUIET_DBFS) / QUIET_WIDTH_DB``: off body, silence
  ``loud``                ``(LOUD_DBFS - rms_dbfs) / LOUD_WIDTH_DB``: overdriven input
  ``clipping``            ``(CLIPPING_FRACTION_LIMIT - clip) / CLIPPING_WIDTH``
  ``broadband``           ``(BROADBAND_ENTROPY - H) / BROADBAND_WIDTH``: friction, ambient hiss
  ``tonal``               ``(H - TONAL_ENTROPY) / TONAL_WIDTH``: hum, whistle, a pure tone
  ======================  ==================================================================

  The product is smooth, and any one bad factor pulls the score to 0 on its own.

Calibration (2-s windows at 8 kHz, the FeatureSpec default rate, 0.128-s Welch frames, the
entropy over 100..2000 Hz): SPRSound train recordings sit at -62..-41 dBFS (5-95 %) with
entropy 0.42..0.71 (1-99 %); ICBHI (mostly Meditron) at -39..-6 dBFS with entropy 0.29..0.92
(1-99 %; 0.3 % of its windows above 0.94), and about 5 % of its windows clip heavily; white
noise gives 0.997, a pure tone 0.158 (the Hann main lobe puts a tone's power in three bins,
0.87 nats, divided by ln of the ~243 bins in the band), a 50-Hz hum with four harmonics 0.34,
a frequency-modulated synthetic wheeze 0.27. Over 50..4000 Hz (before) ICBHI's lowest 5 %
reached 0.16 and were flagged tonal: heart and contact sounds below 100 Hz, and its 4-kHz
recordings' empty band above 2 kHz, made another stethoscope look like a tone. The ``tonal``
factor only catches near-pure tones, and the thresholds shift with the sample rate (more bins
in the band lower a tone's entropy). SPRSound's clinician-labelled "Poor Quality" records are
not separated by the score: their problems, crying, talking, stethoscope movement, are not
level or spectral flatness.

QLung (Kim, Koo, Toikkanen, Kim, "Quality Adaptive Angular Margin Learning for Respiratory
Sound Classification", arXiv:2606.11915) derives its per-sample quality from the same two
ingredients, spectral entropy and RMS energy; training uses :func:`quality_score` for its
margin and the device's quality gate uses :func:`measure`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

import numpy as np
from scipy.signal import welch

from edge.audio import validate_samples
from edge.bed.quality_kernels import hop_measures, welch_work
from lungwatch.errors import InvalidAudioError

#: Level reported for digital silence (and anything quieter): RMS 1e-6 of full scale.
RMS_FLOOR_DBFS = -120.0
DEFAULT_CLIPPING_THRESHOLD = 0.999  # |x| at or above this counts as clipped (int16 max 0.99997)

# the band the spectral entropy reads: below it heart sounds, handling rumble and the mains
# fundamental; above it what many stethoscopes and microphones no longer pass (ICBHI's 4-kHz
# recordings hold nothing above 2 kHz), which made another stethoscope look like a tone
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
    """Every quality measure of one segment.

    Attributes:
        rms_dbfs: RMS level, dBFS, >= RMS_FLOOR_DBFS.
        clipping_fraction: fraction of samples at or above the clipping threshold, [0, 1].
        spectral_entropy: normalised spectral entropy, [0, 1].
        quiet, loud, clipping, broadband, tonal: the score's factors, (0, 1), 1 = good.
        score: their product, [0, 1], 1 = good.
    """

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
        """Name of the lowest factor (one of FACTOR_NAMES): what is wrong when the score is low."""
        return min(FACTOR_NAMES, key=lambda name: float(getattr(self, name)))

    def to_dict(self) -> dict[str, float]:
        """Plain-data form (for event payloads and logs)."""
        return {name: getattr(self, name) for name in _MEASURE_NAMES}


_MEASURE_NAMES: tuple[str, ...] = tuple(f.name for f in fields(QualityMeasures))


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level of ``samples`` (shape ``(n,)``, full scale 1) in dBFS, >= RMS_FLOOR_DBFS."""
    return _rms_dbfs(_validated(samples))


def clipping_fraction(samples: np.ndarray, threshold: float = DEFAULT_CLIPPING_THRESHOLD) -> float:
    """Fraction of ``samples`` (shape ``(n,)``) with ``|x| >= threshold``, in [0, 1].

    Raises:
        ValueError: ``threshold`` is not in (0, 1].
    """
    if not (isinstance(threshold, numbers.Real) and 0.0 < threshold <= 1.0):
        raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")
    x = _validated(samples)
    return _clipping_fraction(x, threshold)


def spectral_entropy(
    samples: np.ndarray,
    sample_rate_hz: float,
    fmin_hz: float = DEFAULT_ENTROPY_FMIN_HZ,
    fmax_hz: float | None = DEFAULT_ENTROPY_FMAX_HZ,
) -> float:
    """Normalised Shannon entropy of the averaged power spectrum inside a band, in [0, 1].

    The power spectrum is Welch's average over Hann frames of WELCH_FRAME_S (the whole
    segment if shorter) with 50 % overlap and per-frame mean removal. With ``p_k`` the power
    of bin ``k`` divided by the band's total, ``H = -sum_k p_k ln p_k / ln K`` over the ``K``
    bins with ``fmin_hz <= f_k <= fmax_hz``. A band that holds no power gives 0 (there is no
    spread to measure; :func:`rms_dbfs` reports such a segment as silent).

    Args:
        samples: shape ``(n,)``, floats, full scale 1.
        sample_rate_hz: rate of ``samples``.
        fmin_hz: lower band edge, >= 0. fmax_hz: upper edge, <= Nyquist (None: Nyquist;
            the default, the quality score's band, stops at Nyquist at low rates).

    Raises:
        InvalidAudioError: bad samples or rate, or a segment too short to resolve the band.
        ValueError: the band is empty or outside [0, Nyquist].
    """
    x = _validated(samples)
    rate_hz = _validated_rate(sample_rate_hz)
    if fmax_hz == DEFAULT_ENTROPY_FMAX_HZ and fmax_hz > rate_hz / 2:
        fmax_hz = None  # the default band is cut at a low rate's Nyquist; a given edge is not
    return _spectral_entropy(_band_power(x, rate_hz, *_band(rate_hz, fmin_hz, fmax_hz)))


def measure(samples: np.ndarray, sample_rate_hz: float) -> QualityMeasures:
    """All quality measures and the score of ``samples`` (shape ``(n,)``, full scale 1).

    Valid segments of at least one Welch frame, where the frame is a power of two (0.128 s at
    4, 8 or 16 kHz), take the Numba kernels of :mod:`edge.bed.quality_kernels` (the runtime's
    per-window path, ~15x faster); anything else, and every invalid input, takes
    :func:`measure_reference`, the NumPy/SciPy definition the kernels are tested against
    (equal within 1e-12 relative).

    Raises:
        InvalidAudioError: not 1-D, not floating point, NaN/Inf, or a bad rate.
        EmptyAudioError: no samples.
    """
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
    """The score's factors and the score from the three measures."""
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
    """Quality of ``samples`` in [0, 1], 1 = good (see the module docstring for the formula)."""
    return measure(samples, sample_rate_hz).score


def _rms_dbfs(x: np.ndarray) -> float:
    """RMS level of validated samples in dBFS, floored at RMS_FLOOR_DBFS."""
    return _level_dbfs(float(np.mean(np.square(x))))


def _level_dbfs(mean_square: float) -> float:
    """RMS level in dBFS of a mean square, floored at RMS_FLOOR_DBFS."""
    rms = math.sqrt(mean_square)
    if rms <= 0.0:
        return RMS_FLOOR_DBFS
    return max(RMS_FLOOR_DBFS, 20.0 * math.log10(rms))


def _clipping_fraction(x: np.ndarray, threshold: float) -> float:
    """Fraction of validated samples with ``|x| >= threshold``."""
    return float(np.count_nonzero(np.abs(x) >= threshold)) / x.shape[0]


def _spectral_entropy(band_power: np.ndarray) -> float:
    """Normalised entropy of a band's bin powers (shape ``(K,)``, K >= 2); 0 if all zero."""
    total = float(np.sum(band_power))
    if total <= 0.0:
        return 0.0
    p = band_power[band_power > 0.0] / total
    entropy = -float(np.sum(p * np.log(p))) / math.log(band_power.shape[0])
    return min(1.0, max(0.0, entropy))


def _logistic(margin: float, width: float) -> float:
    """``1 / (1 + exp(-margin / width))``: 0.5 at the threshold, smooth on either side (the
    form that cannot overflow on either side, as ``scipy.special.expit`` computes it)."""
    z = margin / width
    if z >= 0.0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _validated(samples: np.ndarray) -> np.ndarray:
    """Samples as float64, after checking they are 1-D, non-empty, floating point and finite."""
    x = np.asarray(samples)
    if not np.issubdtype(x.dtype, np.floating):
        raise InvalidAudioError(
            f"quality: expected floating-point samples in [-1, 1], got dtype {x.dtype} "
            "(convert integer PCM with edge.audio.to_float32)"
        )
    return validate_samples(x, "quality").astype(np.float64, copy=False)


def _validated_rate(sample_rate_hz: float) -> float:
    """The rate as a float, after checking it is a positive finite number."""
    valid = isinstance(sample_rate_hz, numbers.Real) and not isinstance(sample_rate_hz, bool)
    if not (valid and math.isfinite(sample_rate_hz) and sample_rate_hz > 0):
        raise InvalidAudioError(
            f"quality: sample_rate_hz must be a positive number, got {sample_rate_hz!r}"
        )
    return float(sample_rate_hz)


def _band(rate_hz: float, fmin_hz: float, fmax_hz: float | None) -> tuple[float, float]:
    """Checked ``(fmin_hz, fmax_hz)``; ``fmax_hz`` None means Nyquist."""
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
