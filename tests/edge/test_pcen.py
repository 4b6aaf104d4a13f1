"""PCEN, the other per-band running normalisation (edge.features.bandnorm, band_norm="pcen"):
the Numba kernel against a plain NumPy reference (streaming equals batch and reset are held
with the running mean's, tests/edge/test_bandnorm.py), a fixed frequency response removed up to
its gain to the 0.02, digital silence leaves the smoother alone, and the spec field
(validation, old dicts, the cache's raw spec)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.features import FeatureSpec, extract, make_stream
from edge.features.bandnorm import (
    PCEN_ALPHA,
    PCEN_DELTA,
    PCEN_ROOT,
    BandNormStream,
    alpha_of,
    normalise_bands,
    silent_below,
)
from edge.features.base import silence_value
from lungwatch.config import InvalidValueError
from lungwatch.errors import ConfigError
from tests.edge.chunking import KERNEL_SIZES, frames_with_a_gap
from tests.edge.chunking import tone_in_noise as signal
from training.recipe.config import AugmentConfig, load_run
from training.recipe.inputs import InputView

SPEC = FeatureSpec(n_bands=24, band_norm_s=2.0, band_norm="pcen")
OFFSET = PCEN_DELTA**PCEN_ROOT  # y + OFFSET = (ratio + DELTA) ** ROOT


def reference(frames: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """The module doc's PCEN recursion, written out in NumPy (float64, linear power)."""
    smooth, count = np.zeros(frames.shape[1]), 0
    out = np.empty(frames.shape, np.float64)
    for t, frame in enumerate(frames.astype(np.float64)):
        power = np.exp(frame)
        if (frame > silent_below(spec)).any():
            count += 1
            smooth += max(1.0 / count, alpha_of(spec)) * (power - smooth)
        ratio = power / (spec.log_offset + smooth) ** PCEN_ALPHA
        out[t] = (ratio + PCEN_DELTA) ** PCEN_ROOT - OFFSET
    return out


@pytest.mark.parametrize(("n_frames", "n_bands"), KERNEL_SIZES)
def test_the_kernel_equals_the_reference(n_frames: int, n_bands: int) -> None:
    frames, spec = frames_with_a_gap(SPEC, n_frames, n_bands)
    np.testing.assert_allclose(
        normalise_bands(frames, spec), reference(frames, spec), rtol=1e-5, atol=1e-6
    )


def test_a_silent_start_stays_finite() -> None:
    """Before the first frame of sound the smoother is 0: ``eps`` keeps the ratio finite."""
    frames = np.full((50, 4), silence_value(SPEC), np.float32)
    frames[30:] = -1.0  # a loud band after a silent start
    out = normalise_bands(frames, SPEC.replace(n_bands=4))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, reference(frames, SPEC.replace(n_bands=4)), rtol=1e-5)
    assert (out[:30] < 1.0).all()


def test_extract_applies_pcen_to_the_raw_features() -> None:
    x = signal(8000, seed=2)
    raw = extract(x, SPEC.replace(band_norm_s=0.0, band_norm="mean"))
    pcen = extract(x, SPEC)
    np.testing.assert_array_equal(pcen, normalise_bands(raw, SPEC))
    assert (pcen >= 0).all()  # the ratio is positive, so y > 0
    assert not np.allclose(pcen, extract(x, SPEC.replace(band_norm="mean")))


def test_a_fixed_frequency_response_is_removed_up_to_its_gain_to_the_002() -> None:
    """A per-band gain ``g`` (an offset ``ln g`` per log band) scales the power and its smoother
    alike: the ratio moves by ``g**(1 - ALPHA)``, so ``y + DELTA**ROOT`` by at most
    ``g**((1 - ALPHA) * ROOT)`` (the eps term, 1e-10, is negligible at these levels). For this
    -13..+9 dB tilt that is within 3 % of ``y + DELTA**ROOT``, from the first frame on."""
    x = signal(16000, seed=5)
    plain = extract(x, SPEC.replace(band_norm_s=0.0, band_norm="mean"))
    tilt = np.linspace(-3.0, 2.0, SPEC.n_bands, dtype=np.float32)  # -13 to +9 dB
    y, tilted = normalise_bands(plain, SPEC), normalise_bands(plain + tilt, SPEC)
    factor = np.exp((1.0 - PCEN_ALPHA) * PCEN_ROOT * tilt)  # g ** 0.01 per band
    bound = np.abs(factor - 1.0) * (y + OFFSET) + 1e-5
    assert (np.abs(tilted - y) <= bound).all()
    assert (np.abs(tilted - y) <= 0.03 * (y + OFFSET)).all()  # the stated tolerance
    # without the normalisation the gain passes straight through: PCEN of the linear power
    # without the smoother's division would move by g ** 0.5, 0.22..2.7
    assert np.abs(plain + tilt - plain).max() > 2.9


