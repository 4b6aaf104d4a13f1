"""Shared by the export tests: synthetic calibration audio, and the tiny streaming model folder
exported (fp32) and quantized (int8) from it once per session by the real export path."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile as sf
import torch

from tests.streaming_fixture import tiny_streaming_folder
from training.data.synthetic import synthesize

RATE_HZ = 8000
RECORDING_S = 3.5
CALIB_MAX_CHUNKS = 8
# name (nested folders allowed), seed, crackles, wheezes, subtype
RECORDINGS = (
    ("a_normal.wav", 1, 0, 0, "PCM_16"),
    ("b_crackles.wav", 2, 6, 0, "PCM_16"),
    ("c_wheeze.flac", 3, 0, 2, "PCM_16"),
    ("nested/d_both.wav", 4, 4, 1, "FLOAT"),
)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny tensors on a shared 2-core machine: one thread avoids oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic lung sounds (WAV and FLAC, one in a subfolder) and a non-audio file."""
    folder = tmp_path_factory.mktemp("calib")
    for name, seed, crackles, wheezes, subtype in RECORDINGS:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        audio = synthesize(RECORDING_S, RATE_HZ, seed=seed, crackles=crackles, wheezes=wheezes)
        sf.write(path, audio.samples, RATE_HZ, subtype=subtype)
    (folder / "notes.txt").write_text("not audio\n")
    return folder


@pytest.fixture(scope="session")
def exported_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model folder (model.pt, model.onnx, manifest.json) as export leaves it."""
    return tiny_streaming_folder(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def quantized_dir(
    tmp_path_factory: pytest.TempPathFactory, exported_dir: Path, calib_dir: Path
) -> Path:
    """A copy of ``exported_dir`` after quantization: adds model.int8.onnx."""
    from export.quantize import main

    folder = Path(shutil.copytree(exported_dir, tmp_path_factory.mktemp("int8") / "model"))
    argv = ["--model", str(folder / "model.onnx"), "--out", str(folder / "model.int8.onnx"),
            "--calib-dir", str(calib_dir), "--max-chunks", str(CALIB_MAX_CHUNKS)]  # fmt: skip
    assert main(argv) == 0
    return folder


@pytest.fixture
def model_copy(quantized_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the quantized model folder, for tests that change files."""
    return Path(shutil.copytree(quantized_dir, tmp_path / "model"))
