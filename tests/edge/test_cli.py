"""The console script, run as a user would (real files). The demo's tests: test_demo.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge.cli import main


def test_usage_and_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "commands:" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_features_writes_frames_and_spec(tmp_path: Path) -> None:
    wav = tmp_path / "tone.wav"
    t = np.arange(16000) / 16000  # 16 kHz file: resampled to the spec's 8 kHz
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000)
    code = main(
        [
            "features",
            str(wav),
            "--kind",
            "gammatone",
            "--set",
            "n_bands=16",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    frames = np.load(tmp_path / "out" / "tone.gammatone.npy")
    assert frames.shape == (97, 16)  # 1 s at 8 kHz, 256/80 framing
    spec = json.loads((tmp_path / "out" / "tone.gammatone.spec.json").read_text())
    assert spec["n_bands"] == 16
    assert spec["kind"] == "gammatone"


def test_features_bad_override_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["features", str(tmp_path / "x.wav"), "--set", "hop_samples=0"])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "lungwatch features: error: --set: hop_samples must be an integer in "
        "[1, frame_samples=256], got 0"
    )


def test_features_missing_file_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["features", str(tmp_path / "absent.wav")]) == 1
    assert "absent.wav" in capsys.readouterr().err
