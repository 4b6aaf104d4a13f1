"""The feature spec: the contract between training and the device (fields and the framing
convention: docs/frontend.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt

from lungwatch.config import Settings, check, from_mapping, to_mapping
from lungwatch.errors import FeatureSpecMismatchError

FeatureKind = Literal["logmel", "gammatone", "cwt"]
Normalisation = Literal["log", "power"]

FEATURE_KINDS: tuple[str, ...] = ("logmel", "gammatone", "cwt")
SPEC_VERSION = 1


@dataclass(frozen=True)
class FeatureSpec(Settings):
    """Sizes in samples at ``sample_rate_hz``; each field: docs/frontend.md, "FeatureSpec"."""

    kind: FeatureKind = "logmel"
    sample_rate_hz: Annotated[int, Field(ge=1000)] = 8000
    frame_samples: Annotated[int, Field(ge=16)] = 256
    hop_samples: int = 80
    n_fft: int = 512
    n_bands: PositiveInt = 64
    fmin_hz: NonNegativeFloat = 50.0
    fmax_hz: float = 4000.0
    normalisation: Normalisation = "log"
    log_offset: PositiveFloat = 1e-10
    morlet_w0: Annotated[float, Field(ge=3.0, le=20.0)] = 6.0
    band_norm_s: NonNegativeFloat = 0.0
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        check(self.kind in FEATURE_KINDS, "kind", self.kind, f"one of {FEATURE_KINDS}")
        check(
            self.normalisation in ("log", "power"),
            "normalisation",
            self.normalisation,
            "one of ('log', 'power')",
        )
        check(
            1 <= self.hop_samples <= self.frame_samples,
            "hop_samples",
            self.hop_samples,
            f"an integer in [1, frame_samples={self.frame_samples}]",
        )
        check(
            self.n_fft >= self.frame_samples and _is_power_of_two(self.n_fft),
            "n_fft",
            self.n_fft,
            f"a power of two >= frame_samples={self.frame_samples}",
        )
        nyquist = self.sample_rate_hz / 2
        check(
            self.fmin_hz < self.fmax_hz <= nyquist,
            "fmax_hz",
            self.fmax_hz,
            f"a number in (fmin_hz={self.fmin_hz}, nyquist={nyquist}]",
        )
        check(
            self.band_norm_s == 0.0 or self.normalisation == "log",
            "band_norm_s",
            self.band_norm_s,
            "0 unless normalisation is 'log'",
        )
        check(self.version == SPEC_VERSION, "version", self.version, f"{SPEC_VERSION}")

    @property
    def hop_ms(self) -> float:
        return 1000.0 * self.hop_samples / self.sample_rate_hz

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    def replace(self, **changes: Any) -> FeatureSpec:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as stored in checkpoints and manifests (and hashed by the feature cache)."""
        return to_mapping(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "feature spec") -> FeatureSpec:
        """Inverse of :meth:`to_dict`; errors name ``source`` and the key."""
        return from_mapping(cls, data, source=source)


def n_frames(spec: FeatureSpec, n_samples: int, lookahead_samples: int = 0) -> int:
    """Frames a signal of ``n_samples`` yields under the framing convention."""
    usable = n_samples - spec.frame_samples - lookahead_samples
    return 0 if usable < 0 else usable // spec.hop_samples + 1


def require_same_spec(model_spec: FeatureSpec, configured: FeatureSpec, model_name: str) -> None:
    """Refuse a model made for another front end; the message lists every differing key."""
    if model_spec == configured:
        return
    diffs = [
        f"{f.name}: model {getattr(model_spec, f.name)!r} vs config {getattr(configured, f.name)!r}"
        for f in dataclasses.fields(FeatureSpec)
        if getattr(model_spec, f.name) != getattr(configured, f.name)
    ]
    raise FeatureSpecMismatchError(f"{model_name}: feature spec differs ({'; '.join(diffs)})")


def _is_power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0
