"""The one front end, shared by training (:func:`extract`) and the device (:func:`make_stream`;
usage: docs/frontend.md). For any chunking of the same signal a stream's frames equal
``extract``'s within 1e-5; ``tests/edge/test_frontend_*.py`` hold each kind to that."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from edge.features.bandnorm import BandNormStream, normalise_bands
from edge.features.base import StreamingFrontEnd, silence_value
from edge.features.logmel import LogMelStream, SecondBank, fits_second_bank
from edge.features.spec import FEATURE_KINDS, FeatureSpec, n_frames, require_same_spec

__all__ = [
    "FEATURE_KINDS",
    "FeatureSpec",
    "FrameStream",
    "StreamingFrontEnd",
    "band_centres_hz",
    "extract",
    "lookahead_samples",
    "make_stream",
    "make_streams",
    "n_frames",
    "require_same_spec",
    "silence_value",
]

FrameStream = StreamingFrontEnd | BandNormStream | SecondBank  # push(chunk) -> frames, reset()

# kind -> (module, batch function, streaming class, band centres in Hz)
_KINDS: dict[str, tuple[str, str, str, str]] = {
    "logmel": ("edge.features.logmel", "logmel", "LogMelStream", "mel_centres_hz"),
    "gammatone": ("edge.features.gammatone", "gammatone", "GammatoneStream", "erb_centres_hz"),
    "cwt": ("edge.features.cwt", "cwt", "CwtStream", "morlet_centres_hz"),
}


def _resolve(kind: str, which: int) -> Any:
    module_name, *names = _KINDS[kind]
    return getattr(importlib.import_module(module_name), names[which])


def extract(signal: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Batch front end: (n_samples,) float -> (n_frames, n_bands) float32."""
    batch: Callable[[np.ndarray, FeatureSpec], np.ndarray] = _resolve(spec.kind, 0)
    frames = batch(signal, spec)
    return normalise_bands(frames, spec) if spec.band_norm_s > 0 else frames


def make_stream(spec: FeatureSpec, **kwargs: Any) -> FrameStream:
    stream: StreamingFrontEnd = _resolve(spec.kind, 1)(spec, **kwargs)
    return BandNormStream(stream) if spec.band_norm_s > 0 else stream


def make_streams(
    spec: FeatureSpec, second: FeatureSpec, second_bands: int | None = None, **kwargs: Any
) -> tuple[FrameStream, FrameStream]:
    """Fresh streaming front ends for ``spec`` and ``second``, pushed with the same samples,
    ``spec``'s first; one STFT serves both where :func:`~edge.features.logmel.fits_second_bank`."""
    if not fits_second_bank(spec, second):
        return make_stream(spec, **kwargs), make_stream(second, **kwargs)
    owner = LogMelStream(spec, second=second, second_bands=second_bands, **kwargs)
    first: FrameStream = BandNormStream(owner) if spec.band_norm_s > 0 else owner
    return first, SecondBank(owner)


def band_centres_hz(spec: FeatureSpec) -> np.ndarray:
    """(n_bands,) centre frequency of each band of ``spec``'s kind, Hz, increasing."""
    centres: Callable[[FeatureSpec], np.ndarray] = _resolve(spec.kind, 2)
    return np.asarray(centres(spec))


def lookahead_samples(spec: FeatureSpec) -> int:
    """Samples beyond a frame's end the kind needs (0 except for ``cwt``)."""
    if spec.kind == "cwt":
        from edge.features.cwt import morlet_bank

        return int(morlet_bank(spec).lookahead_samples)
    return 0
