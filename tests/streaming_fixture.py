"""A tiny, randomly initialised streaming model folder (manifest schema 2) for tests.

The real export path writes it (:func:`export.to_onnx.export_folder`: a checkpoint ->
``model.onnx`` + ``manifest.json``), so tests run the same files the device runs, only smaller:
16 channels, two blocks, 2 frames of look-ahead, 4 outputs per call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

CHUNK_FRAMES = 4
LOG_MEL_MEAN = -9.0  # about where log-mel bands of real chest audio sit (natural log)
LOG_MEL_STD = 2.5


def tiny_config() -> Any:
    from training.data.targets import OUTPUTS
    from training.models.sed import SedConfig

    return SedConfig(
        n_kinds=1, n_bands=64, n_outputs=len(OUTPUTS), stride=4, channels=16,
        dilations=(1, 2), kernel_widths=(3, 5), lookahead_frames=2,
    )  # fmt: skip


def vary_batchnorm(model: Any, mean_range: float = 0.5) -> None:
    """Non-trivial batch-norm statistics, as after training: running means uniform in
    ±``mean_range``, variances in [0.5, 2) (in place, from torch's generator)."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-mean_range, mean_range)
                module.running_var.uniform_(0.5, 2.0)


def tiny_checkpoint(
    path: Path,
    seed: int = 0,
    config: Any = None,
    detector: dict[str, Any] | None = None,
    quality: dict[str, float] | None = None,
    run: dict[str, Any] | None = None,
    icbhi_patients: tuple[str, ...] | None = None,
) -> Path:
    """A checkpoint of a random tiny SedNet (BatchNorm statistics varied) of ``config``
    (default :func:`tiny_config`), with ``detector`` rules, ``quality`` thresholds, the
    ``run`` config it says made it and the ICBHI patients it says it trained on."""
    import torch

    from edge.features import FeatureSpec
    from training.data.targets import OUTPUTS
    from training.models.checkpoint import Checkpoint, save_checkpoint
    from training.models.sed import SedNet

    torch.manual_seed(seed)
    config = config or tiny_config()
    model = SedNet(config)
    vary_batchnorm(model)
    mean = np.full((config.n_kinds, config.n_bands), LOG_MEL_MEAN, np.float32)
    std = np.full((config.n_kinds, config.n_bands), LOG_MEL_STD, np.float32)
    model.set_input_stats(torch.from_numpy(mean), torch.from_numpy(std))
    spec = FeatureSpec(n_bands=config.n_bands)
    kinds = ("logmel", "gammatone", "cwt")[: config.n_kinds]
    ckpt = Checkpoint(model.eval(), spec, kinds, OUTPUTS[: config.n_outputs], name="tiny",
                      detector=detector, quality=quality, run=run or {},
                      icbhi_patients=icbhi_patients)  # fmt: skip
    return save_checkpoint(path, ckpt)


def tiny_streaming_folder(
    folder: Path,
    detector: dict[str, Any] | None = None,
    quality: dict[str, float] | None = None,
    run: dict[str, Any] | None = None,
) -> Path:
    """``folder`` with model.pt, model.onnx and manifest.json of the tiny model."""
    from export.to_onnx import export_folder

    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = tiny_checkpoint(folder / "source.pt", detector=detector, quality=quality, run=run)
    export_folder(checkpoint, folder, CHUNK_FRAMES)
    return folder
