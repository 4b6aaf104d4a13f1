"""Chest sounds whose breath cycles are known: the respiratory rate's truth set. Each is made at the
device's own sample rate (its band stops at that Nyquist frequency); the device path resamples it to
the model's rate as for a real file (docs/respiration.md, "Breath cycles, not breath sounds")."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy.signal import butter, resample_poly, sosfilt


@dataclass(frozen=True)
class Breathing:
    """One synthetic chest: a sin² inspiration bump over ``1 / (1 + ie_ratio)`` of each cycle,
    then expiration over ``expiration_fraction`` of the rest, S1 and S2 at ``heart_bpm``."""

    rate_bpm: float
    seconds: float = 60.0
    device_rate_hz: int = 8000
    ie_ratio: float = 2.0  # expiration time over inspiration time (1:2)
    expiration_db: float = -6.0  # its level against the inspiration's
    expiration_fraction: float = 0.8  # share of the expiration time it is heard
    inspiration_band_hz: tuple[float, float] = (150.0, 1000.0)
    expiration_band_hz: tuple[float, float] = (100.0, 500.0)
    heart_bpm: float = 75.0
    heart_db: float = 0.0  # S1's level: 0 puts its peak 6 dB over the inspiration's RMS
    snr_db: float = 30.0
    jitter: float = 0.05  # of each cycle's period, uniform ±
    pause_share: float = 0.0  # chance of an extra pause of pause_s after a cycle
    pause_s: float = 0.0
    start_s: float = 0.0  # the recording begins this far into the chest's breathing
    loudness_spread_db: float = 0.0  # each phase of each cycle this much louder or softer (±)
    # transient sounds (a rub of the bell, movement) at random times, this many a minute on
    # average, each 0.3-1 s of noise at 80-1500 Hz (below 0.45 of the device's rate) whose RMS
    # at the sound's middle stands transient_db over the recording's RMS
    transients_per_min: float = 0.0
    transient_db: float = 6.0
    seed: int = 0
    name: str = field(default="", compare=False)

    def label(self) -> str:
        return self.name or (
            f"rr{self.rate_bpm:g}_fs{self.device_rate_hz}_exp{self.expiration_db:g}dB_"
            f"ie{self.ie_ratio:g}_hr{self.heart_bpm:g}_snr{self.snr_db:g}"
            + ("_alike" if self.expiration_band_hz == self.inspiration_band_hz else "")
            + (f"_pause{self.pause_share:g}x{self.pause_s:.2g}" if self.pause_share else "")
            + (f"_at{self.start_s:.2f}" if self.start_s else "")
            + (f"_vary{self.loudness_spread_db:g}dB" if self.loudness_spread_db else "")
            + (
                f"_tr{self.transients_per_min:g}x{self.transient_db:g}dB"
                if self.transients_per_min
                else ""
            )
            + f"_s{self.seed}"
        )


@dataclass(frozen=True)
class Truth:
    onsets_s: tuple[float, ...]  # each cycle's inspiration onset (< 0: begun before the start)
    cycles: int  # cycles whose inspiration peaks inside the recording
    rate_bpm: float  # 60 / the mean interval between those peaks (cycles per minute if < 2)
    count_rate_bpm: float  # cycles per minute of recording

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "onsets_s": [round(t, 3) for t in self.onsets_s]}


def _band(lo: float, hi: float, rate_hz: int) -> np.ndarray:
    nyquist = rate_hz / 2
    hi = min(hi, 0.45 * rate_hz)
    if lo >= hi:
        raise ValueError(f"band {lo:g}-{hi:g} Hz lies above the device's Nyquist {nyquist:g} Hz")
    return butter(4, [lo, hi], "band", fs=rate_hz, output="sos")


def _bumps(
    n: int, rate_hz: int, spans: list[tuple[float, float]], gains: np.ndarray | None = None
) -> np.ndarray:
    """A sin² bump over each span (seconds), scaled by its gain where ``gains`` is given."""
    out = np.zeros(n)
    for i, (start, stop) in enumerate(spans):
        a, b = max(0, round(start * rate_hz)), min(n, round(stop * rate_hz))
        if b - a < 2:
            continue
        phase = (np.arange(a, b) - start * rate_hz) / ((stop - start) * rate_hz)
        out[a:b] = np.sin(np.pi * np.clip(phase, 0.0, 1.0)) ** 2
        if gains is not None:
            out[a:b] *= gains[i]
    return out


def _transients(spec: Breathing, audio: np.ndarray) -> np.ndarray:
    """The recording's transient sounds (:attr:`Breathing.transients_per_min`), to add to it."""
    rng = np.random.default_rng((spec.seed, 2))
    fs, n = spec.device_rate_hz, audio.shape[0]
    mean_gap_s = 60.0 / spec.transients_per_min
    spans, at = [], rng.exponential(mean_gap_s)
    while at < spec.seconds:
        spans.append((at, at + rng.uniform(0.3, 1.0)))
        at += rng.exponential(mean_gap_s)
    noise = _unit(sosfilt(_band(80.0, 1500.0, fs), rng.normal(0, 1, n)))
    level = float(np.sqrt(np.mean(audio**2))) * 10 ** (spec.transient_db / 20)
    return level * noise * _bumps(n, fs, spans)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.sqrt(np.mean(x**2))), 1e-12)


