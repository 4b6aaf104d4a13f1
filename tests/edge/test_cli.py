"""The console script and the demo, run as a user would (real files, real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge.cli import main
from edge.datapaths import sprsound_root


def _lungwatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, **(env or {})},
    )


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


def test_demo_runs_on_the_embedded_synthetic_default(tmp_path: Path) -> None:
    result = _lungwatch(
        "demo",
        "--set",
        f"out_dir={tmp_path}",
        "--set",
        "features.n_bands=24",
        env={"LUNGWATCH_DATA_DIR": str(tmp_path / "no-data")},
    )
    assert result.returncode == 0, result.stderr
    assert "synthetic" in result.stdout
    for kind in ("logmel", "gammatone", "cwt"):
        line = next(row for row in result.stdout.splitlines() if row.startswith(kind))
        assert float(line.split()[3]) <= 1e-5  # max |stream - batch|
        assert np.load(tmp_path / f"synthetic_{kind}.npy").shape[1] == 24
    assert (tmp_path / "synthetic.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.requires_data
def test_demo_runs_on_the_sprsound_record(tmp_path: Path) -> None:
    if not sprsound_root().is_dir():
        pytest.skip(f"SPRSound not found at {sprsound_root()} (set LUNGWATCH_DATA_DIR)")
    result = _lungwatch("demo", "--set", f"out_dir={tmp_path}", "--set", "kinds=[logmel]")
    assert result.returncode == 0, result.stderr
    assert "record label 'CAS & DAS'" in result.stdout
    assert "Wheeze" in result.stdout
    assert "Fine Crackle" in result.stdout
    assert (tmp_path / "41161556_1.7_0_p2_3062.png").exists()


def test_demo_bad_config_value_is_one_clear_line(tmp_path: Path) -> None:
    result = _lungwatch("demo", "--set", "kinds=[mfcc]")
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        "demo.yaml: kinds must be one of ('logmel', 'gammatone', 'cwt'), got 'mfcc'"
    )
