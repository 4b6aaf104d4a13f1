"""What the model sees of a recording: the cached raw log features ``(K, F, T)``, after the
training-only colouring of another device, through the front end's last stage, the per-band
running normalisation (:func:`edge.features.bandnorm.normalise_bands`). It runs on every example
from its own first frame, exactly as a device's stream that starts there computes it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edge.features import FeatureSpec, band_centres_hz, silence_value
from edge.features.bandnorm import normalise_bands
from training.recipe.augment import device_colour
from training.recipe.config import AugmentConfig

Transform = Callable[[np.ndarray], np.ndarray]


class InputView:
    def __init__(self, spec: FeatureSpec, kinds: tuple[str, ...], augment: AugmentConfig):
        self.specs = [spec.replace(kind=k) for k in kinds]
        self.augment = augment
        self.normalises = spec.band_norm_s > 0
        self.centres_hz = np.stack([band_centres_hz(s) for s in self.specs])
        self.floor = silence_value(spec)

    @staticmethod
    def raw_spec(spec: FeatureSpec) -> FeatureSpec:
        """The spec the feature cache computes: the front end without its normalisation (the
        same raw features, and cache entries, whichever ``band_norm`` the run names)."""
        return spec.replace(band_norm_s=0.0, band_norm="mean")

    @property
    def transform(self) -> Transform | None:
        """Raw -> model input, for evaluation (None: the raw features are the input)."""
        return self._normalise if self.normalises else None

    def training(self, rng: np.random.Generator) -> Transform | None:
        if self.augment.device_prob <= 0:
            return self.transform

        def view(raw: np.ndarray) -> np.ndarray:
            x = raw.astype(np.float32)
            if rng.random() < self.augment.device_prob:
                x = device_colour(x, self.centres_hz, self.floor, self.augment, rng)
            return self._normalise(x) if self.normalises else x

        return view

    def _normalise(self, raw: np.ndarray) -> np.ndarray:
        x = np.asarray(raw, np.float32)
        return np.stack([normalise_bands(x[k].T, s).T for k, s in enumerate(self.specs)])