def synthesize(spec: Breathing) -> tuple[np.ndarray, Truth]:
    """(audio at ``spec.device_rate_hz``, float32, peak ≤ 0.9) and its truth."""
    if not 1.0 <= spec.rate_bpm <= 120.0:
        raise ValueError(f"rate_bpm must be in [1, 120], got {spec.rate_bpm!r}")
    if not 0.0 <= spec.jitter < 0.5:
        raise ValueError(f"jitter must be in [0, 0.5), got {spec.jitter!r}")
    if not spec.seconds > 0:
        raise ValueError(f"seconds must be > 0, got {spec.seconds!r}")
    if not 0.0 <= spec.start_s <= 600.0:
        raise ValueError(f"start_s must be in [0, 600], got {spec.start_s!r}")
    if not 0.0 <= spec.loudness_spread_db <= 20.0:
        raise ValueError(f"loudness_spread_db must be in [0, 20], got {spec.loudness_spread_db!r}")
    if not 0.0 <= spec.transients_per_min <= 60.0:
        raise ValueError(f"transients_per_min must be in [0, 60], got {spec.transients_per_min!r}")
    if not -40.0 <= spec.transient_db <= 40.0:
        raise ValueError(f"transient_db must be in [-40, 40], got {spec.transient_db!r}")
    if not spec.ie_ratio > 0 or not 0.0 < spec.expiration_fraction <= 1.0:
        raise ValueError(
            f"ie_ratio must be > 0 and expiration_fraction in (0, 1], got {spec.ie_ratio!r} "
            f"and {spec.expiration_fraction!r}"
        )
    rng = np.random.default_rng(spec.seed)
    fs = spec.device_rate_hz
    total_s = spec.start_s + spec.seconds  # made from the chest's start, kept from start_s
    n = round(total_s * fs)
    period = 60.0 / spec.rate_bpm
    onsets, inspirations, expirations = [], [], []
    at = 0.3 * period * rng.uniform(0.5, 1.5)
    while at < total_s:
        cycle = period * (1.0 + rng.uniform(-spec.jitter, spec.jitter))
        t_in = cycle / (1.0 + spec.ie_ratio)
        t_ex = (cycle - t_in) * spec.expiration_fraction
        onsets.append(at)
        inspirations.append((at, at + t_in))
        expirations.append((at + t_in, at + t_in + t_ex))
        at += cycle + (spec.pause_s if rng.uniform() < spec.pause_share else 0.0)
    noise_in = _unit(sosfilt(_band(*spec.inspiration_band_hz, fs), rng.normal(0, 1, n)))
    noise_ex = _unit(sosfilt(_band(*spec.expiration_band_hz, fs), rng.normal(0, 1, n)))
    gain_in = gain_ex = None
    if spec.loudness_spread_db > 0:  # its own draws: the chests without it stay as they were
        vary = np.random.default_rng((spec.seed, 1))
        spread = spec.loudness_spread_db
        gain_in = 10 ** (vary.uniform(-spread, spread, len(inspirations)) / 20)
        gain_ex = 10 ** (vary.uniform(-spread, spread, len(expirations)) / 20)
    breath = noise_in * _bumps(n, fs, inspirations, gain_in)
    breath += 10 ** (spec.expiration_db / 20) * noise_ex * _bumps(n, fs, expirations, gain_ex)
    heart = np.zeros(n)
    if spec.heart_bpm > 0:
        beat = 60.0 / spec.heart_bpm
        sounds = []
        t = rng.uniform(0, beat)
        while t < total_s:  # S1, then S2 a third of the beat later
            sounds += [(t, 0.1, 1.0), (t + min(0.35, beat / 3), 0.08, 0.7)]
            t += beat * (1.0 + rng.uniform(-0.03, 0.03))
        low = _unit(sosfilt(_band(30.0, 150.0, fs), rng.normal(0, 1, n)))
        for start, length, gain in sounds:
            heart += gain * low * _bumps(n, fs, [(start, start + length)])
        heart *= 10 ** (spec.heart_db / 20) * 2.0  # a burst's peak level over the noise's RMS
    noise = 10 ** (-spec.snr_db / 20) * rng.normal(0, 1, n)
    audio = (breath + heart + noise)[n - round(spec.seconds * fs) :]
    if spec.transients_per_min > 0:  # its own draws: the chests without them stay as they were
        audio = audio + _transients(spec, audio)
    audio *= 0.9 / max(float(np.max(np.abs(audio))), 1e-12)
    peaks = [(a + b) / 2 - spec.start_s for a, b in inspirations]
    inside = [p for p in peaks if 0.0 <= p < spec.seconds]
    count_rate = 60.0 * len(inside) / spec.seconds
    rate = 60.0 * (len(inside) - 1) / (inside[-1] - inside[0]) if len(inside) > 1 else count_rate
    begun = [t for t in onsets if t <= spec.start_s]  # the cycle the start cut, and later ones
    kept = tuple(t - spec.start_s for t in onsets if t >= (begun[-1] if begun else 0.0))
    return audio.astype(np.float32), Truth(kept, len(inside), rate, count_rate)


