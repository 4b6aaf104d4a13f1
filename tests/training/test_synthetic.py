"""Tests of the synthetic lung-sound generator: labels are where the sound is."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.signal import butter, sosfiltfilt

from training.data.sprsound import EVENT_LABELS
from training.data.synthetic import (
    BREATH_ENVELOPE_FLOOR,
    COARSE_CRACKLE,
    FINE_CRACKLE,
    MIN_EVENT_GAP_S,
    MIN_WHEEZE_S,
    PEAK_LIMIT,
    WHEEZE,
    SyntheticRecording,
    breathing_envelope,
    event_sample_range,
    synthesize,
)

RATE_HZ = 8000
DURATION_S = 30.0
SEED = 1234
N_CRACKLES = 25
N_WHEEZES = 6
WHEEZE_BAND_HZ = (100.0, 1000.0)
PEAK_SEARCH_MARGIN_S = 0.020
EVENT_TYPES = (FINE_CRACKLE, COARSE_CRACKLE, WHEEZE)


def event_mask(recording: SyntheticRecording, types: tuple[str, ...] = EVENT_TYPES) -> np.ndarray:
    """Where the recording's events of ``types`` sound, sample by sample."""
    mask = np.zeros(recording.samples.shape[0], dtype=bool)
    for event in recording.events:
        if event.type in types:
            start, end = event_sample_range(event, recording.sample_rate_hz)
            mask[start:end] = True
    return mask


@pytest.fixture(scope="module")
def recording() -> SyntheticRecording:
    return synthesize(DURATION_S, RATE_HZ, seed=SEED, crackles=N_CRACKLES, wheezes=N_WHEEZES)


@pytest.fixture(scope="module")
def background() -> SyntheticRecording:
    return synthesize(DURATION_S, RATE_HZ, seed=SEED)


def test_output_format_and_counts(recording: SyntheticRecording) -> None:
    assert recording.samples.dtype == np.float32
    assert recording.samples.shape == (round(DURATION_S * RATE_HZ),)
    assert recording.sample_rate_hz == RATE_HZ
    assert recording.duration_s == DURATION_S
    assert 0.1 < np.abs(recording.samples).max() <= PEAK_LIMIT
    types = [event.type for event in recording.events]
    assert types.count(FINE_CRACKLE) == N_CRACKLES
    assert types.count(WHEEZE) == N_WHEEZES
    assert set(types) <= set(EVENT_LABELS)


def test_deterministic_per_seed(recording: SyntheticRecording) -> None:
    again = synthesize(DURATION_S, RATE_HZ, seed=SEED, crackles=N_CRACKLES, wheezes=N_WHEEZES)
    np.testing.assert_array_equal(again.samples, recording.samples)
    assert again.events == recording.events
    other = synthesize(DURATION_S, RATE_HZ, seed=SEED + 1, crackles=N_CRACKLES, wheezes=N_WHEEZES)
    assert not np.array_equal(other.samples, recording.samples)
    assert other.events != recording.events


def test_events_sorted_disjoint_sample_accurate(recording: SyntheticRecording) -> None:
    events = recording.events
    assert [e.start_s for e in events] == sorted(e.start_s for e in events)
    for earlier, later in itertools.pairwise(events):
        assert later.start_s - earlier.end_s >= MIN_EVENT_GAP_S - 1e-9
    assert events[0].start_s >= MIN_EVENT_GAP_S - 1e-9
    assert events[-1].end_s <= DURATION_S - MIN_EVENT_GAP_S + 1e-9
    for event in events:
        for time_s in (event.start_s, event.end_s):
            assert time_s * RATE_HZ == pytest.approx(round(time_s * RATE_HZ), abs=1e-6)
        length_s = event.end_s - event.start_s
        if event.type == WHEEZE:
            assert MIN_WHEEZE_S <= length_s <= 0.6 + 1e-9
        else:
            assert 0.005 - 1e-9 <= length_s <= 0.010 + 1e-9


