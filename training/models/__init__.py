"""Lung-sound networks: the multi-branch Inception-residual model and its compact edge variant.

Everything here exports to standard ONNX (opset 17, static shapes except the batch).
"""

from __future__ import annotations

from training.models.network import (
    ARCH_BLOCKS_PER_STAGE,
    ARCH_CHANNELS,
    LungNet,
    ModelConfig,
    build_model,
    count_parameters,
)

__all__ = [
    "ARCH_BLOCKS_PER_STAGE",
    "ARCH_CHANNELS",
    "LungNet",
    "ModelConfig",
    "build_model",
    "count_parameters",
]
