"""What the model sees of a recording: the cached raw log features ``(K, F, T)`` through the front
end's last stage, the running band normalisation (:func:`edge.features.bandnorm.normalise_bands`),
run from each example's own first frame as on a device whose stream starts there."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edge.features import FeatureSpec
from edge.features.bandnorm import normalise_bands

Transform = Callable[[np.ndarray], np.ndarray]


class InputView:
    def __init__(self, spec: FeatureSpec, kinds: tuple[str, ...]):
        self.specs = [spec.replace(kind=k) for k in kinds]
        self.normalises = spec.band_norm_s > 0

    @staticmethod
    def raw_spec(spec: FeatureSpec) -> FeatureSpec:
        """The spec the feature cache computes: the front end without its normalisation."""
        return spec.replace(band_norm_s=0.0)

    @property
    def transform(self) -> Transform | None:
        """Raw -> model input, for evaluation (None: the raw features are the input)."""
        return self._normalise if self.normalises else None

    def _normalise(self, raw: np.ndarray) -> np.ndarray:
        x = np.asarray(raw, np.float32)
        return np.stack([normalise_bands(x[k].T, s).T for k, s in enumerate(self.specs)])
