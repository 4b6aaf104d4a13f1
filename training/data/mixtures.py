"""Training material with complete labels: annotated adventitious sounds of training records
(donors) placed into Normal ones (hosts); how: docs/training.md (``mixtures.*``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from pydantic import NonNegativeInt
from scipy.signal import resample_poly

from edge.bed.detector import FrameGrid
from edge.features import FeatureSpec, extract
from lungwatch.config import Settings, check
from lungwatch.labels import NORMAL, SOUND_CLASSES
from training.data.features import FeatureStore
from training.data.recordings import Recording, output_frames
from training.data.sprsound import SprRecord
from training.data.targets import BREATH_INDEX, frame_targets

FADE_S = 0.02
# the sounds inserted, by family (a composite by its first: Wheeze+Crackle is CAS)
CAS_TYPES = tuple(c.name for c in SOUND_CLASSES if c.families[:1] == ("CAS",))
DAS_TYPES = tuple(c.name for c in SOUND_CLASSES if c.families[:1] == ("DAS",))
MIN_SEGMENT_S, MAX_SEGMENT_S = 0.2, 3.0
RMS_FLOOR = 1e-6


@dataclass(frozen=True)
class MixtureConfig(Settings):
    count: NonNegativeInt = 0  # 0: none
    events: tuple[int, int] = (1, 4)  # inserted segments per mixture
    level_db: tuple[float, float] = (-6.0, 6.0)  # segment RMS against the host's
    rate_cas: tuple[float, float] = (0.8, 1.25)  # resampling of wheeze-family segments
    rate_das: tuple[float, float] = (0.95, 1.05)  # and of crackles
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("events", "level_db", "rate_cas", "rate_das"):
            lo, hi = getattr(self, key)
            check(lo <= hi, key, getattr(self, key), "[low, high] with low <= high")
        check(self.events[0] >= 1, "events", self.events, "[low, high] with low >= 1")
        ok = min(self.rate_cas + self.rate_das) > 0
        check(ok, "rate_cas", self.rate_cas, "factors > 0 (rate_das too)")


@dataclass(frozen=True)
class Segment:
    type: str
    samples: np.ndarray


def donor_segments(records: Sequence[SprRecord], store: FeatureStore) -> list[Segment]:
    rate = store.sample_rate_hz
    out = []
    for record in records:
        events = [e for e in record.events if e.type in CAS_TYPES + DAS_TYPES]
        if not events:
            continue
        audio = store.samples(record.audio_path)
        for e in events:
            lo, hi = round(e.start_ms * rate / 1000), round(e.end_ms * rate / 1000)
            if MIN_SEGMENT_S * rate <= hi - lo <= MAX_SEGMENT_S * rate and hi <= audio.shape[0]:
                out.append(Segment(e.type, np.array(audio[lo:hi], np.float32)))
    return out


def resampled(x: np.ndarray, factor: float) -> np.ndarray:
    """``x`` played ``factor`` times faster (pitch up by ``factor``, length / ``factor``)."""
    ratio = Fraction(factor).limit_denominator(40)
    return resample_poly(x, ratio.denominator, ratio.numerator).astype(np.float32)


def faded(x: np.ndarray, rate_hz: int) -> np.ndarray:
    n = min(int(FADE_S * rate_hz), x.shape[0] // 2)
    ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
    y = x.copy()
    y[:n] *= ramp
    y[y.shape[0] - n :] *= ramp[::-1]
    return y


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) + RMS_FLOOR


def mix_one(
    host: np.ndarray, segments: Sequence[Segment], cfg: MixtureConfig, rate_hz: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[tuple[float, float, str]]]:  # fmt: skip
    """The host with each segment added at a random free place; the inserted events."""
    out = host.astype(np.float32).copy()
    events: list[tuple[float, float, str]] = []
    taken: list[tuple[int, int]] = []
    level = rms(host)
    for seg in segments:
        lo_rate, hi_rate = cfg.rate_cas if seg.type in CAS_TYPES else cfg.rate_das
        x = resampled(seg.samples, float(rng.uniform(lo_rate, hi_rate)))
        if x.shape[0] >= out.shape[0]:
            continue
        gain = level / rms(x) * 10 ** (rng.uniform(*cfg.level_db) / 20)
        for _ in range(10):  # a free place, else the segment is left out
            start = int(rng.integers(0, out.shape[0] - x.shape[0] + 1))
            end = start + x.shape[0]
            if all(end <= a or start >= b for a, b in taken):
                out[start:end] += faded(x * gain, rate_hz)
                taken.append((start, end))
                events.append((start / rate_hz, end / rate_hz, seg.type))
                break
    return np.clip(out, -1.0, 1.0), events


def make_mixtures(
    records: Sequence[SprRecord],
    store: FeatureStore,
    spec: FeatureSpec,
    kinds: Sequence[str],
    grid: FrameGrid,
    stride: int,
    cfg: MixtureConfig,
    unannotated_weight: float = 0.5,
) -> list[Recording]:
    if cfg.count <= 0:
        return []
    rng = np.random.default_rng(cfg.seed)
    hosts = [r for r in records if r.record_label == NORMAL]
    segments = donor_segments(records, store)
    by_family = ([s for s in segments if s.type in types] for types in (CAS_TYPES, DAS_TYPES))
    families = [f for f in by_family if f]
    if not hosts or not families:
        return []
    rate = store.sample_rate_hz
    out = []
    for i in range(cfg.count):
        host = hosts[int(rng.integers(len(hosts)))]
        n = int(rng.integers(cfg.events[0], cfg.events[1] + 1))
        picks = []
        for _ in range(n):
            family = families[int(rng.integers(len(families)))]
            picks.append(family[int(rng.integers(len(family)))])
        audio, inserted = mix_one(store.samples(host.audio_path), picks, cfg, rate, rng)
        per_kind = [extract(audio, spec.replace(kind=k)) for k in kinds]  # (T_k, F) each
        shortest = min(f.shape[0] for f in per_kind)  # a kind with look-ahead has fewer
        features = np.stack([f[:shortest].T for f in per_kind]).astype(np.float16)  # (K, F, T)
        events = tuple(host.events_s + inserted)
        frames = output_frames(features.shape[2], stride)
        targets, weights = frame_targets(events, NORMAL, grid, frames, unannotated_weight)
        weights[:BREATH_INDEX] = 1.0  # complete labels: no adventitious sound but the inserts
        out.append(
            Recording(f"mix-{i:05d}-{host.record_id}", host.patient_id, "mixture", features,
                      targets, weights, events)
        )  # fmt: skip
    return out
