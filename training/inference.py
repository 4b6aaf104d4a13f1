"""Window classification with a trained model, shared by ``predict`` and ``detect``.

A :class:`WindowClassifier` knows its feature spec, kinds, classes and window size and turns
a batch of feature windows into class probabilities. :func:`load_classifier` opens a
checkpoint (``.pt``) or an exported ONNX model (``.onnx``, FP32 or INT8, with the
``manifest.json`` beside it), so every score can be measured for each precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.backends import BackendConfig, open_backend
from edge.backends.base import InferenceBackend, softmax
from edge.features import FeatureSpec
from edge.manifest import load_manifest, verify_file
from training.checkpoint import load_model
from training.features_cache import FeatureStore
from training.models import LungNet
from training.windows import Window

BATCH_WINDOWS = 64


@dataclass
class WindowClassifier:
    """A trained model with the contract it was trained under."""

    model: LungNet | None  # None: an ONNX model run by ``backend``
    spec: FeatureSpec
    kinds: tuple[str, ...]
    classes: tuple[str, ...]
    window_frames: int
    source: str
    meta: dict[str, Any] = field(default_factory=dict)  # the checkpoint's other entries
    backend: InferenceBackend | None = None  # runs ONNX models (ONNX Runtime CPU)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(B, kinds, bands, frames) float32 features -> (B, classes) logits."""
        if self.backend is not None:
            return self.backend.infer(np.ascontiguousarray(x, dtype=np.float32))
        if self.model is None:
            raise ValueError(f"{self.source}: neither a torch model nor a backend")
        with torch.no_grad():
            logits, _, _ = self.model(torch.as_tensor(x, dtype=torch.float32))
        return logits.numpy()

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(B, kinds, bands, frames) float32 features -> (B, classes) probabilities."""
        return softmax(self.logits(x))

    def store(self, cache_dir: Path | None = None) -> FeatureStore:
        """A feature store computing exactly this model's input features."""
        return FeatureStore(self.spec, self.kinds, cache_dir)


def load_classifier(path: str | Path) -> WindowClassifier:
    """Open a checkpoint (``.pt``) or an exported model (``.onnx`` with its manifest)."""
    path = Path(path)
    if path.suffix == ".onnx":
        return load_onnx_classifier(path)
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


def load_onnx_classifier(path: Path, threads: int = 1) -> WindowClassifier:
    """An exported model run by ONNX Runtime on the CPU; contract from ``manifest.json``
    beside it (the file's sha256 must match the manifest)."""
    manifest = load_manifest(path.parent / "manifest.json")
    verify_file(manifest, path)
    backend = open_backend(BackendConfig(intra_op_threads=threads), path)
    meta: dict[str, Any] = {"model_id": manifest.model_id}
    if manifest.record_thresholds is not None:
        meta["record_thresholds"] = dict(manifest.record_thresholds)
    return WindowClassifier(
        None,
        manifest.feature_spec,
        manifest.kinds,
        manifest.classes,
        manifest.window_frames,
        str(path),
        meta,
        backend,
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
