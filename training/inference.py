"""Window classification with a trained model, shared by ``predict`` and ``detect``.

A :class:`WindowClassifier` knows its feature spec, kinds, classes and window size and turns
a batch of feature windows into class probabilities. :func:`load_classifier` opens a
checkpoint (``.pt``); exported ONNX models come with the export step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.errors import LungwatchError
from edge.features import FeatureSpec
from training.checkpoint import load_model
from training.features_cache import FeatureStore
from training.models import LungNet
from training.windows import Window

BATCH_WINDOWS = 64


@dataclass
class WindowClassifier:
    """A trained model with the contract it was trained under."""

    model: LungNet
    spec: FeatureSpec
    kinds: tuple[str, ...]
    classes: tuple[str, ...]
    window_frames: int
    source: str
    meta: dict[str, Any] = field(default_factory=dict)  # the checkpoint's other entries

    @torch.no_grad()
    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(B, kinds, bands, frames) float32 features -> (B, classes) probabilities."""
        logits, _, _ = self.model(torch.as_tensor(x, dtype=torch.float32))
        return torch.softmax(logits, dim=1).numpy()

    def store(self, cache_dir: Path | None = None) -> FeatureStore:
        """A feature store computing exactly this model's input features."""
        return FeatureStore(self.spec, self.kinds, cache_dir)


def load_classifier(path: str | Path) -> WindowClassifier:
    """Open a checkpoint; an unknown file type is a clear error."""
    path = Path(path)
    if path.suffix == ".onnx":
        raise LungwatchError(
            f"{path}: ONNX models are read by the export tools "
            "(lungwatch export); give the training checkpoint (.pt) here"
        )
    loaded = load_model(path)
    return WindowClassifier(
        loaded.model,
        loaded.spec,
        loaded.kinds,
        loaded.classes,
        loaded.run.data.window_frames,
        str(path),
        loaded.meta,
    )


def window_probabilities(
    classifier: WindowClassifier, store: FeatureStore, windows: Sequence[Window]
) -> np.ndarray:
    """(len(windows), classes) probabilities, computed in batches."""
    out = np.zeros((len(windows), len(classifier.classes)), dtype=np.float32)
    for start in range(0, len(windows), BATCH_WINDOWS):
        chunk = windows[start : start + BATCH_WINDOWS]
        x = np.stack(
            [store.window(w.audio_path, w.start_frame, classifier.window_frames) for w in chunk]
        )
        out[start : start + len(chunk)] = classifier.probabilities(x)
    return out
