"""Sound where the training recordings hold none (edge.bed.domain): the bands, the excess in dB,
the sentence a model-driven ``poor_signal`` carries, on synthetic audio through the real
pipeline and gate, and on real recordings of another stethoscope through ``lungwatch
detect`` with the shipped model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import butter, sosfilt

from edge.bed.domain import DB_PER_LN, EXCESS_DB, SilentBands
from edge.bed.gate import GateConfig, QualityGate
from edge.bed.pipeline import StreamPipeline
from edge.datapaths import icbhi_root
from edge.features import FeatureSpec, band_centres_hz, extract
from edge.inference.manifest import load_manifest
from edge.runtime.config import open_stream_source
from edge.runtime.loop import Stream, open_model
from edge.sources.base import SourceChunk
from tests.edge.runtime_helpers import build, config_mapping, record_path, stream

SPEC = FeatureSpec(n_bands=32)
FLOOR = math.log(SPEC.log_offset)
SHIPPED = Path(__file__).resolve().parents[2] / "models" / "sed"
NOTE = "another stethoscope or microphone, or broadband noise?"


def training_mean(silent_from: int) -> np.ndarray:
    """(1, F): bands below ``silent_from`` at -12, the rest at the log floor."""
    mean = np.full((1, SPEC.n_bands), -12.0, np.float32)
    mean[0, silent_from:] = FLOOR
    return mean


def test_silent_bands_are_those_at_the_floor_and_begin_at_the_lowest() -> None:
    bands = SilentBands.of(SPEC, ("logmel",), training_mean(20))
    assert bands is not None
    assert bands.mask[0].tolist() == [False] * 20 + [True] * 12
    assert bands.lowest_hz == pytest.approx(band_centres_hz(SPEC)[20])
    near = training_mean(20)
    near[0, 19] = FLOOR + 0.4  # within the margin: silent too
    assert SilentBands.of(SPEC, ("logmel",), near).mask[0, 19]  # type: ignore[union-attr]


def test_excess_is_the_mean_over_silent_bands_in_db() -> None:
    bands = SilentBands.of(SPEC, ("logmel",), training_mean(24))
    assert bands is not None
    x = np.repeat(training_mean(24)[:, :, None], 10, axis=2)
    x[0, :24] += 5.0  # the bands with sound in training do not count
    assert bands.excess_db(x) == pytest.approx(0.0, abs=1e-5)
    assert bands.describe(x) is None
    x[0, 24:, :5] += 2.0  # half the frames, 2 ln units: 1 ln = 4.34 dB on average
    assert bands.excess_db(x) == pytest.approx(DB_PER_LN, rel=1e-5)
    assert bands.describe(x) is None  # below EXCESS_DB
    x[0, 24:] += 1.0
    note = bands.describe(x)
    assert bands.excess_db(x) == pytest.approx(2.0 * DB_PER_LN, rel=1e-5)
    assert 2.0 * DB_PER_LN >= EXCESS_DB
    assert note is not None
    assert NOTE in note
    assert "9 dB" in note
    assert f"above {bands.lowest_hz:.0f} Hz" in note


def test_only_the_top_run_of_floor_bands_is_silent_and_the_input_is_not_touched() -> None:
    mean = training_mean(20)
    mean[0, 0] = FLOOR  # a floor band below bands with sound: not the device's band edge
    mean[0, 19] = FLOOR + 0.6  # just outside the margin: a band with sound
    bands = SilentBands.of(SPEC, ("logmel",), mean)
    assert bands is not None
    assert np.flatnonzero(bands.mask[0]).tolist() == list(range(20, 32))
    assert bands.lowest_hz == pytest.approx(band_centres_hz(SPEC)[20])
    assert mean.flags.writeable  # the caller's array stays the caller's
    mean[0, 25] = 0.0
    assert bands.mean[0, 25] == pytest.approx(FLOOR)
    assert SilentBands.of(SPEC, ("logmel",), np.full((1, 32), FLOOR, np.float32)) is None


def test_no_bands_no_floor_or_a_wrong_shape() -> None:
    assert SilentBands.of(SPEC, ("logmel",), np.full((1, 32), -12.0)) is None
    power = SPEC.replace(normalisation="power")
    assert SilentBands.of(power, ("logmel",), training_mean(20)) is None
    with pytest.raises(ValueError, match=r"training mean must be \(2, 32\)"):
        SilentBands.of(SPEC, ("logmel", "gammatone"), training_mean(20))
    bands = SilentBands.of(SPEC, ("logmel",), training_mean(20))
    assert bands is not None
    with pytest.raises(ValueError, match="features must be"):
        bands.excess_db(np.zeros((1, 31, 4), np.float32))


def lowpassed(seconds: float, seed: int) -> np.ndarray:
    """Noise with nothing above about 700 Hz, at stethoscope level (SPRSound-like)."""
    rate = SPEC.sample_rate_hz
    x = np.random.default_rng(seed).standard_normal(int(seconds * rate))
    x = sosfilt(butter(12, 600, fs=rate, output="sos"), x)
    return (0.02 * x / x.std()).astype(np.float32)


def poor_reasons(gate: QualityGate, x: np.ndarray) -> list[str]:
    pipeline = StreamPipeline(SPEC, ("logmel",), 100, 25)
    out = []
    for i in range(0, x.shape[0], 800):
        chunk = SourceChunk(x[i : i + 800], i)
        out += gate.observe(chunk, 0.0)
        for window in pipeline.push(chunk):
            out += gate.update(window, 0.9)  # the model calls every window Poor Quality
    return [t.reason for t in out if t.type == "poor_signal" and t.state == "onset"]


def test_a_model_poor_signal_names_sound_the_training_audio_lacks() -> None:
    """The training mean comes from low-passed noise, so its upper bands sit at the floor;
    the same noise with a little white noise added (another microphone) is named, the
    low-passed noise itself is not, and a gate without the bands says what it always said."""
    features = extract(lowpassed(20.0, 0), SPEC)
    bands = SilentBands.of(SPEC, ("logmel",), features.mean(axis=0)[None])
    assert bands is not None
    assert 700 < bands.lowest_hz < 1500
    config = GateConfig(min_condition_ms=0.0, poor_signal_min_ms=0.0)
    plain = poor_reasons(QualityGate(config, SPEC.sample_rate_hz, bands), lowpassed(4.0, 1))
    assert len(plain) == 1
    assert plain[0].startswith("model Poor Quality")
    assert NOTE not in plain[0]
    other = lowpassed(4.0, 1) + 0.003 * np.random.default_rng(2).standard_normal(32000).astype(
        np.float32
    )
    named = poor_reasons(QualityGate(config, SPEC.sample_rate_hz, bands), other)
    assert len(named) == 1
    assert NOTE in named[0]
    assert f"above {bands.lowest_hz:.0f} Hz" in named[0]
    without = poor_reasons(QualityGate(config, SPEC.sample_rate_hz), other)
    assert len(without) == 1
    assert NOTE not in without[0]


def test_a_band_normalised_spec_has_no_silent_bands() -> None:
    """Band normalisation removes the floor the diagnostic measures from: no bands."""
    features = extract(lowpassed(20.0, 0), SPEC)
    assert SilentBands.of(SPEC, ("logmel",), features.mean(axis=0)[None]) is not None
    normalised = SPEC.replace(band_norm_s=8.0)
    mean = extract(lowpassed(20.0, 0), normalised).mean(axis=0)[None]
    assert SilentBands.of(normalised, ("logmel",), mean) is None


def test_the_runtime_gives_the_shipped_models_silent_bands_to_each_gate(tmp_path: Path) -> None:
    """open_model derives the bands from the manifest's flush frame and every stream's gate
    gets them: for a model without band normalisation, SPRSound's nothing above about
    0.8 kHz; for a band-normalised one, none."""
    wav = tmp_path / "quiet.wav"
    sf.write(wav, lowpassed(1.0, 0), SPEC.sample_rate_hz)
    config = build(config_mapping(tmp_path, [stream("b1", wav, realtime=False)]))
    model = open_model(config)
    try:
        bands = model.settings.silent_bands
        source = open_stream_source(config.streams[0], SPEC.sample_rate_hz)
        assert Stream(config.streams[0], source, model).chain.gate.silent_bands is bands
        normalised = model.settings.spec.band_norm_s > 0
    finally:
        model.backend.close()
    if normalised:
        assert bands is None
        return
    assert bands is not None
    assert 600 < bands.lowest_hz < 1000
    assert 30 <= int(bands.mask.sum()) <= 50  # SPRSound: nothing above about 0.8 kHz


def test_detect_names_another_stethoscope_not_a_poor_sprsound_record(tmp_path: Path) -> None:
    """Through the device path with the shipped model: an ICBHI recording (Meditron
    stethoscope) gets the sentence in its poor_signal reason; a SPRSound record labelled Poor
    Quality, which the model flags too, does not."""
    from training.scoring.detect import main as detect_main

    if load_manifest(SHIPPED / "manifest.json").feature_spec.band_norm_s > 0:
        pytest.skip("the shipped model normalises its bands: it has no silent bands to name")
    icbhi = icbhi_root() / "train" / "105_1b1_Tc_sc_Meditron.flac"
    if not icbhi.is_file():
        pytest.skip(f"ICBHI recording not found at {icbhi} (set LUNGWATCH_DATA_DIR)")
    poor = record_path("intra_test/65070606_5.0_1_p3_1407")
    audio = tmp_path / "audio"
    audio.mkdir()
    for source in (icbhi, poor):
        (audio / source.name).symlink_to(source)
    tech = tmp_path / "technical.json"
    args = ["--audio", str(audio), "--model", str(SHIPPED), "--out", str(tmp_path / "e.json")]
    assert detect_main([*args, "--technical", str(tech)]) == 0
    reasons = {
        record: [e["reason"] for e in events if e["type"] == "poor_signal"]
        for record, events in json.loads(tech.read_text()).items()
    }
    assert reasons[icbhi.stem]
    assert all(NOTE in r for r in reasons[icbhi.stem])
    assert reasons[poor.stem]
    assert all(r.startswith("model Poor Quality") and NOTE not in r for r in reasons[poor.stem])