def stretch(audio: np.ndarray, factor: float) -> np.ndarray:
    """``audio`` played ``factor`` times faster at the same sample rate: its rate times
    ``factor``, its spectrum moved with it (0.8-1.25 keeps the breath sounds in their band)."""
    if not 0.25 <= factor <= 4.0:
        raise ValueError(f"factor must be in [0.25, 4], got {factor!r}")
    up = 100
    down = round(up * factor)
    return resample_poly(audio.astype(np.float64), up, down).astype(np.float32)


# The set: each device rate x each age's rates x the ways a chest differs (VARIANTS).
ADULT_RATES = (4.0, 6.0, 8.0, 10.0, 12.0, 15.0, 18.0, 20.0, 24.0, 30.0, 40.0, 50.0, 60.0)
CHILD_RATES = (20.0, 25.0, 30.0, 40.0, 50.0, 60.0)
DEVICE_RATES_HZ = (2000, 4000, 4500, 8000)
VARIANTS: tuple[dict[str, Any], ...] = (
    {"expiration_db": -6.0},
    {"expiration_db": 0.0, "ie_ratio": 1.5},
    {"expiration_db": -2.0, "heart_bpm": 140.0, "heart_db": 6.0},
    {"expiration_db": -10.0, "snr_db": 15.0, "heart_bpm": 60.0},
    {"expiration_db": 0.0, "ie_ratio": 1.0, "expiration_fraction": 1.0},
    {
        "expiration_db": -3.0,
        "ie_ratio": 1.2,
        "expiration_fraction": 0.9,
        "pause_share": 0.25,
        "pause_periods": 0.75,
    },
    # phases alike in spectrum and length, the expiration 2 dB softer (the loudness tells them)
    {
        "expiration_db": -2.0,
        "ie_ratio": 1.2,
        "expiration_fraction": 0.9,
        "expiration_band_hz": (150.0, 1000.0),
    },
)


def truth_set(seconds: float = 60.0) -> list[tuple[Breathing, str]]:
    """Every recording of the set and the age band a ward would configure for it."""
    out = []
    for fs in DEVICE_RATES_HZ:
        for age, rates in (("adult", ADULT_RATES), ("child-1-5y", CHILD_RATES)):
            for i, rate in enumerate(rates):
                for j, variant in enumerate(VARIANTS):
                    heart = variant.get("heart_bpm", 75.0 if age == "adult" else 110.0)
                    pause = variant.get("pause_periods", 0.0) * 60.0 / rate
                    given = {
                        k: v for k, v in variant.items() if k not in ("pause_periods", "heart_bpm")
                    }
                    spec = replace(
                        Breathing(rate_bpm=rate, seconds=seconds, device_rate_hz=fs),
                        seed=1000 * i + j, heart_bpm=heart, pause_s=pause, **given,
                    )  # fmt: skip
                    out.append((spec, age))
    return out


# Chests a stethoscope is put on at any point of a cycle: the regular adult chests at paced rates
STARTED_RATES = (8.0, 10.0, 12.0, 15.0, 18.0, 20.0, 24.0)
_GOLDEN = (5**0.5 - 1) / 2  # spreads the starts evenly over the cycle, chest after chest


def started_set(seconds: float = 60.0) -> list[tuple[Breathing, str]]:
    """The :data:`VARIANTS` without pauses at :data:`STARTED_RATES` on every device, each
    recording beginning at another point of its cycle: one to two cycles into the chest (its
    first cycle begins after a pause of 0.15-0.45 cycle), the share of a cycle stepping by the
    golden ratio from chest to chest (docs/respiration.md, "Started anywhere in a cycle")."""
    out: list[tuple[Breathing, str]] = []
    regular = [v for v in VARIANTS if "pause_share" not in v]
    # the chests alike in sound (in the set since 2026-12-01) come last: the others keep the
    # starts they were measured at
    for alike in (False, True):
        for fs in DEVICE_RATES_HZ:
            for i, rate in enumerate(STARTED_RATES):
                for j, variant in enumerate(regular):
                    if ("expiration_band_hz" in variant) != alike:
                        continue
                    phase = ((len(out) + 1) * _GOLDEN) % 1.0
                    given = {k: v for k, v in variant.items() if k != "heart_bpm"}
                    spec = replace(
                        Breathing(rate_bpm=rate, seconds=seconds, device_rate_hz=fs),
                        seed=20000 + 1000 * i + j, heart_bpm=variant.get("heart_bpm", 75.0),
                        start_s=round((1.0 + phase) * 60.0 / rate, 3), **given,
                    )  # fmt: skip
                    out.append((spec, "adult"))
    return out
