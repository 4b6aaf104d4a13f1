"""Complete-label mixtures (training.data.mixtures) and the model's input view
(training.recipe.inputs, training.recipe.augment.device_colour) on a small synthetic
SPRSound folder: inserted sounds are where their targets say, every class target is known,
validation patients never feed a mixture, the view equals the device's front end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.audio import read_audio
from edge.bed.detector import FrameGrid
from edge.features import FeatureSpec, extract
from tests.training.sprsound_folder import write_folder
from training.data.features import FeatureStore
from training.data.mixtures import MixtureConfig, Segment, make_mixtures, mix_one, resampled
from training.data.sprsound import load_sprsound
from training.data.targets import BREATH_INDEX, OUTPUTS
from training.recipe.augment import device_colour
from training.recipe.config import AugmentConfig
from training.recipe.inputs import InputView

SPEC = FeatureSpec()
GRID = FrameGrid.of(8000, SPEC.hop_samples, SPEC.frame_samples, 4)
WHEEZE = OUTPUTS.index("Wheeze")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("spr"), patients=8)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    return FeatureStore(SPEC, ("logmel",), tmp_path_factory.mktemp("cache"))


def test_a_resampled_tone_moves_in_pitch_and_length() -> None:
    t = np.arange(8000) / 8000
    tone = np.sin(2 * np.pi * 400 * t).astype(np.float32)
    up = resampled(tone, 1.25)
    assert abs(up.shape[0] - 6400) <= 1
    spectrum = np.abs(np.fft.rfft(up * np.hanning(up.shape[0])))
    assert abs(np.argmax(spectrum) * 8000 / up.shape[0] - 500) < 5


def test_segments_are_added_where_the_events_say() -> None:
    rng = np.random.default_rng(0)
    host = np.zeros(16000, np.float32)
    seg = Segment("Wheeze", np.full(2000, 0.1, np.float32))
    cfg = MixtureConfig(count=1, level_db=(0.0, 0.0), rate_cas=(1.0, 1.0))
    out, events = mix_one(host + 1e-3, [seg, seg], cfg, 8000, rng)
    assert [e[2] for e in events] == ["Wheeze", "Wheeze"]
    inside = np.zeros(16000, bool)
    for start, end, _ in events:
        inside[round(start * 8000) + 200 : round(end * 8000) - 200] = True
    # at 0 dB a segment has the host's RMS (1e-3): host + segment inside, the host outside
    np.testing.assert_allclose(out[inside], 2e-3, rtol=1e-2)
    assert np.abs(out[~inside]).max() <= 2e-3 + 1e-6
    assert np.isclose(out[~inside], 1e-3).mean() > 0.8
    spans = sorted((s, e) for s, e, _ in events)
    assert spans[0][1] <= spans[1][0]  # never on top of each other


def test_mixtures_have_complete_labels_and_only_training_patients(folder, store) -> None:
    records = load_sprsound(folder)
    train = [r for r in records if r.patient_id != records[0].patient_id]
    cfg = MixtureConfig(count=12, events=(1, 3), seed=3)
    mixtures = make_mixtures(train, store, SPEC, ("logmel",), GRID, 4, cfg)
    assert len(mixtures) == 12
    assert {m.patient_id for m in mixtures} <= {r.patient_id for r in train}
    hosts = {r.record_id for r in train if r.record_label == "Normal"}
    for m in mixtures:
        assert m.record_id.split("-", 2)[2] in hosts
        assert (m.weights[:BREATH_INDEX] == 1.0).all()  # every class target known
        assert m.features.shape[2] > 0
        inserted = [e for e in m.events if e[2] != "Normal"]
        assert 1 <= len(inserted) <= 3
        for start, end, kind in inserted:
            mid = int((start + end) / 2 * 1000 / GRID.hop_ms)
            assert m.targets[OUTPUTS.index(kind.split("+")[0]), mid] == 1.0
    again = make_mixtures(train, store, SPEC, ("logmel",), GRID, 4, cfg)
    assert [m.events for m in again] == [m.events for m in mixtures]  # seeded


def test_the_input_view_is_the_device_front_end(folder) -> None:
    """Raw features through the view equal the front end with its normalisation on."""
    spec = SPEC.replace(band_norm_s=4.0)
    audio = read_audio(next(folder.glob("*.flac")), target_rate_hz=8000).samples
    raw = extract(audio, InputView.raw_spec(spec)).T[None]  # (1, F, T)
    view = InputView(spec, ("logmel",), AugmentConfig())
    np.testing.assert_allclose(view.transform(raw)[0], extract(audio, spec).T, atol=1e-5)
    assert InputView(SPEC, ("logmel",), AugmentConfig()).transform is None


def test_another_device_colours_the_raw_features_within_bounds() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(-10.0, 1.0, (1, 64, 300)).astype(np.float32)
    centres = np.linspace(50, 4000, 64)[None]
    cfg = AugmentConfig(device_prob=1.0)
    changed = [device_colour(x, centres, -23.0, cfg, rng) for _ in range(20)]
    assert all(c.shape == x.shape and c.dtype == np.float32 for c in changed)
    assert all(c.min() >= -23.0 for c in changed)
    offsets = [np.abs((c - x).mean(axis=2)).max() for c in changed]
    assert max(offsets) > 1.0  # gains, curves and band edges of several dB
    assert max(offsets) < 40.0
    # a training view colours a share device_prob of the examples
    view = InputView(SPEC, ("logmel",), AugmentConfig(device_prob=0.5)).training(rng)
    assert view is not None
    same = sum(np.array_equal(view(x), x) for _ in range(40))
    assert 8 <= same <= 32


def test_colouring_leaves_digital_silence_and_normalisation_removes_gain_and_curve() -> None:
    """Without band edge and noise, another device's colouring is an offset per band: gone
    after the band normalisation, and a gap of zeros stays zeros (it moves no mean)."""
    rng = np.random.default_rng(2)
    spec = SPEC.replace(band_norm_s=4.0)
    x = rng.normal(-10.0, 1.0, (1, 64, 400)).astype(np.float32)
    x[:, :, 100:150] = -23.02585  # digital silence: ln(1e-10)
    plain = AugmentConfig(
        device_prob=1.0, device_lowpass_hz=(1e9, 1e9), device_noise_db=(-300, -300)
    )
    coloured = device_colour(x, np.linspace(50, 1000, 64)[None], -23.02585, plain, rng)
    np.testing.assert_array_equal(coloured[:, :, 100:150], x[:, :, 100:150])
    view = InputView(spec, ("logmel",), AugmentConfig())
    sound = np.r_[0:100, 150:400]  # the gap itself reads against a shifted mean
    np.testing.assert_allclose(
        view.transform(coloured)[..., sound], view.transform(x)[..., sound], atol=1e-3
    )
