""":class:`BackendConfig`, apart from the package so that the backends and
:func:`edge.inference.open_backend` share it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lungwatch.config import check

BackendKind = Literal["onnxruntime", "tensorrt"]
Precision = Literal["fp32", "fp16", "int8"]

BACKEND_KINDS: tuple[str, ...] = ("onnxruntime", "tensorrt")
PROVIDERS: tuple[str, ...] = ("tensorrt", "cuda", "cpu")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
MAX_BATCH_LIMIT = 4096
DEFAULT_MAX_BATCH = 8  # beds per call on ORT CPU (see max_batch)


@dataclass(frozen=True)
class BackendConfig:
    """How the device runs the model (the ``backend`` section of the runtime YAML; each key
    and why ``max_batch`` is 8: docs/backends.md, "Configuration")."""

    kind: BackendKind = "onnxruntime"
    providers: tuple[str, ...] = ("cpu",)
    precision: Precision = "fp32"
    engine_cache_dir: str = ""
    intra_op_threads: int = 1
    max_batch: int = DEFAULT_MAX_BATCH

    def __post_init__(self) -> None:
        check(self.kind in BACKEND_KINDS, "kind", self.kind, f"one of {BACKEND_KINDS}")
        providers_ok = (
            isinstance(self.providers, tuple)
            and len(self.providers) > 0
            and all(p in PROVIDERS for p in self.providers)
            and len(set(self.providers)) == len(self.providers)
        )
        check(
            providers_ok,
            "providers",
            self.providers,
            f"a non-empty list of distinct names from {PROVIDERS}",
        )
        check(self.precision in PRECISIONS, "precision", self.precision, f"one of {PRECISIONS}")
        check(
            isinstance(self.engine_cache_dir, str),
            "engine_cache_dir",
            self.engine_cache_dir,
            "a string (a folder path, or empty for trt_cache/ beside the model)",
        )
        check(
            _is_int(self.intra_op_threads) and self.intra_op_threads >= 1,
            "intra_op_threads",
            self.intra_op_threads,
            "an integer >= 1",
        )
        check(
            _is_int(self.max_batch) and 1 <= self.max_batch <= MAX_BATCH_LIMIT,
            "max_batch",
            self.max_batch,
            f"an integer in [1, {MAX_BATCH_LIMIT}]",
        )

    def cache_dir_for(self, model_path: Path) -> Path:
        """The TensorRT EP engine-cache folder for ``model_path``."""
        if self.engine_cache_dir:
            return Path(self.engine_cache_dir).expanduser()
        return Path(model_path).parent / "trt_cache"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
