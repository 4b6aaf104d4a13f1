"""manifest.json: written by edge/inference/manifest_write.py (export, engine), read by
edge/inference/manifest.py."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge.features import FeatureSpec
from edge.inference.manifest import (
    Manifest,
    ManifestError,
    load_manifest,
    require_spec,
    sha256_file,
    verify_file,
)
from edge.inference.manifest_write import record_artifact
from export.to_onnx import tool_versions
from lungwatch.errors import FeatureSpecMismatchError

REPO = Path(__file__).resolve().parents[2]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _edit(folder: Path, change: Any) -> Path:
    """Apply ``change(data)`` to the folder's manifest.json; return its path."""
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def test_export_writes_a_complete_manifest(exported_dir: Path) -> None:
    data = json.loads((exported_dir / "manifest.json").read_text())
    checkpoint_sha = _sha(exported_dir / "model.pt")
    assert data["schema_version"] == 2
    assert data["model_id"] == f"tiny-{checkpoint_sha[:12]}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["created_utc"])
    assert data["checkpoint"] == {"file": "model.pt", "sha256": checkpoint_sha, "epoch": -1}
    entry = data["files"]["model.onnx"]
    assert entry["sha256"] == _sha(exported_dir / "model.onnx")
    assert entry["bytes"] == (exported_dir / "model.onnx").stat().st_size
    assert entry["precision"] == "fp32"
    assert entry["parity"]["max_abs_prob_diff"] <= 1e-4
    assert data["onnx"]["inputs"] == {"features": [1, 64, 16], "state": [data["streaming"][
        "state_size"]]}  # fmt: skip
    assert data["feature_spec"] == FeatureSpec().to_dict()
    assert data["kinds"] == ["logmel"]
    assert data["outputs"][-2:] == ["Breath", "Poor Quality"]
    assert {"python", "numpy", "torch", "onnx", "onnxruntime"} <= set(data["tools"])


def test_load_manifest_gives_the_device_contract(exported_dir: Path) -> None:
    manifest = load_manifest(exported_dir / "manifest.json")
    assert isinstance(manifest, Manifest)
    assert manifest.feature_spec == FeatureSpec()
    assert manifest.input_shape == (1, 64, 16)
    assert manifest.streaming.input_frames == 16
    assert manifest.outputs[-2:] == ("Breath", "Poor Quality")
    assert manifest.file_path("model.onnx") == exported_dir / "model.onnx"
    assert verify_file(manifest, exported_dir / "model.onnx").precision == "fp32"


def test_tampered_file_is_detected(model_copy: Path) -> None:
    manifest = load_manifest(model_copy / "manifest.json")
    target = model_copy / "model.int8.onnx"
    listed = manifest.files["model.int8.onnx"].sha256
    verify_file(manifest, target)
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    target.write_bytes(bytes(raw))
    with pytest.raises(ManifestError) as info:
        verify_file(manifest, target)
    actual = sha256_file(target)
    assert str(info.value) == (
        f"model.int8.onnx: sha256 {actual[:12]}… does not match the manifest ({listed[:12]}…)"
    )


def test_unlisted_and_missing_files_are_refused(model_copy: Path) -> None:
    manifest = load_manifest(model_copy / "manifest.json")
    (model_copy / "model.plan").write_bytes(b"engine")
    with pytest.raises(ManifestError, match=r"model\.plan: not listed in .*manifest\.json"):
        verify_file(manifest, model_copy / "model.plan")
    (model_copy / "model.onnx").unlink()
    with pytest.raises(ManifestError, match="file not found"):
        verify_file(manifest, model_copy / "model.onnx")


def test_feature_spec_mismatch_is_refused(exported_dir: Path) -> None:
    manifest = load_manifest(exported_dir / "manifest.json")
    require_spec(manifest, FeatureSpec())  # the same spec passes
    with pytest.raises(FeatureSpecMismatchError, match=r"n_bands: model 64 vs config 32"):
        require_spec(manifest, FeatureSpec().replace(n_bands=32))
    with pytest.raises(FeatureSpecMismatchError, match="kind: model"):
        require_spec(manifest, FeatureSpec().replace(kind="gammatone"))


def _drop(key: str) -> Any:
    return lambda data: data.pop(key)


def _set(key: str, value: Any) -> Any:
    return lambda data: data.__setitem__(key, value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_drop("streaming"), "streaming is missing"),
        (_set("schema_version", 1), "schema_version 1 is not supported"),
        (_set("schema_version", 3), "schema_version 3 is not supported"),
        (_set("kinds", ["mfcc"]), "kinds must be feature kinds"),
        (_set("outputs", []), "outputs must be a list of at least 1"),
        (
            lambda d: d["onnx"]["inputs"].__setitem__("features", [1, 32, 16]),
            "onnx.inputs must be {'features': [1, 64, 16]",
        ),
        (
            lambda d: d["files"]["model.onnx"].__setitem__("sha256", "xyz"),
            "files['model.onnx'].sha256 must be 64 lowercase hex characters",
        ),
        (
            lambda d: d["files"]["model.onnx"].pop("precision"),
            "files['model.onnx'].precision is missing",
        ),
        (lambda d: d["feature_spec"].__setitem__("n_bands", 0), "feature_spec: n_bands must be"),
    ],
)
def test_load_manifest_errors_name_file_and_key(
    model_copy: Path, change: Any, message: str
) -> None:
    path = _edit(model_copy, change)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_manifests(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "manifest.json")
    (tmp_path / "manifest.json").write_text('{"schema_version": 2,')
    with pytest.raises(ManifestError, match=r"not valid JSON \(line 1"):
        load_manifest(tmp_path / "manifest.json")


def test_record_artifact_adds_an_entry_atomically(model_copy: Path) -> None:
    manifest_path = model_copy / "manifest.json"
    engine = model_copy / "model.int8.plan"
    engine.write_bytes(b"\x00serialized engine")
    record_artifact(manifest_path, engine, precision="int8", extra={"tensorrt_version": "10.3.0"})
    entry = load_manifest(manifest_path).files["model.int8.plan"]
    assert (entry.sha256, entry.bytes, entry.precision) == (_sha(engine), 18, "int8")
    assert entry.extra["tensorrt_version"] == "10.3.0"
    data = json.loads(manifest_path.read_text())
    assert set(data["files"]) == {"model.onnx", "model.int8.onnx", "model.int8.plan"}
    assert sorted(p.name for p in model_copy.iterdir() if p.name.endswith(".tmp")) == []
    assert oct(manifest_path.stat().st_mode & 0o777) == "0o644"


def test_record_artifact_refuses_other_folders_and_missing_manifest(
    model_copy: Path, tmp_path: Path
) -> None:
    stray = tmp_path / "elsewhere.plan"
    stray.write_bytes(b"x")
    with pytest.raises(ManifestError, match="not in the manifest's folder"):
        record_artifact(model_copy / "manifest.json", stray, precision="int8")
    with pytest.raises(ManifestError, match="manifest not found"):
        record_artifact(tmp_path / "manifest.json", stray, precision="int8")


def test_tool_versions_lists_only_importable_packages() -> None:
    versions = tool_versions()
    assert {"python", "numpy", "torch", "onnx", "onnxruntime"} <= set(versions)
    assert all(isinstance(v, str) and v for v in versions.values())
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "tensorrt" not in versions


def test_edge_manifest_imports_no_workstation_packages() -> None:
    code = (
        "import sys, edge.inference.manifest; "
        "print(sorted(m for m in ('torch', 'onnx', 'training', 'export') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
