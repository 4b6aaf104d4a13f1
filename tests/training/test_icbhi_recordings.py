"""ICBHI recordings as extra training material for the frame-level model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from edge.detector import FrameGrid
from edge.features import FeatureSpec
from training.datasets.icbhi import load_icbhi
from training.features_cache import FeatureStore
from training.recordings import icbhi_label, load_icbhi_recordings
from training.targets import OUTPUTS

RATE = 4000  # a Littmann 3200 recording: resampled to the front end's 8 kHz on reading
LEAD_IN_S = 0.5


def _recording(folder: Path, name: str, cycles: str) -> None:
    rng = np.random.default_rng(3)
    audio = np.concatenate([np.zeros(int(LEAD_IN_S * RATE)), 0.1 * rng.standard_normal(8000)])
    sf.write(folder / f"{name}.flac", audio.astype(np.float32), RATE, subtype="PCM_16")
    (folder / f"{name}.txt").write_text(cycles)


def test_icbhi_recordings_get_cycle_targets_and_no_log_floor(tmp_path: Path) -> None:
    _recording(tmp_path, "101_1b1_Al_sc_Litt3200", "0.5\t1.5\t1\t0\n1.5\t2.5\t0\t0\n")
    spec = FeatureSpec()
    grid = FrameGrid.of(spec.sample_rate_hz, spec.hop_samples, spec.frame_samples, 4)
    store = FeatureStore(spec, ("logmel",), None)
    fill = np.full((1, spec.n_bands), -3.0, np.float32)
    (rec,) = load_icbhi_recordings(load_icbhi(tmp_path), store, ("logmel",), grid, 4, fill)
    assert rec.record_id == "icbhi/101_1b1_Al_sc_Litt3200"
    assert rec.patient_id == "icbhi/101"
    assert rec.label == "DAS"
    x = rec.features.astype(np.float32)
    # the zero lead-in is the fill value, not the log floor; the recorded audio is untouched
    lead_in = int(LEAD_IN_S * spec.sample_rate_hz) // spec.hop_samples - 3
    np.testing.assert_allclose(x[0, :, :lead_in], -3.0)
    assert not np.allclose(x[0, :, lead_in + 10 :], -3.0)
    fine = rec.targets[OUTPUTS.index("Fine Crackle")]
    frames_s = (np.arange(rec.n_frames) + 0.5) * 0.04
    assert np.all(fine[(frames_s > 0.6) & (frames_s < 1.4)] == 1.0)
    assert np.all(fine[frames_s > 1.6] == 0.0)
    assert np.all(rec.weights[:, frames_s < 0.4] == 0.0)


def test_icbhi_record_label_from_its_cycles(tmp_path: Path) -> None:
    expected = {
        "0 1 0 0\n": "Normal",
        "0 1 0 1\n1 2 0 0\n": "CAS",
        "0 1 1 0\n": "DAS",
        "0 1 1 0\n1 2 0 1\n": "CAS & DAS",
    }
    for i, (cycles, label) in enumerate(expected.items()):
        folder = tmp_path / str(i)
        folder.mkdir()
        _recording(folder, "102_1b1_Ar_sc_Meditron", cycles)
        (rec,) = load_icbhi(folder)
        assert icbhi_label(rec) == label
