"""The deploy's verify gate (``remote.py gate``) reads ``lungwatch verify``'s table: the rows that
:mod:`export.verify` prints parse back into (stage, verdict), failures with ``|Δp|``-free cells."""

from __future__ import annotations

from deploy.remote import verify_rows
from edge.inference import BackendConfig
from export.verify import Artifact, Comparison, StageResult, onnx_backend, table_row


def test_rows_printed_by_verify_parse_back() -> None:
    fp32 = Artifact("model.onnx", "fp32", onnx_backend(("cpu",)))
    int8 = Artifact("model.int8.onnx", "int8", onnx_backend(("cpu",)))
    plan = Artifact("model.plan", "int8", BackendConfig(kind="tensorrt"))
    beyond = Comparison(max_abs_dp=0.7, problems=["frames max Δp 0.7 > 0.15"])
    results = [
        StageResult(fp32, Comparison(reference_events=12, matched=12)),
        StageResult(int8, beyond),
        StageResult(plan, skipped="no TensorRT here"),
    ]
    stdout = "reference: ...\n| stage | frames max/mean Δp | events matched | verdict |\n"
    stdout += "|---|---|---|---|\n" + "\n".join(table_row(r) for r in results) + "\n"
    assert verify_rows(stdout) == [
        ("onnxruntime model.onnx (fp32)", "within tolerance"),
        ("onnxruntime model.int8.onnx (int8)", "FAIL: frames max Δp 0.7 > 0.15"),
        ("tensorrt model.plan (int8)", "skipped: no TensorRT here"),
    ]
    refused = StageResult(int8, refused="model.int8.onnx: sha256 a|b does not match")
    assert verify_rows(table_row(refused)) == [
        ("onnxruntime model.int8.onnx (int8)", "FAIL: model.int8.onnx: sha256 a/b does not match")
    ]
