"""Synthetic lung sounds with exact labels, for tests and for users without the data sets:
breath noise under a breathing envelope, crackles (damped sinusoids, largest peak in the first
cycle) and wheezes (gliding tones with two harmonics). An event occupies samples
``[start, end)`` exactly and adds zero outside them; any two events, and the recording's ends,
are at least ``MIN_EVENT_GAP_S`` apart. Deterministic for a seed; the breath noise is drawn
first, so ``synthesize(d, r, seed=s)`` is the event-free background of the same call with
events (unless the mix was scaled down to ``PEAK_LIMIT``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.signal import butter, sosfilt

FINE_CRACKLE = "Fine Crackle"
COARSE_CRACKLE = "Coarse Crackle"
WHEEZE = "Wheeze"
CRACKLE_TYPES: tuple[str, ...] = (FINE_CRACKLE, COARSE_CRACKLE)

CRACKLE_DURATION_S: dict[str, tuple[float, float]] = {
    FINE_CRACKLE: (0.005, 0.010),
    COARSE_CRACKLE: (0.010, 0.020),
}
CRACKLE_FREQUENCY_HZ: dict[str, tuple[float, float]] = {
    FINE_CRACKLE: (350.0, 800.0),
    COARSE_CRACKLE: (100.0, 350.0),
}
CRACKLE_DECAYS_PER_EVENT = 4.0  # e-foldings of the damped sinusoid within one event
CRACKLE_END_TAPER_FRACTION = 0.25

MIN_WHEEZE_S = 0.100
WHEEZE_DURATION_S: tuple[float, float] = (0.150, 0.600)
DEFAULT_WHEEZE_F0_RANGE_HZ: tuple[float, float] = (100.0, 1000.0)
MIN_WHEEZE_F0_HZ = 50.0
WHEEZE_MAX_GLIDE_FRACTION = 0.10
WHEEZE_HARMONIC_GAINS: tuple[float, ...] = (1.0, 0.35, 0.12)
WHEEZE_RAMP_S = 0.020
MAX_TONE_FRACTION_OF_RATE = 0.45  # keep every partial below 0.45 x rate (under Nyquist)

BREATH_BAND_HZ: tuple[float, float] = (100.0, 1000.0)
BREATH_FILTER_ORDER = 2
DEFAULT_BREATH_PERIOD_S = 3.5
BREATH_PERIOD_JITTER_FRACTION = 0.10
INSPIRATION_FRACTION = 0.4
EXPIRATION_GAIN = 0.6
BREATH_ENVELOPE_FLOOR = 0.05

DEFAULT_SAMPLE_RATE_HZ = 8000
MIN_SAMPLE_RATE_HZ = 4000
DEFAULT_BREATH_RMS = 0.05  # RMS of the breath noise at the top of an inspiration
DEFAULT_CRACKLE_PEAK = 0.5
DEFAULT_WHEEZE_PEAK = 0.2
PEAK_LIMIT = 0.95  # the mix is scaled down (never clipped) if it would exceed this
MIN_EVENT_GAP_S = 0.050
MAX_PLACEMENT_TRIES = 10_000


class SyntheticEvent(NamedTuple):
    """One labelled event; times in seconds, exact multiples of 1 / sample_rate_hz."""

    start_s: float
    end_s: float
    type: str


@dataclass(frozen=True, eq=False)
class SyntheticRecording:
    """Synthetic audio (float32, peak <= ``PEAK_LIMIT``) and its events, sorted by start."""

    samples: np.ndarray
    sample_rate_hz: int
    events: list[SyntheticEvent]

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.sample_rate_hz


def event_sample_range(event: SyntheticEvent, sample_rate_hz: int) -> tuple[int, int]:
    return round(event.start_s * sample_rate_hz), round(event.end_s * sample_rate_hz)


def synthesize(
    duration_s: float,
    sample_rate_hz: int = DEFAULT_SAMPLE_RATE_HZ,
    *,
    seed: int,
    crackles: int = 0,
    wheezes: int = 0,
    crackle_type: str = FINE_CRACKLE,
    wheeze_f0_range_hz: tuple[float, float] = DEFAULT_WHEEZE_F0_RANGE_HZ,
    breath_period_s: float = DEFAULT_BREATH_PERIOD_S,
    breath_rms: float = DEFAULT_BREATH_RMS,
    crackle_peak: float = DEFAULT_CRACKLE_PEAK,
    wheeze_peak: float = DEFAULT_WHEEZE_PEAK,
) -> SyntheticRecording:
    """Peaks are of one event (full scale 1); ValueError: bad argument, or the events do not fit."""
    _check_args(duration_s, sample_rate_hz, crackles, wheezes, crackle_type, wheeze_f0_range_hz)
    _check_positive(
        breath_period_s=breath_period_s,
        breath_rms=breath_rms,
        crackle_peak=crackle_peak,
        wheeze_peak=wheeze_peak,
    )
    rng = np.random.default_rng(seed)
    n_samples = round(duration_s * sample_rate_hz)
    envelope = breathing_envelope(n_samples, sample_rate_hz, breath_period_s, rng)
    samples = breath_rms * envelope * _breath_noise(n_samples, sample_rate_hz, rng)
    requests = [WHEEZE] * wheezes + [crackle_type] * crackles
    spans = _place_events(requests, n_samples, sample_rate_hz, rng)
    for start, end, event_type in spans:
        if event_type == WHEEZE:
            burst = wheeze_peak * _wheeze(end - start, sample_rate_hz, wheeze_f0_range_hz, rng)
        else:
            burst = crackle_peak * _crackle(end - start, sample_rate_hz, event_type, rng)
        samples[start:end] += burst
    peak = float(np.max(np.abs(samples)))
    if peak > PEAK_LIMIT:
        samples *= PEAK_LIMIT / peak
    events = [SyntheticEvent(s / sample_rate_hz, e / sample_rate_hz, t) for s, e, t in spans]
    return SyntheticRecording(samples.astype(np.float32), int(sample_rate_hz), events)


def _check_args(
    duration_s: float,
    sample_rate_hz: int,
    crackles: int,
    wheezes: int,
    crackle_type: str,
    wheeze_f0_range_hz: tuple[float, float],
) -> None:
    if not (math.isfinite(duration_s) and duration_s > 0.0):
        raise ValueError(f"duration_s must be a positive number, got {duration_s}")
    if isinstance(sample_rate_hz, bool) or not isinstance(sample_rate_hz, int):
        raise ValueError(f"sample_rate_hz must be an integer, got {sample_rate_hz!r}")
    if sample_rate_hz < MIN_SAMPLE_RATE_HZ:
        raise ValueError(f"sample_rate_hz must be >= {MIN_SAMPLE_RATE_HZ}, got {sample_rate_hz}")
    for name, count in (("crackles", crackles), ("wheezes", wheezes)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {count!r}")
    if crackle_type not in CRACKLE_TYPES:
        raise ValueError(f"crackle_type must be one of {CRACKLE_TYPES}, got {crackle_type!r}")
    low_hz, high_hz = wheeze_f0_range_hz
    top_hz = MAX_TONE_FRACTION_OF_RATE * sample_rate_hz
    if not MIN_WHEEZE_F0_HZ <= low_hz <= high_hz <= top_hz / (1 + WHEEZE_MAX_GLIDE_FRACTION):
        raise ValueError(
            f"wheeze_f0_range_hz must satisfy {MIN_WHEEZE_F0_HZ} <= low <= high <= "
            f"{top_hz / (1 + WHEEZE_MAX_GLIDE_FRACTION):.0f} at {sample_rate_hz} Hz, "
            f"got {wheeze_f0_range_hz}"
        )


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not (math.isfinite(value) and value > 0.0):
            raise ValueError(f"{name} must be a positive number, got {value}")


def breathing_envelope(
    n_samples: int, sample_rate_hz: int, breath_period_s: float, rng: np.random.Generator
) -> np.ndarray:
    """Amplitude envelope (n_samples,) in [floor, 1], from a random phase of the first cycle."""
    pieces: list[np.ndarray] = []
    total = 0
    offset = int(rng.integers(0, max(1, round(breath_period_s * sample_rate_hz))))
    while total < n_samples + offset:
        jitter = 1.0 + rng.uniform(-BREATH_PERIOD_JITTER_FRACTION, BREATH_PERIOD_JITTER_FRACTION)
        cycle = max(2, round(breath_period_s * jitter * sample_rate_hz))
        n_in = max(1, round(INSPIRATION_FRACTION * cycle))
        pieces += [_sin2_bump(n_in), EXPIRATION_GAIN * _sin2_bump(cycle - n_in)]
        total += cycle
    bumps = np.concatenate(pieces)[offset : offset + n_samples]
    return BREATH_ENVELOPE_FLOOR + (1.0 - BREATH_ENVELOPE_FLOOR) * bumps


def _sin2_bump(n_samples: int) -> np.ndarray:
    return np.sin(np.pi * (np.arange(n_samples) + 0.5) / max(n_samples, 1)) ** 2


def _breath_noise(n_samples: int, sample_rate_hz: int, rng: np.random.Generator) -> np.ndarray:
    sos = butter(
        BREATH_FILTER_ORDER, BREATH_BAND_HZ, btype="bandpass", fs=sample_rate_hz, output="sos"
    )
    noise = sosfilt(sos, rng.standard_normal(n_samples))
    rms = float(np.sqrt(np.mean(noise**2)))
    return noise / rms if rms > 0.0 else noise


def _event_length(event_type: str, sample_rate_hz: int, rng: np.random.Generator) -> int:
    low_s, high_s = WHEEZE_DURATION_S if event_type == WHEEZE else CRACKLE_DURATION_S[event_type]
    return round(rng.uniform(low_s, high_s) * sample_rate_hz)


def _place_events(
    requests: list[str], n_samples: int, sample_rate_hz: int, rng: np.random.Generator
) -> list[tuple[int, int, str]]:
    gap = round(MIN_EVENT_GAP_S * sample_rate_hz)
    spans: list[tuple[int, int, str]] = []
    for event_type in requests:
        for _ in range(MAX_PLACEMENT_TRIES):
            length = _event_length(event_type, sample_rate_hz, rng)
            latest_start = n_samples - gap - length
            if latest_start < gap:
                continue
            start = int(rng.integers(gap, latest_start + 1))
            end = start + length
            if all(end + gap <= s or e + gap <= start for s, e, _ in spans):
                spans.append((start, end, event_type))
                break
        else:
            raise ValueError(
                f"cannot place {len(requests)} events ({requests.count(WHEEZE)} wheezes) "
                f"without overlap in {n_samples / sample_rate_hz:.3f} s: use fewer events "
                "or a longer duration"
            )
    return sorted(spans)


def _crackle(
    n_samples: int, sample_rate_hz: int, crackle_type: str, rng: np.random.Generator
) -> np.ndarray:
    frequency_hz = rng.uniform(*CRACKLE_FREQUENCY_HZ[crackle_type])
    t_s = np.arange(n_samples) / sample_rate_hz
    decay_s = n_samples / sample_rate_hz / CRACKLE_DECAYS_PER_EVENT
    burst = np.sin(2.0 * np.pi * frequency_hz * t_s) * np.exp(-t_s / decay_s)
    n_taper = max(1, round(CRACKLE_END_TAPER_FRACTION * n_samples))
    burst[-n_taper:] *= np.cos(0.5 * np.pi * (np.arange(n_taper) + 1) / n_taper) ** 2
    polarity = 1.0 if rng.random() < 0.5 else -1.0
    return polarity * burst / np.max(np.abs(burst))


def _wheeze(
    n_samples: int, sample_rate_hz: int, f0_range_hz: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    f0_hz = rng.uniform(*f0_range_hz)
    glide = rng.uniform(-WHEEZE_MAX_GLIDE_FRACTION, WHEEZE_MAX_GLIDE_FRACTION)
    frequency_hz = f0_hz * (1.0 + glide * np.arange(n_samples) / n_samples)
    phase = 2.0 * np.pi * np.cumsum(frequency_hz) / sample_rate_hz + rng.uniform(0, 2 * np.pi)
    top_hz = MAX_TONE_FRACTION_OF_RATE * sample_rate_hz
    tone = np.zeros(n_samples)
    for harmonic, gain in enumerate(WHEEZE_HARMONIC_GAINS, start=1):
        if harmonic * float(np.max(frequency_hz)) < top_hz:
            tone += gain * np.sin(harmonic * phase)
    n_ramp = min(round(WHEEZE_RAMP_S * sample_rate_hz), n_samples // 2)
    ramp = np.sin(0.5 * np.pi * (np.arange(n_ramp) + 0.5) / n_ramp) ** 2
    tone[:n_ramp] *= ramp
    tone[n_samples - n_ramp :] *= ramp[::-1]
    return tone / np.max(np.abs(tone))
