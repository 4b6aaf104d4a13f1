"""The console script, run as a user would (real files). The demo's tests: test_demo.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lungwatch.cli import DEVICE_COMMANDS, WORKSTATION_COMMANDS, edge_main, main
from tests.edge.runtime_helpers import REPO_ROOT


def _fresh_interpreter(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new Python, so only what it imports is in ``sys.modules``."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


def test_usage_and_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert edge_main([]) == 2
    assert "commands:" in capsys.readouterr().out
    assert edge_main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_version_names_the_script_and_the_installed_release(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"lungwatch {version('lungwatch')}\n"
    assert edge_main(["--version"]) == 0
    assert capsys.readouterr().out == f"lungwatch-edge {version('lungwatch')}\n"


def test_the_device_script_carries_device_commands_only() -> None:
    assert {"train", "export", "quantize", "predict"} <= set(WORKSTATION_COMMANDS)
    # the workstation's detect is the device's with --score; nothing else is shared
    assert set(DEVICE_COMMANDS) & set(WORKSTATION_COMMANDS) == {"detect"}
    for module, _ in DEVICE_COMMANDS.values():
        assert not module.startswith("training."), module


@pytest.mark.parametrize("name", sorted(DEVICE_COMMANDS))
def test_a_device_command_imports_no_workstation_code(name: str) -> None:
    """Each device command's module, imported in a fresh interpreter as ``lungwatch-edge``
    would, imports neither training code nor torch nor onnx (the device has none of them)."""
    module = DEVICE_COMMANDS[name][0]
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'training', 'torch', 'onnx', "
        "'sed_eval'}))"
    )
    result = _fresh_interpreter(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"{module} imports {result.stdout.strip()}"


def test_detect_refuses_score_on_the_device(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        edge_main(["detect", "--audio", str(REPO_ROOT / "examples"), "--score"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--score needs the workstation install (lungwatch detect --score)" in err


@pytest.mark.parametrize("name", ["train", "export", "quantize"])
def test_the_device_script_refuses_workstation_commands_and_says_where_they_are(
    name: str,
) -> None:
    # a fresh interpreter: the device script must not import training code to answer
    code = (
        f"import sys; from lungwatch.cli import edge_main; rc = edge_main([{name!r}]); "
        "print('imported:', sorted(m for m in sys.modules if m.split('.')[0] in "
        "('training', 'torch', 'export'))); sys.exit(rc)"
    )
    result = _fresh_interpreter(code)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == f"lungwatch-edge: unknown command {name!r}"
    assert "are in 'lungwatch' on the workstation" in result.stderr
    assert "imported: []" in result.stdout
    listed = [line.split()[0] for line in result.stderr.splitlines() if line.startswith("  ")]
    assert listed == list(DEVICE_COMMANDS)


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


def test_detect_out_to_a_folder_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    audio = tmp_path / "a.wav"
    sf.write(audio, np.zeros(8000, np.float32), 8000)
    folder = tmp_path / "out"
    folder.mkdir()
    argv = ["detect", "--audio", str(audio), "--out", str(folder)]
    result = subprocess.run(
        [sys.executable, "-m", "lungwatch.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        f"lungwatch detect: error: {folder}: is a folder; --out and --technical take a file name"
    )
    assert list(folder.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "out"]


def test_detect_writes_each_recordings_breathing(tmp_path: Path) -> None:
    """``--respiration FILE``: one summary per recording (rate null where not assessable);
    ``--age-band auto`` takes a SPRSound name's age, the default band for other names."""
    from tests.edge.breathing_audio import RATE_HZ, chest_audio

    folder = tmp_path / "audio"
    folder.mkdir()
    sf.write(folder / "chest.wav", chest_audio(45.0, 20.0), RATE_HZ, subtype="PCM_16")
    shutil.copy(REPO_ROOT / "examples" / "64913238_0.6_1_p3_2175.flac", folder)
    out = tmp_path / "resp.json"
    code = main(["detect", "--audio", str(folder), "--out", str(tmp_path / "e.json"),
                     "--respiration", str(out), "--age-band", "auto"])  # fmt: skip
    assert code == 0
    found = json.loads(out.read_text())
    assert set(found) == {"chest", "64913238_0.6_1_p3_2175"}
    chest = found["chest"]
    assert chest["assessable"] is True
    assert chest["rate_bpm"] == pytest.approx(20.0, abs=1.5)
    assert chest["breaths"] == pytest.approx(45 * 20 / 60, abs=1)
    live = [r for r in chest["series"] if r["state"] == "ok"]  # what the ward view showed
    assert live
    assert all(r["rate_bpm"] == pytest.approx(20.0, abs=1.5) for r in live)
    assert [r["t_s"] for r in chest["series"]] == sorted(r["t_s"] for r in chest["series"])
    assert not {"interval_rate_bpm", "period_bpm"} & set(chest), "one rate per recording"
    assert chest["age_band"] == "adult"
    assert found["64913238_0.6_1_p3_2175"]["age_band"] == "infant-2-12m"  # 0.6 years old
    with pytest.raises(SystemExit):
        main(["detect", "--audio", str(folder), "--age-band", "elderly"])
