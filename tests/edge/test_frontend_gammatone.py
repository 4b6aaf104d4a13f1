"""Gammatone front end against independent references.

References, each written here without the package's helpers:
- the ERB-rate scale (Glasberg & Moore) for the centre frequencies;
- SciPy's own ``scipy.signal.gammatone`` (b, a): frequency response (``freqz``) and time
  domain (``lfilter``);
- the same filter as a complex one-pole cascade, ``y = g * Re[x / (1 - p/z)**4]`` with
  ``p = exp((-2*pi*1.019*ERB(cf) + 2j*pi*cf) / fs)``: algebraically identical to SciPy's
  (b, a), but well conditioned, so it checks every band to 1e-5 where (b, a) cannot.

Why (b, a) cannot: its denominator is a 4-fold pole pair near z = 1 for low ``cf / fs``;
rounding its 9 coefficients to float64 moves the response by ~eps * sum|a| / |A(e^jw)|,
which is 5e-4 relative at 62 Hz and 8 kHz (1e-3 on log band power). Those bands are
compared with (b, a) at a tolerance derived from that bound, the rest at 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal

from edge.features import FeatureSpec, extract, make_stream, n_frames
from edge.features.gammatone import (
    GammatoneStream,
    erb_centres_hz,
    gammatone,
    gammatone_sos,
)
from lungwatch.config import InvalidValueError
from lungwatch.errors import InvalidAudioError
from tests.edge.chunking import push_in_chunks

TOLERANCE = 1e-5  # the front-end contract on log values
FS = 8000
SPEC = FeatureSpec(kind="gammatone", n_bands=32)  # 50..4000 Hz, frame 256, hop 80
EPS = np.finfo(np.float64).eps


def _erb_rate(f_hz: np.ndarray | float) -> np.ndarray:
    return 21.4 * np.log10(1.0 + 0.00437 * np.asarray(f_hz))


def _signal(n: int, seed: int = 0) -> np.ndarray:
    """Noise plus a 440 Hz tone and a low 90 Hz tone burst: every band sees energy."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / FS
    x = 0.05 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * 440 * t)
    x[n // 3 : n // 2] += 0.2 * np.sin(2 * np.pi * 90 * t[n // 3 : n // 2])
    return x


def _frame_log_power(y: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Frame means of y**2 by an explicit loop over frames, then ln(. + offset)."""
    starts = range(0, y.size - spec.frame_samples + 1, spec.hop_samples)
    power = np.array([np.mean(y[s : s + spec.frame_samples] ** 2) for s in starts])
    return np.log(power + spec.log_offset)


def _sos_gain(sos: np.ndarray) -> float:
    """Overall gain of a band's cascade relative to monic numerators (SciPy's b[0])."""
    return float(np.prod(sos[:, 0]))


def _ba_error_bound(b: np.ndarray, a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Relative response error from rounding (b, a) to float64, at normalised freqs ``w``."""
    z_inv = np.exp(-1j * w)
    big_a = np.polyval(a[::-1], z_inv)
    big_b = np.polyval(b[::-1], z_inv)
    bound: np.ndarray = EPS * (np.abs(a).sum() / np.abs(big_a) + np.abs(b).sum() / np.abs(big_b))
    return bound


def _complex_pole(cf_hz: float, fs: int) -> complex:
    erb_hz = 24.7 + cf_hz / 9.26449
    return complex(np.exp((-2 * np.pi * 1.019 * erb_hz + 2j * np.pi * cf_hz) / fs))


def _complex_cascade(x: np.ndarray, pole: complex, gain: float) -> np.ndarray:
    """gain * Re[x filtered by 1 / (1 - pole/z)**4], four complex one-pole passes."""
    y = x.astype(np.complex128)
    for _ in range(4):
        y = scipy.signal.lfilter([1.0], [1.0, -pole], y)
    result: np.ndarray = gain * y.real
    return result


# --- centre frequencies ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fs", "n_bands", "fmin", "fmax"),
    [(8000, 32, 50.0, 4000.0), (16000, 16, 100.0, 7000.0), (4000, 8, 0.0, 2000.0)],
)
def test_centres_are_erb_spaced_and_strictly_inside(
    fs: int, n_bands: int, fmin: float, fmax: float
) -> None:
    spec = FeatureSpec(
        kind="gammatone", sample_rate_hz=fs, n_bands=n_bands, fmin_hz=fmin, fmax_hz=fmax
    )
    centres = erb_centres_hz(spec)
    assert centres.shape == (n_bands,)
    assert not centres.flags.writeable
    assert fmin < centres[0]
    assert centres[-1] < fmax
    assert np.all(np.diff(centres) > 0)
    points = np.concatenate([[fmin], centres, [fmax]])
    steps = np.diff(_erb_rate(points))
    expected_step = (_erb_rate(fmax) - _erb_rate(fmin)) / (n_bands + 1)
    np.testing.assert_allclose(steps, expected_step, rtol=1e-9)


