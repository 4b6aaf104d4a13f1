"""Sound where the training recordings hold none: a diagnostic for the ``poor_signal`` reason.

SPRSound's stethoscope records nothing above about 0.8 kHz, so the model calls another stethoscope's
sound there Poor Quality; "model Poor Quality" alone would send a nurse to reposition a chest piece
that is fine, so the gate adds this module's sentence to the reason. A kind's silent bands are the
top run of bands whose training mean (the manifest's flush frame) lies within :data:`SILENT_MARGIN`
of the log floor. Only ``log`` normalisation without band normalisation has a floor; other specs
(the shipped model's) get no diagnostic."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.features import FeatureSpec, band_centres_hz, silence_value

SILENT_MARGIN = 0.5  # ln units (2.2 dB) above the floor: a band silent in training
EXCESS_DB = 6.0  # silent-band excess the reason names; measured: docs/events.md, "Technical types"
DB_PER_LN = 10.0 / math.log(10.0)  # ln(power) units -> dB


@dataclass(frozen=True)
class SilentBands:
    mask: np.ndarray  # (K, F) bool: silent in training (each kind's top run)
    mean: np.ndarray  # (K, F) float32: the training mean (a read-only copy)
    lowest_hz: float  # centre frequency of the lowest silent band over the kinds

    @classmethod
    def of(
        cls, spec: FeatureSpec, kinds: Sequence[str], training_mean: np.ndarray
    ) -> SilentBands | None:
        """None if no band is silent or the spec has no log floor."""
        mean = np.array(training_mean, dtype=np.float32)  # a copy: made read-only below
        if mean.shape != (len(kinds), spec.n_bands):
            raise ValueError(
                f"training mean must be ({len(kinds)}, {spec.n_bands}), got {mean.shape}"
            )
        if spec.normalisation != "log" or spec.band_norm_s > 0:
            return None  # no floor: a band-normalised spec's frames sit about 0 in every band
        floor = mean <= silence_value(spec) + SILENT_MARGIN
        mask = np.zeros_like(floor)
        for k in range(len(kinds)):
            sound = np.flatnonzero(~floor[k])
            if sound.size:  # the bands above the highest band with sound
                mask[k, sound[-1] + 1 :] = True
        if not mask.any():
            return None
        lowest = min(
            float(band_centres_hz(spec.replace(kind=kind))[mask[k]].min())
            for k, kind in enumerate(kinds)
            if mask[k].any()
        )
        mask.setflags(write=False)
        mean.setflags(write=False)
        return cls(mask, mean, lowest)

    def excess_db(self, features: np.ndarray) -> float:
        """Mean excess, dB, of ``features`` (K, F, T) over the training mean in the silent bands."""
        x = np.asarray(features, np.float32)
        if x.ndim != 3 or x.shape[:2] != self.mask.shape or x.shape[2] == 0:
            k, f = self.mask.shape
            raise ValueError(f"features must be ({k}, {f}, T) with T > 0, got {x.shape}")
        excess = x[self.mask] - self.mean[self.mask][:, None]
        return float(excess.mean()) * DB_PER_LN

    def describe(self, features: np.ndarray) -> str | None:
        """The sentence for the reason, or None below :data:`EXCESS_DB`."""
        excess = self.excess_db(features)
        if excess < EXCESS_DB:
            return None
        return (
            f"sound above {self.lowest_hz:.0f} Hz, {excess:.0f} dB above the floor where the "
            "training recordings hold none (another stethoscope or microphone, or broadband "
            "noise? docs/models/sed.md, Few stethoscopes)"
        )
