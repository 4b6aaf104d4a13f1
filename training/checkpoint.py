"""Checkpoints carry their run config and FeatureSpec (whisper's ``dims`` idea).

A checkpoint is a plain dict of tensors and plain data, loaded with
``torch.load(weights_only=True)`` and ``load_state_dict(strict=True)``:

    format, version                 "lungwatch-checkpoint", 1
    run_config                      the whole RunConfig as plain data (YAML-safe)
    feature_spec, kinds, classes    the contract the device checks
    model_config                    ModelConfig with derived sizes
    model                           state_dict (input normalisation buffers included)
    epoch, best_score, val_scores   training progress and validation results
    optimizer, scheduler, rng       only in resumable ("last") checkpoints
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edge.config import from_mapping, to_mapping
from edge.errors import LungwatchError
from edge.features import FeatureSpec
from training.config import RunConfig
from training.models import LungNet, ModelConfig, build_model

CHECKPOINT_FORMAT = "lungwatch-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(LungwatchError):
    """A checkpoint is missing, of another format, or does not match its model."""


@dataclass(frozen=True)
class LoadedModel:
    model: LungNet
    run: RunConfig
    spec: FeatureSpec  # the base spec; branch b uses spec.replace(kind=kinds[b])
    kinds: tuple[str, ...]
    classes: tuple[str, ...]
    meta: dict[str, Any]


def save_checkpoint(path: Path, model: LungNet, run: RunConfig, **extra: Any) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves half a checkpoint."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "run_config": to_mapping(run),
        "feature_spec": run.features.to_dict(),
        "kinds": list(run.kinds),
        "classes": list(run.data.classes),
        "model_config": to_mapping(run.model_config()),
        "model": model.state_dict(),
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def _load_failure(exc: BaseException) -> str:
    """What ``torch.load`` found wrong, without its advice on ``weights_only=False``
    (a lungwatch checkpoint never needs it)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].split("Check the documentation", 1)[0]
    return " ".join(text.split()) or type(exc).__name__


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, checked for format and version."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({_load_failure(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} file")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {payload.get('version')!r}, "
            f"this lungwatch reads version {CHECKPOINT_VERSION}"
        )
    return payload


def load_model(path: str | Path) -> LoadedModel:
    """Rebuild the model from the checkpoint's own config and load its weights strictly."""
    payload = read_checkpoint(path)
    source = f"{path} (checkpoint)"
    run = from_mapping(RunConfig, payload["run_config"], source=source)
    model = build_model(from_mapping(ModelConfig, payload["model_config"], source=source))
    try:
        model.load_state_dict(payload["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the model ({exc})") from exc
    model.eval()
    meta = {k: v for k, v in payload.items() if k not in ("model", "optimizer", "scheduler")}
    return LoadedModel(
        model,
        run,
        FeatureSpec.from_dict(payload["feature_spec"], source),
        tuple(payload["kinds"]),
        tuple(payload["classes"]),
        meta,
    )