def test_events_add_sound_exactly_inside_their_span(
    recording: SyntheticRecording, background: SyntheticRecording
) -> None:
    added = recording.samples.astype(np.float64) - background.samples
    inside = event_mask(recording)
    assert not np.any(added[~inside])
    for event in recording.events:
        start, end = event_sample_range(event, RATE_HZ)
        assert np.any(added[start : start + 3]), event
        assert np.any(added[end - 3 : end]), event


def test_crackle_peaks_at_labelled_times(recording: SyntheticRecording) -> None:
    margin = round(PEAK_SEARCH_MARGIN_S * RATE_HZ)
    magnitude = np.abs(recording.samples)
    crackles = [e for e in recording.events if e.type == FINE_CRACKLE]
    for event in crackles:
        start, end = event_sample_range(event, RATE_HZ)
        window_start = max(0, start - margin)
        peak = window_start + int(np.argmax(magnitude[window_start : end + margin]))
        assert start <= peak < end, event
        assert magnitude[peak] > 2.0 * magnitude[window_start:start].max(), event


def test_wheeze_band_energy_is_higher_inside_wheezes(recording: SyntheticRecording) -> None:
    sos = butter(4, WHEEZE_BAND_HZ, btype="bandpass", fs=RATE_HZ, output="sos")
    power = sosfiltfilt(sos, recording.samples.astype(np.float64)) ** 2
    outside_power = power[~event_mask(recording)].mean()
    for event in recording.events:
        if event.type == WHEEZE:
            start, end = event_sample_range(event, RATE_HZ)
            assert power[start:end].mean() > 4.0 * outside_power, event
            spectrum = np.abs(np.fft.rfft(recording.samples[start:end]))
            peak_hz = np.argmax(spectrum) * RATE_HZ / (end - start)
            assert 90.0 <= peak_hz <= 1100.0, event


def test_coarse_crackles_are_longer_and_lower() -> None:
    coarse = synthesize(10.0, RATE_HZ, seed=5, crackles=10, crackle_type=COARSE_CRACKLE)
    assert {e.type for e in coarse.events} == {COARSE_CRACKLE}
    for event in coarse.events:
        assert 0.010 - 1e-9 <= event.end_s - event.start_s <= 0.020 + 1e-9


def test_breathing_envelope_has_the_breathing_rhythm() -> None:
    period_s, duration_s = 3.5, 35.0
    n_samples = round(duration_s * RATE_HZ)
    envelope = breathing_envelope(n_samples, RATE_HZ, period_s, np.random.default_rng(0))
    assert envelope.shape == (n_samples,)
    assert envelope.min() >= BREATH_ENVELOPE_FLOOR - 1e-12
    assert envelope.max() <= 1.0 + 1e-12
    inspirations = np.count_nonzero(np.diff((envelope > 0.9).astype(int)) == 1)
    assert abs(inspirations - duration_s / period_s) <= 1.5


def test_background_is_modulated_breath_noise(background: SyntheticRecording) -> None:
    frame = RATE_HZ // 10
    frames = background.samples[: background.samples.size // frame * frame].reshape(-1, frame)
    frame_rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    assert frame_rms.max() > 8.0 * frame_rms.min()
    assert background.events == []


def test_low_sample_rate_works() -> None:
    low = synthesize(5.0, 4000, seed=2, crackles=3, wheezes=2)
    assert low.samples.shape == (20000,)
    assert np.all(np.isfinite(low.samples))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"duration_s": 0.0}, "duration_s must be a positive"),
        ({"sample_rate_hz": 2000}, "sample_rate_hz must be >= 4000"),
        ({"sample_rate_hz": 8000.0}, "sample_rate_hz must be an integer"),
        ({"crackles": -1}, "crackles must be a non-negative integer"),
        ({"crackle_type": "Crackle"}, "crackle_type must be one of"),
        ({"wheeze_f0_range_hz": (900.0, 500.0)}, "wheeze_f0_range_hz"),
        ({"breath_rms": 0.0}, "breath_rms must be a positive"),
        ({"duration_s": 0.5, "wheezes": 3}, "cannot place 3 events"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"duration_s": 2.0, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        synthesize(**arguments)  # type: ignore[arg-type]
