"""The INT8 file's weights and what they mean on CPUs without VNNI: 7-bit weight codes keep
onnxruntime's int8 kernels from saturating there (export.quantize.WEIGHT_BITS)."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.quantize import WEIGHT_BITS, calibration_chunks


def _weight_codes(path: Path) -> list[np.ndarray]:
    """The int8 weight tensors of the Q/DQ graph (per-channel DequantizeLinear inputs)."""
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return [
        inits[n.input[0]]
        for n in graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in inits
        and inits[n.input[0]].dtype == np.int8
        and inits[n.input[0]].size > 1
    ]


def test_weights_use_seven_bits(quantized_dir: Path) -> None:
    """|q| <= 64: two uint8 x int8 products fit an int16 (x86 CPUs without VNNI)."""
    limit = 2 ** (WEIGHT_BITS - 1)
    codes = _weight_codes(quantized_dir / "model.int8.onnx")
    assert len(codes) >= 5
    peaks = [int(np.abs(c.astype(np.int32)).max()) for c in codes]
    assert max(peaks) == limit  # the range is used, not only bounded
    assert all(peak <= limit for peak in peaks)


# Runs both models on the chunks in argv[1] and saves their outputs to argv[2] (.npz).
_PROBS_SCRIPT = """
import sys
import numpy as np
import onnxruntime as ort

feed = dict(np.load(sys.argv[1]))
options = ort.SessionOptions()
options.intra_op_num_threads = 1
out = {}
for name, path in (("fp32", sys.argv[3]), ("int8", sys.argv[4])):
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    out[name] = session.run(["probs"], feed)[0]
np.savez(sys.argv[2], **out)
"""


def test_int8_tracks_fp32_on_a_cpu_without_vnni(quantized_dir: Path, tmp_path: Path) -> None:
    """The INT8 model against FP32 on an emulated Haswell (AVX2, no VNNI): qemu-x86_64 runs
    onnxruntime on real chunks with their carried states. With 8-bit weights VPMADDUBSW
    saturates its int16 sums there (a test model's logits correlated 0.92 with FP32)."""
    qemu = shutil.which("qemu-x86_64")
    if platform.machine() != "x86_64" or qemu is None:
        pytest.skip("needs x86_64 and qemu-x86_64 (Debian qemu-user; make test installs it)")
    model, int8 = quantized_dir / "model.onnx", quantized_dir / "model.int8.onnx"
    rng = np.random.default_rng(5)
    recordings = [rng.normal(-9.0, 2.5, (1, 64, 160)).astype(np.float32) for _ in range(4)]
    chunks = calibration_chunks(model, recordings, 24, seed=5)
    feed = {k: np.concatenate([c[k] for c in chunks]) for k in ("features", "state")}
    np.savez(tmp_path / "x.npz", **feed)
    (tmp_path / "probs.py").write_text(_PROBS_SCRIPT)
    command = [qemu, "-cpu", "Haswell", sys.executable, str(tmp_path / "probs.py")]
    args = [str(tmp_path / "x.npz"), str(tmp_path / "out.npz"), str(model), str(int8)]
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    out = np.load(tmp_path / "out.npz")
    fp32, got = out["fp32"], out["int8"]
    assert np.corrcoef(fp32.ravel(), got.ravel())[0, 1] > 0.99
    assert np.max(np.abs(fp32 - got)) < 0.1