# --- filter design ----------------------------------------------------------------------


def test_sos_shape_unity_gain_at_centre_and_stability() -> None:
    sos = gammatone_sos(SPEC)
    assert sos.shape == (SPEC.n_bands, 4, 6)
    assert sos.dtype == np.float64
    assert not sos.flags.writeable
    np.testing.assert_array_equal(sos[:, :, 3], 1.0)
    for band, cf in enumerate(erb_centres_hz(SPEC)):
        _, h_cascade = scipy.signal.sosfreqz(sos[band], worN=[cf], fs=FS)
        assert abs(h_cascade[0]) == pytest.approx(1.0, abs=1e-12)
        for section in sos[band]:
            _, h_section = scipy.signal.freqz(section[:3], section[3:], worN=[cf], fs=FS)
            assert abs(h_section[0]) == pytest.approx(1.0, abs=1e-12)
            assert np.all(np.abs(np.roots(section[3:])) < 1.0)
        # SciPy normalises its design to unity at cf too: the overall gains agree.
        b, _ = scipy.signal.gammatone(cf, "iir", fs=FS)
        assert _sos_gain(sos[band]) == pytest.approx(b[0], rel=1e-9)


def test_sos_reproduces_scipy_polynomials() -> None:
    """Multiplying the sections out gives SciPy's (b, a) back (a well-conditioned direction)."""
    sos = gammatone_sos(SPEC)
    for band, cf in enumerate(erb_centres_hz(SPEC)):
        b, a = scipy.signal.gammatone(cf, "iir", fs=FS)
        num, den = np.array([1.0]), np.array([1.0])
        for section in sos[band]:
            num = np.polymul(num, section[:3])
            den = np.polymul(den, section[3:])
        np.testing.assert_allclose(den, a, rtol=0, atol=1e-12 * np.abs(a).max())
        np.testing.assert_allclose(num[:5], b, rtol=0, atol=1e-12 * np.abs(b).max())
        np.testing.assert_allclose(num[5:], 0.0, atol=1e-12 * np.abs(b).max())


def test_sos_response_matches_scipy_freqz_within_its_conditioning() -> None:
    sos = gammatone_sos(SPEC)
    w = np.linspace(0.0, np.pi, 1025)[1:-1]
    for band, cf in enumerate(erb_centres_hz(SPEC)):
        b, a = scipy.signal.gammatone(cf, "iir", fs=FS)
        _, h_ba = scipy.signal.freqz(b, a, worN=w)
        _, h_sos = scipy.signal.sosfreqz(sos[band], worN=w)
        allowed = 8.0 * _ba_error_bound(b, a, w) * np.abs(h_sos) + 1e-13
        assert np.all(np.abs(h_ba - h_sos) <= allowed), f"band {band} at {cf:.1f} Hz"


