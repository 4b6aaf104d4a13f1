"""Inference cost per window against batch size, for ``bench.runtime`` (a child measurement).

INT8 and FP32 through ``OrtBackend`` as the runtime opens them, on random features (the cost
does not depend on the values), states carried across calls, repeats interleaved over sizes and
models so other load falls on all alike; medians. It chose ``BackendConfig.max_batch``'s default.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference.config import MAX_BATCH_LIMIT, BackendConfig
from edge.inference.onnxruntime import OrtBackend

FILES = {"int8": "model.int8.onnx", "fp32": "model.onnx"}
BATCH_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
WINDOWS_PER_SIZE = 96
REPEATS = 7
SEED = 0


def sweep(model_dir: str = "models/sed") -> dict[str, Any]:
    """Median ``ms_per_window`` per batch size and model file; a window is one bed's chunk."""
    config = BackendConfig(providers=("cpu",), intra_op_threads=1, max_batch=MAX_BATCH_LIMIT)
    backends = {name: OrtBackend(Path(model_dir) / f, config) for name, f in FILES.items()}
    shape = next(iter(backends.values())).input_shape
    rng = np.random.default_rng(SEED)
    batches = {n: rng.standard_normal((n, *shape)).astype(np.float32) for n in BATCH_SIZES}
    times: dict[str, dict[int, list[float]]] = {m: {n: [] for n in BATCH_SIZES} for m in FILES}
    for _ in range(REPEATS):
        for name, backend in backends.items():
            for n, batch in batches.items():
                times[name][n].append(_ms_per_window(backend, batch))
    for backend in backends.values():
        backend.close()
    return {
        "model": model_dir,
        "sizes": list(BATCH_SIZES),
        "ms_per_window": {m: [float(np.median(times[m][n])) for n in BATCH_SIZES] for m in FILES},
    }


def _ms_per_window(backend: OrtBackend, batch: np.ndarray) -> float:
    calls = max(2, WINDOWS_PER_SIZE // batch.shape[0])
    state = np.zeros((batch.shape[0], backend.state_size), np.float32)

    def run() -> None:
        nonlocal state
        _, state = backend.infer(batch, state)

    run()  # warm: the first call of a new shape allocates
    start_s = time.perf_counter()
    for _ in range(calls):
        run()
    return (time.perf_counter() - start_s) * 1e3 / (calls * batch.shape[0])
