"""The onnxruntime CUDA execution provider on the shipped streaming model, through the device
path (``edge.runtime.offline.detect_recordings``: file sources, front end, beds' state carried, the
detector), against the CPU provider on the same recordings.

Needs onnxruntime-gpu and an NVIDIA GPU; skipped with the reason elsewhere (CI has neither).
Run where they exist: ``python -m pytest -m requires_cuda tests/edge/test_backend_cuda.py``.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest

from edge.inference import BackendConfig
from edge.inference.onnxruntime import OrtBackend
from edge.runtime.offline import detect_recordings, recordings_in

ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "models" / "sed"
EXAMPLES = ROOT / "examples"  # the three SPRSound demo recordings kept in the repository
CUDA = "CUDAExecutionProvider"

pytestmark = [
    pytest.mark.requires_cuda,
    pytest.mark.skipif(
        CUDA not in ort.get_available_providers(),
        reason="no CUDA execution provider in this onnxruntime build (onnxruntime-gpu on an "
        "NVIDIA GPU host)",
    ),
]


def _run(model_file: str, providers: tuple[str, ...]) -> dict:
    backend = BackendConfig(providers=providers, intra_op_threads=1, max_batch=64)
    return detect_recordings(
        recordings_in([EXAMPLES]), MODEL_DIR, model_file, backend=backend, keep_probs=True
    )


@pytest.mark.parametrize(
    ("model_file", "atol"),
    # FP32: the same arithmetic up to summation order (H100, 2026-11-24: max 5e-4). INT8: the
    # CPU provider runs the Q/DQ pairs as integer kernels, CUDA dequantizes and runs FP32
    # (H100: max 0.047, p99 0.02); the events must still be the same.
    [("model.onnx", 2e-3), ("model.int8.onnx", 0.1)],
)
def test_cuda_runs_the_shipped_model_as_the_cpu_does(model_file: str, atol: float) -> None:
    session = OrtBackend(MODEL_DIR / model_file, BackendConfig(providers=("cuda",)))
    try:
        assert session.name == f"onnxruntime/{CUDA}"  # not a silent fall-back to the CPU
    finally:
        session.close()
    cpu, gpu = _run(model_file, ("cpu",)), _run(model_file, ("cuda",))
    assert sorted(gpu) == sorted(cpu)
    assert len(cpu) == 3
    for name in cpu:
        a, b = cpu[name].probs, gpu[name].probs
        assert a is not None
        assert b is not None
        assert a.shape == b.shape
        assert a.shape[0] > 200
        diff = float(np.abs(a - b).max())
        print(f"{model_file} {name}: {a.shape[0]} frames, max |CUDA - CPU| = {diff:.2e}")
        assert diff <= atol, f"{name}: CUDA and CPU probabilities differ by {diff:.3g}"
        for kind in ("physiological", "technical"):
            spans = [
                [(e["type"], e["start_s"], e["end_s"]) for e in getattr(run[name], kind)]
                for run in (cpu, gpu)
            ]
            assert spans[0] == spans[1], f"{name}: CUDA and CPU give other {kind} events"


def _has_tensorrt_libraries() -> bool:
    try:
        ctypes.CDLL("libnvinfer.so.10")
    except OSError:
        return False
    return True


@pytest.mark.skipif(
    "TensorrtExecutionProvider" not in ort.get_available_providers(),
    reason="this onnxruntime build has no TensorRT execution provider",
)
def test_a_tensorrt_provider_without_tensorrt_falls_back_to_cuda(
    caplog: pytest.LogCaptureFixture,
) -> None:
    if _has_tensorrt_libraries():
        pytest.skip("TensorRT is installed here: the TensorRT provider would load")
    config = BackendConfig(providers=("tensorrt", "cuda", "cpu"))
    with caplog.at_level("WARNING", logger="lungwatch.backend"):
        backend = OrtBackend(MODEL_DIR / "model.int8.onnx", config)
    try:
        assert backend.name == f"onnxruntime/{CUDA}"
    finally:
        backend.close()
    assert "TensorRT execution provider did not load for model.int8.onnx; running on " in (
        caplog.text
    )
