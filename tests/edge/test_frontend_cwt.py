"""The Morlet scalogram front end (``kind="cwt"``): design, batch, streaming parity, lookahead.

The reference here is rebuilt from the textbook formulas in the module docstring of
:mod:`edge.features.cwt` with ``np.convolve``; it shares no code with the implementation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge.features import extract, lookahead_samples, make_stream
from edge.features.cwt import CwtStream, cwt, morlet_bank, morlet_centres_hz
from edge.features.spec import FeatureSpec, n_frames
from lungwatch.config import InvalidValueError
from tests.edge.chunking import push_in_chunks

FS_HZ = 8000
#: Few bands keep the tests fast; fmin 50 Hz still gives the long (1145-tap) wavelets.
SMALL = FeatureSpec(kind="cwt", n_bands=12)
#: fmin high enough that every wavelet fits in the frame: lookahead 0.
SHORT_WAVELETS = FeatureSpec(kind="cwt", n_bands=10, fmin_hz=1000.0, normalisation="power")
PARITY_ATOL = 1e-5  # on log values (the front-end contract)


def _noise(n_samples: int, seed: int = 0) -> np.ndarray:
    return 0.1 * np.random.default_rng(seed).standard_normal(n_samples)


def _reference_layout(spec: FeatureSpec) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Textbook centres (Hz), normalised Morlet kernels psi[-K..K], evaluation offsets."""
    fs, hop = spec.sample_rate_hz, spec.hop_samples
    centres = np.geomspace(spec.fmin_hz, spec.fmax_hz, spec.n_bands + 2)[1:-1]
    kernels, offsets = [], []
    for f_hz in centres:
        sigma_s = spec.morlet_w0 / (2 * np.pi * f_hz)
        half = math.ceil(4 * sigma_s * fs)
        k = np.arange(-half, half + 1)
        g = np.exp(-((k / fs) ** 2) / (2 * sigma_s**2))
        kernels.append(g * np.exp(1j * 2 * np.pi * f_hz * k / fs) / (g.sum() / 2))
        stride = min(max(round(sigma_s * fs), 1), hop)
        spacing = max(d for d in range(1, stride + 1) if hop % d == 0)
        count = hop // spacing
        offsets.append(np.arange(count) * spacing - (count - 1) * spacing // 2)
    return centres, kernels, offsets


def _reference_lookahead(spec: FeatureSpec) -> int:
    _, kernels, offsets = _reference_layout(spec)
    reach = max((len(psi) - 1) // 2 + o.max() for psi, o in zip(kernels, offsets, strict=True))
    return max(0, reach - (spec.frame_samples - spec.frame_samples // 2) + 1)


def _reference_power(x: np.ndarray, spec: FeatureSpec, bands: list[int]) -> np.ndarray:
    """(n_frames, len(bands)) mean |c|^2 with c[n] = sum_k x[n+k] conj(psi[k]), zeros before 0."""
    _, kernels, offsets = _reference_layout(spec)
    count = n_frames(spec, x.shape[0], _reference_lookahead(spec))
    centres = np.arange(count) * spec.hop_samples + spec.frame_samples // 2
    power = np.zeros((count, len(bands)))
    for col, b in enumerate(bands):
        psi, half = kernels[b], (len(kernels[b]) - 1) // 2
        padded = np.concatenate([np.zeros(half), x, np.zeros(half)])
        # np.convolve with the reversed conj kernel is the correlation c[n] (index n -> n).
        coeff = np.convolve(padded, np.conj(psi)[::-1], mode="valid")
        power[:, col] = np.mean(np.abs(coeff[centres[:, None] + offsets[b][None, :]]) ** 2, axis=1)
    return power


# --- design -----------------------------------------------------------------------------------


def test_centres_geometric_and_strictly_inside() -> None:
    spec = FeatureSpec(kind="cwt")
    centres = morlet_centres_hz(spec)
    ratios = centres[1:] / centres[:-1]
    assert centres.shape == (spec.n_bands,)
    assert spec.fmin_hz < centres[0]
    assert centres[-1] < spec.fmax_hz
    assert np.all(ratios > 1.0)
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-12)
    np.testing.assert_allclose(
        [centres[0] / spec.fmin_hz, spec.fmax_hz / centres[-1]], ratios[0], rtol=1e-12
    )


def test_bank_is_cached_and_read_only() -> None:
    bank = morlet_bank(SMALL)
    assert morlet_bank(FeatureSpec(kind="cwt", n_bands=12)) is bank
    with pytest.raises(ValueError, match="read-only"):
        bank.kernel_re[0] = 1.0


def test_zero_fmin_is_refused() -> None:
    with pytest.raises(InvalidValueError, match="fmin_hz"):
        morlet_centres_hz(FeatureSpec(kind="cwt", fmin_hz=0.0))


@pytest.mark.parametrize("spec", [FeatureSpec(kind="cwt"), SMALL, SHORT_WAVELETS])
def test_lookahead_matches_formula(spec: FeatureSpec) -> None:
    expected = _reference_lookahead(spec)
    assert CwtStream(spec).lookahead_samples == expected == lookahead_samples(spec)
    assert CwtStream(spec).first_frame_samples == spec.frame_samples + expected


# --- batch against the textbook reference ---------------------------------------------------


@pytest.mark.parametrize("spec", [SMALL, SHORT_WAVELETS.replace(normalisation="log")])
def test_batch_matches_textbook_reference(spec: FeatureSpec) -> None:
    x = _noise(3000) + 0.3 * np.sin(2 * np.pi * 700.0 * np.arange(3000) / FS_HZ)
    bands = [0, spec.n_bands // 2, spec.n_bands - 1]
    got = cwt(x, spec)
    want = np.log(_reference_power(x, spec, bands) + spec.log_offset)
    assert got.shape == (want.shape[0], spec.n_bands)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got[:, bands], want, rtol=0, atol=PARITY_ATOL)


@pytest.mark.parametrize("band", [0, 9, 17, 24, 29])
def test_unit_sine_at_centre_has_unit_power_in_its_band(band: int) -> None:
    """|c|^2 within 1e-3 of 1 (truncation at 4 sigma leaks ~1e-4; measured <= 6e-5).

    The top two of 32 bands are left out on purpose: within ~fs/(2*pi*sigma) of Nyquist the
    wavelet's alias at fs - f_b adds up to +50 % (see the report of this module).
    """
    spec = FeatureSpec(kind="cwt", n_bands=32, normalisation="power")
    f_hz = morlet_centres_hz(spec)[band]
    x = np.sin(2 * np.pi * f_hz * np.arange(6000) / FS_HZ + 0.3)
    power = cwt(x, spec)
    steady = power[(morlet_bank(spec).reach - spec.frame_samples // 2) // spec.hop_samples + 1 :]
    assert steady.shape[0] > 10
    assert np.all(np.argmax(steady, axis=1) == band)
    np.testing.assert_allclose(steady[:, band], 1.0, rtol=0, atol=1e-3)


def test_click_between_frame_centres_is_seen_by_short_wavelets() -> None:
    """An impulse midway between two centres keeps its energy in the high bands.

    With one evaluation point per frame the top wavelets (K_b < hop/2) would read exactly 0;
    sampled across the hop, ``hop * sum_t power_t`` approximates ``sum_n |c[n]|^2 =
    sum_k |psi[k]|^2``.
    """
    spec = SMALL.replace(normalisation="power")
    _, kernels, _ = _reference_layout(spec)
    t = 12
    x = np.zeros(4000)
    x[t * spec.hop_samples + spec.frame_samples // 2 + spec.hop_samples // 2] = 1.0
    power = cwt(x, spec)
    for b in range(spec.n_bands - 3, spec.n_bands):
        assert (len(kernels[b]) - 1) // 2 < spec.hop_samples // 2  # a centre-only point misses
        energy = np.sum(np.abs(kernels[b]) ** 2)
        assert 0.98 < spec.hop_samples * power[:, b].sum() / energy < 1.02
        assert power[t, b] > 0.05 * power[:, b].sum()
        assert power[t + 1, b] > 0.05 * power[:, b].sum()


def test_click_energy_does_not_depend_on_where_it_falls() -> None:
    """The points of consecutive frames form one lattice no coarser than each wavelet's sigma,
    so a click reads the same energy in every band wherever it falls within the hop."""
    spec = FeatureSpec(kind="cwt", normalisation="power")
    _, kernels, _ = _reference_layout(spec)
    energy = np.array([np.sum(np.abs(k) ** 2) for k in kernels])
    for offset in range(0, spec.hop_samples, 7):
        x = np.zeros(6000)
        x[12 * spec.hop_samples + spec.frame_samples // 2 + offset] = 1.0
        ratio = spec.hop_samples * cwt(x, spec).sum(axis=0) / energy
        np.testing.assert_allclose(ratio, 1.0, atol=0.01, err_msg=f"click at +{offset}")


# --- streaming ------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [SMALL, SHORT_WAVELETS])
@pytest.mark.parametrize("sizes", [[1], [7], [160], [4096], "random"])
def test_stream_equals_batch_for_any_chunking(spec: FeatureSpec, sizes: list[int] | str) -> None:
    x = _noise(5000, seed=1)
    x[2500:2503] += [0.5, -1.0, 0.5]  # a crackle-like transient
    chunks = list(np.random.default_rng(2).integers(0, 600, 40)) if sizes == "random" else sizes
    got = push_in_chunks(CwtStream(spec), x.astype(np.float32), [int(c) for c in chunks])
    want = cwt(x.astype(np.float32), spec)
    assert got.shape[0] == want.shape[0] == n_frames(spec, x.shape[0], _reference_lookahead(spec))
    if spec.normalisation == "power":  # compare as log values, the contract's terms
        got, want = np.log(got + spec.log_offset), np.log(want + spec.log_offset)
    np.testing.assert_allclose(got, want, rtol=0, atol=PARITY_ATOL)


def test_registry_builds_this_kind() -> None:
    x = _noise(2000, seed=3)
    np.testing.assert_array_equal(extract(x, SMALL), cwt(x, SMALL))
    assert isinstance(make_stream(SMALL), CwtStream)


def test_frame_depends_on_exactly_its_span() -> None:
    """Frame t reads samples m_t - D .. t*hop + frame + lookahead - 1, and nothing else."""
    spec = SMALL.replace(normalisation="power")
    look, reach, t = _reference_lookahead(spec), morlet_bank(spec).reach, 20
    last = t * spec.hop_samples + spec.frame_samples + look - 1
    first = t * spec.hop_samples + spec.frame_samples // 2 - reach
    x = _noise(last + 200, seed=4)
    base = push_in_chunks(CwtStream(spec), x, [333])[t]
    for index, needed in [(last, True), (last + 1, False), (first, True), (first - 1, False)]:
        bumped = x.copy()
        bumped[index] += 100.0
        frame = push_in_chunks(CwtStream(spec), bumped, [333])[t]
        assert (not np.array_equal(frame, base)) == needed, index


def test_reset_restores_initial_output_exactly() -> None:
    stream = CwtStream(SMALL)
    x = _noise(3000, seed=5)
    first = push_in_chunks(stream, x, [250])
    push_in_chunks(stream, _noise(777, seed=6), [100])  # leave state mid-frame
    stream.reset()
    assert stream.frames_emitted == 0
    assert stream.samples_seen == 0
    np.testing.assert_array_equal(push_in_chunks(stream, x, [250]), first)


def test_short_input_gives_no_frames() -> None:
    spec = SMALL
    too_short = spec.frame_samples + _reference_lookahead(spec) - 1
    assert cwt(np.zeros(too_short), spec).shape == (0, spec.n_bands)
    stream = CwtStream(spec)
    assert stream.push(np.zeros(too_short)).shape == (0, spec.n_bands)
    assert stream.push(np.zeros(0)).shape == (0, spec.n_bands)
    assert stream.push(np.zeros(1)).shape == (1, spec.n_bands)
