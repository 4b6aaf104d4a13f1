""":class:`BackendConfig`, apart from the package so the backends and ``open_backend`` share it."""

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
        providers, threads, batch = self.providers, self.intra_op_threads, self.max_batch
        known = isinstance(providers, tuple) and all(p in PROVIDERS for p in providers)
        providers_ok = known and 0 < len(set(providers)) == len(providers)
        distinct = f"a non-empty list of distinct names from {PROVIDERS}"
        check(providers_ok, "providers", providers, distinct)
        check(self.precision in PRECISIONS, "precision", self.precision, f"one of {PRECISIONS}")
        folder = "a string (a folder path, or empty for trt_cache/ beside the model)"
        cache = self.engine_cache_dir
        check(isinstance(cache, str), "engine_cache_dir", cache, folder)
        check(_is_int(threads) and threads >= 1, "intra_op_threads", threads, "an integer >= 1")
        batch_ok = _is_int(batch) and 1 <= batch <= MAX_BATCH_LIMIT
        check(batch_ok, "max_batch", batch, f"an integer in [1, {MAX_BATCH_LIMIT}]")

    def cache_dir_for(self, model_path: Path) -> Path:
        """The TensorRT EP engine-cache folder for ``model_path``."""
        if self.engine_cache_dir:
            return Path(self.engine_cache_dir).expanduser()
        return Path(model_path).parent / "trt_cache"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