def test_digital_silence_does_not_move_the_smoother() -> None:
    frames = np.full((300, 4), -5.0, np.float32)
    frames[100:200] = silence_value(SPEC)
    spec = SPEC.replace(n_bands=4)
    out = normalise_bands(frames, spec)
    steady = (np.exp(-5.0 * (1.0 - PCEN_ALPHA)) + PCEN_DELTA) ** PCEN_ROOT - OFFSET
    np.testing.assert_allclose(out[:100], steady, rtol=1e-5)
    np.testing.assert_allclose(out[200:], steady, rtol=1e-5)  # M is still e**-5 after the gap
    assert (out[100:200] < 1e-6).all()  # the gap itself: ratio ~1e-10 / e**-4.9, y ~ 0


def test_a_silent_chunk_leaves_the_stream_state_alone() -> None:
    stream = make_stream(SPEC)
    assert isinstance(stream, BandNormStream)
    stream.push(np.concatenate([signal(4000, seed=6), np.zeros(1000)]))  # frames past the end
    state, count = stream._mean.copy(), stream._count.copy()  # of the sound are all zeros now
    assert count[0] > 0
    assert (stream.push(np.zeros(4000)) < 1e-6).all()
    np.testing.assert_array_equal(stream._mean, state)
    np.testing.assert_array_equal(stream._count, count)


def test_the_spec_field_is_validated_by_name() -> None:
    with pytest.raises(InvalidValueError, match=r"band_norm must be one of \('mean', 'pcen'\)"):
        FeatureSpec(band_norm_s=4.0, band_norm="foo")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"model\.ckpt: band_norm must be one of"):
        FeatureSpec.from_dict({"band_norm_s": 4.0, "band_norm": "foo"}, source="model.ckpt")
    with pytest.raises(InvalidValueError, match="band_norm must be 'mean' unless band_norm_s > 0"):
        FeatureSpec(band_norm="pcen")  # band_norm_s 0: nothing to switch on


def test_a_spec_dict_without_band_norm_still_loads_and_hashes_as_before() -> None:
    old = FeatureSpec(band_norm_s=8.0, fmax_hz=1000.0).to_dict()
    assert "band_norm" not in old  # the default is left out: saved specs and cache keys stay
    assert FeatureSpec.from_dict(old).band_norm == "mean"
    pcen = FeatureSpec(band_norm_s=8.0, band_norm="pcen")
    assert pcen.to_dict()["band_norm"] == "pcen"  # a PCEN model's manifest says so
    assert FeatureSpec.from_dict(pcen.to_dict()) == pcen


def test_the_training_view_gets_pcen_from_the_shared_raw_cache() -> None:
    spec = FeatureSpec(n_bands=24, band_norm_s=2.0, band_norm="pcen")
    raw = InputView.raw_spec(spec)
    assert raw == FeatureSpec(n_bands=24)  # the same cache entries as a running-mean run
    view = InputView(spec, ("logmel", "gammatone"), AugmentConfig())
    x = signal(8000, seed=7)
    stored = np.stack([extract(x, raw.replace(kind=k)).T for k in ("logmel", "gammatone")])
    seen = view.transform(stored)  # type: ignore[misc]
    for k, kind in enumerate(("logmel", "gammatone")):
        np.testing.assert_allclose(seen[k].T, extract(x, spec.replace(kind=kind)), atol=1e-6)


def test_the_run_config_passes_band_norm_to_the_feature_spec() -> None:
    sets = ["features.band_norm_s=8", "features.band_norm=pcen"]
    run = load_run(Path("training/configs/sed.yaml"), sets)
    assert run.features.band_norm == "pcen"
    with pytest.raises(ConfigError, match=r"sed\.yaml: features\.band_norm must be one of"):
        load_run(Path("training/configs/sed.yaml"), [*sets[:1], "features.band_norm=foo"])
