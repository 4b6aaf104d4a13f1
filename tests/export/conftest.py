"""Shared by the export tests: a small untrained model, synthetic calibration audio, and the
exported (fp32) and quantized (int8) model folder built from them once per session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from training.checkpoint import save_checkpoint
from training.config import RunConfig, load_run_config
from training.datasets.synthetic import synthesize
from training.features_cache import FeatureStore
from training.models import build_model

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "training" / "configs" / "tiny.yaml"
RATE_HZ = 8000
RECORDING_S = 3.5  # 3 windows of 96 frames (0.97 s) each
BN_PASSES = 5  # train-mode passes that give the untrained model realistic batch-norm stats
CALIB_MAX_WINDOWS = 8  # of the 12 windows in the recordings: a real sample
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
def tiny_run() -> RunConfig:
    return load_run_config(TINY)


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


def _realistic_model(run: RunConfig, calib_dir: Path) -> torch.nn.Module:
    """An untrained model with input statistics and batch-norm statistics of real features."""
    torch.manual_seed(run.seed)
    model = build_model(run.model_config())
    store = FeatureStore(run.features, run.kinds)
    features = [store.features(p) for p in sorted(calib_dir.rglob("*.wav"))]
    stacked = np.concatenate(features, axis=-1)  # (K, F, frames)
    model.set_input_stats(stacked.mean(axis=-1), stacked.std(axis=-1) + 1e-3)
    window = run.data.window_frames
    batch = np.stack([f[..., s : s + window] for f in features for s in (0, window)])
    model.train()
    with torch.no_grad():
        for _ in range(BN_PASSES):
            model(torch.from_numpy(batch))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, tiny_run: RunConfig, calib_dir: Path
) -> Path:
    """An untrained tiny model (training/configs/tiny.yaml) saved as a checkpoint."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    model = _realistic_model(tiny_run, calib_dir)
    record_thresholds = {"poor_quality": 0.5, "cas": 0.8, "das": 0.7}
    return save_checkpoint(path, model, tiny_run, epoch=0, record_thresholds=record_thresholds)


@pytest.fixture(scope="session")
def exported_dir(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """A model folder with model.onnx + manifest.json, as ``lungwatch export`` leaves it."""
    from export.to_onnx import export_checkpoint

    folder = tmp_path_factory.mktemp("model")
    export_checkpoint(tiny_checkpoint, folder / "model.onnx")
    return folder


@pytest.fixture(scope="session")
def quantized_dir(
    tmp_path_factory: pytest.TempPathFactory, exported_dir: Path, calib_dir: Path
) -> Path:
    """A copy of ``exported_dir`` after ``quantize`` (8 windows): adds model.int8.onnx."""
    from export.quantize import quantize_model

    folder = Path(shutil.copytree(exported_dir, tmp_path_factory.mktemp("int8") / "model"))
    quantize_model(
        folder / "model.onnx",
        calib_dir,
        folder / "model.int8.onnx",
        max_windows=CALIB_MAX_WINDOWS,
        seed=0,
    )
    return folder


@pytest.fixture
def model_copy(quantized_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the quantized model folder, for tests that change files."""
    return Path(shutil.copytree(quantized_dir, tmp_path / "model"))