def test_sos_response_matches_complex_pole_form_everywhere() -> None:
    """The closed form 0.5 g [(1 - p/z)^-4 + (1 - conj(p)/z)^-4] is well conditioned."""
    sos = gammatone_sos(SPEC)
    w = np.linspace(0.0, np.pi, 1025)
    z_inv = np.exp(-1j * w)
    for band, cf in enumerate(erb_centres_hz(SPEC)):
        p = _complex_pole(cf, FS)
        expected = (
            0.5 * _sos_gain(sos[band]) * ((1 - p * z_inv) ** -4 + (1 - p.conjugate() * z_inv) ** -4)
        )
        _, h_sos = scipy.signal.sosfreqz(sos[band], worN=w)
        np.testing.assert_allclose(h_sos, expected, rtol=1e-9, atol=1e-12)


# --- batch against time-domain references -------------------------------------------


def test_batch_matches_complex_cascade_reference_in_every_band() -> None:
    x = _signal(FS)
    ours = gammatone(x, SPEC)
    sos = gammatone_sos(SPEC)
    for band, cf in enumerate(erb_centres_hz(SPEC)):
        y = _complex_cascade(x, _complex_pole(cf, FS), _sos_gain(sos[band]))
        reference = _frame_log_power(y, SPEC)
        assert ours.shape[0] == reference.size
        np.testing.assert_allclose(
            ours[:, band], reference, rtol=0, atol=TOLERANCE, err_msg=f"band {band} at {cf:.1f} Hz"
        )


def test_batch_matches_scipy_lfilter_reference() -> None:
    """lfilter with SciPy's (b, a): 1e-5 where (b, a) is well conditioned, else its bound."""
    x = _signal(FS)
    ours = gammatone(x, SPEC)
    sos = gammatone_sos(SPEC)
    w = np.linspace(0.0, np.pi, 513)[1:-1]
    n_exact = 0
    for band, cf in enumerate(erb_centres_hz(SPEC)):
        b, a = scipy.signal.gammatone(cf, "iir", fs=FS)
        y = scipy.signal.lfilter(b * (_sos_gain(sos[band]) / b[0]), a, x)
        reference = _frame_log_power(y, SPEC)
        _, h = scipy.signal.sosfreqz(sos[band], worN=w)
        bound = float(np.max(_ba_error_bound(b, a, w)[np.abs(h) > 0.1]))
        # Log power moves by twice the relative amplitude error, plus lfilter's own rounding
        # noise, which the same conditioning amplifies: allow 8x the bound.
        tolerance = max(TOLERANCE, 8.0 * bound)
        n_exact += tolerance == TOLERANCE
        np.testing.assert_allclose(
            ours[:, band],
            reference,
            rtol=0,
            atol=tolerance,
            err_msg=f"band {band} at {cf:.1f} Hz, bound {bound:.1e}",
        )
    assert n_exact >= SPEC.n_bands - 8  # only the lowest bands are ill-conditioned


# --- streaming ----------------------------------------------------------------------------


STREAM_SPEC = FeatureSpec(kind="gammatone", n_bands=24)  # not a multiple of the lane block


@pytest.mark.parametrize("chunk", [1, 7, 160, 4096])
def test_stream_equals_batch_for_fixed_chunks(chunk: int) -> None:
    x = _signal(12000, 1)
    batch = gammatone(x, STREAM_SPEC)
    streamed = push_in_chunks(GammatoneStream(STREAM_SPEC), x, [chunk])
    assert streamed.shape == batch.shape == (n_frames(STREAM_SPEC, x.size), 24)
    np.testing.assert_allclose(streamed, batch, rtol=0, atol=TOLERANCE)


def test_stream_equals_batch_for_random_chunks() -> None:
    rng = np.random.default_rng(7)
    x = _signal(12000, 2)
    cuts = np.sort(rng.choice(np.arange(1, x.size), size=60, replace=False))
    chunks = np.diff(np.concatenate([[0], cuts, [x.size]])).tolist()
    chunks.insert(3, 0)
    streamed = push_in_chunks(GammatoneStream(STREAM_SPEC), x, chunks)
    np.testing.assert_allclose(streamed, gammatone(x, STREAM_SPEC), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize(
    "changes",
    [
        {"frame_samples": 250, "hop_samples": 81},  # gcd 1: one-sample blocks
        {"frame_samples": 200, "hop_samples": 200},  # hop == frame: one block per frame
        {"n_bands": 64, "sample_rate_hz": 16000, "fmax_hz": 8000.0},
    ],
)
def test_stream_equals_batch_for_other_framings(changes: dict[str, float]) -> None:
    spec = STREAM_SPEC.replace(**changes)
    x = _signal(9000, 3)
    batch = gammatone(x, spec)
    assert batch.shape[0] > 30
    np.testing.assert_allclose(
        push_in_chunks(GammatoneStream(spec), x, [256]), batch, rtol=0, atol=TOLERANCE
    )


def test_stream_equals_batch_in_power_mode() -> None:
    spec = STREAM_SPEC.replace(normalisation="power")
    x = _signal(6000, 4)
    batch = gammatone(x, spec)
    np.testing.assert_allclose(push_in_chunks(GammatoneStream(spec), x, [100]), batch, rtol=1e-5)


def test_silence_flushes_states_to_zero_and_keeps_parity() -> None:
    """After a signal stops, no filter state lingers as a subnormal; output still = batch."""
    spec = FeatureSpec(kind="gammatone", n_bands=16)
    x = np.concatenate([_signal(4000, 8), np.zeros(3 * FS), _signal(2000, 9)])
    stream = GammatoneStream(spec)
    out = [stream.push(x[: 4000 + 3 * FS]).copy()]
    assert not np.any(stream._state), "states should be exactly 0 after 3 s of silence"
    out.append(stream.push(x[4000 + 3 * FS :]))
    np.testing.assert_allclose(np.concatenate(out), gammatone(x, spec), rtol=0, atol=TOLERANCE)


# --- behaviour ------------------------------------------------------------------------------


@pytest.mark.parametrize("band", [1, 8, 16, 24, 30])
def test_tone_at_a_centre_peaks_in_its_band_with_unity_gain(band: int) -> None:
    spec = SPEC.replace(normalisation="power")
    cf = erb_centres_hz(spec)[band]
    amplitude = 0.5
    t = np.arange(2 * FS) / FS
    power = gammatone(amplitude * np.sin(2 * np.pi * cf * t), spec)
    settled = power[power.shape[0] // 4 :].mean(axis=0)  # skip the filters' onset
    assert int(np.argmax(settled)) == band
    # A frame's mean of sin^2 differs from 1/2 by up to |sin(N w) / (2 N sin w)|; frames do
    # not average that out when the hop is a whole number of periods (100 Hz, hop 80).
    w, n = 2 * np.pi * cf / FS, spec.frame_samples
    framing = abs(np.sin(n * w) / (n * np.sin(w)))
    assert settled[band] == pytest.approx(amplitude**2 / 2, rel=framing + 0.005)


def test_short_signal_gives_no_frames() -> None:
    assert gammatone(np.zeros(SPEC.frame_samples - 1), SPEC).shape == (0, SPEC.n_bands)
    assert gammatone(np.zeros(SPEC.frame_samples), SPEC).shape == (1, SPEC.n_bands)


def test_registry_dispatches_to_this_kind() -> None:
    x = _signal(3000, 10)
    np.testing.assert_array_equal(extract(x, SPEC), gammatone(x, SPEC))
    assert isinstance(make_stream(SPEC), GammatoneStream)


def test_other_kinds_and_bad_input_are_refused() -> None:
    with pytest.raises(InvalidValueError, match="kind"):
        gammatone(np.zeros(1000), FeatureSpec(kind="logmel"))
    with pytest.raises(InvalidValueError, match="kind"):
        GammatoneStream(FeatureSpec(kind="logmel"))
    with pytest.raises(InvalidAudioError, match="shape"):
        gammatone(np.zeros((1000, 2)), SPEC)
