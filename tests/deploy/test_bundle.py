"""The bundle: every model file sha256-checked before it is packed, bundle.json lists the
sha256 of every file, the archive carries its own sha256, and the release name depends only
on the content (a wheel rebuilt from the same sources gives the same release)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from deploy.bundle import REFERENCE_FILE, build_bundle, build_wheel, content_digest
from deploy.errors import BundleError
from deploy.inventory import load_device
from tests.deploy.conftest import MODELS, Env


def model_copy(directory: Path) -> Path:
    directory.mkdir()
    manifest = json.loads((MODELS / "manifest.json").read_text())
    for name in ["manifest.json", *manifest["files"]]:
        shutil.copy2(MODELS / name, directory / name)
    return directory


def test_bundle_lists_every_file_with_its_sha256(env: Env) -> None:
    env.write_device("dev-b")
    bundle = build_bundle(load_device("dev-b", env.devices), env.work("dev-b"), env.wheel)
    listed = bundle.manifest["files"]
    on_disk = {p.relative_to(bundle.staging).as_posix() for p in bundle.staging.rglob("*")
               if p.is_file() and p.name != "bundle.json"}  # fmt: skip
    assert set(listed) == on_disk
    assert {"remote.py", "lungwatch.service", "config/runtime.yaml", "models/manifest.json",
            "models/model.int8.onnx", f"wheels/{env.wheel.name}"} <= on_disk  # fmt: skip
    for name, sha256 in listed.items():
        assert hashlib.sha256((bundle.staging / name).read_bytes()).hexdigest() == sha256
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*-[0-9a-f]{12}", bundle.release)
    assert bundle.release.endswith(bundle.manifest["content_sha256"][:12])
    digest = hashlib.sha256(bundle.archive.read_bytes()).hexdigest()
    assert Path(f"{bundle.archive}.sha256").read_text() == f"{digest}  {bundle.archive.name}\n"
    with tarfile.open(bundle.archive) as tar:
        names = tar.getnames()
    assert "bundle.json" in names
    assert all(not n.startswith(("/", "..")) for n in names)
    unit = (bundle.staging / "lungwatch.service").read_text()
    assert f"ExecStart={env.prefix('dev-b')}/current/venv/bin/lungwatch-edge run --config" in unit


def test_same_sources_give_the_same_release(env: Env, tmp_path: Path) -> None:
    rebuilt = build_wheel(tmp_path / "again")  # other zip timestamps, same members
    assert content_digest(rebuilt) == content_digest(env.wheel)
    env.write_device("dev-same")
    device = load_device("dev-same", env.devices)
    first = build_bundle(device, env.work("dev-same"), env.wheel)
    second = build_bundle(device, env.work("dev-same"), rebuilt)
    assert first.release == second.release
    env.write_device("dev-same", variant=1)  # one byte of the runtime config differs
    third = build_bundle(load_device("dev-same", env.devices), env.work("dev-same"), env.wheel)
    assert third.release != first.release


def test_a_model_whose_sha256_differs_is_refused(env: Env, tmp_path: Path) -> None:
    models = model_copy(tmp_path / "models")
    (models / "model.onnx").write_bytes((models / "model.onnx").read_bytes() + b"\0")
    env.write_device("dev-t", models=str(models))
    with pytest.raises(BundleError, match=r"model\.onnx: sha256 \w+… does not match"):
        build_bundle(load_device("dev-t", env.devices), env.work("dev-t"), env.wheel)
    assert not list(env.work("dev-t").glob("*.tar.gz"))


def test_a_missing_model_file_is_refused(env: Env, tmp_path: Path) -> None:
    models = model_copy(tmp_path / "models")
    (models / "model.int8.onnx").unlink()
    env.write_device("dev-m", models=str(models))
    with pytest.raises(BundleError, match=r"model\.int8\.onnx: file not found"):
        build_bundle(load_device("dev-m", env.devices), env.work("dev-m"), env.wheel)


def test_an_engine_from_the_workstation_is_not_shipped(env: Env, tmp_path: Path) -> None:
    models = model_copy(tmp_path / "models")
    (models / "model.plan").write_bytes(b"engine of another GPU")
    manifest = json.loads((models / "manifest.json").read_text())
    sha256 = hashlib.sha256(b"engine of another GPU").hexdigest()
    manifest["files"]["model.plan"] = {"sha256": sha256, "bytes": 21, "precision": "int8"}
    (models / "manifest.json").write_text(json.dumps(manifest))
    env.write_device("dev-e", models=str(models))
    bundle = build_bundle(load_device("dev-e", env.devices), env.work("dev-e"), env.wheel)
    assert not (bundle.staging / "models" / "model.plan").exists()
    shipped = json.loads((bundle.staging / "models" / "manifest.json").read_text())
    assert "model.plan" not in shipped["files"]
    assert "model.int8.onnx" in shipped["files"]


def test_the_verify_reference_travels_and_an_unlisted_one_is_refused(
    env: Env, tmp_path: Path
) -> None:
    env.write_device("dev-r")
    bundle = build_bundle(load_device("dev-r", env.devices), env.work("dev-r"), env.wheel)
    shipped = bundle.staging / "models" / REFERENCE_FILE
    assert shipped.read_bytes() == (MODELS / REFERENCE_FILE).read_bytes()
    assert f"models/{REFERENCE_FILE}" in bundle.manifest["files"]
    models = model_copy(tmp_path / "models")
    manifest = json.loads((models / "manifest.json").read_text())
    del manifest["files"][REFERENCE_FILE]  # the file stays: a reference nobody recorded
    (models / "manifest.json").write_text(json.dumps(manifest))
    env.write_device("dev-u", models=str(models))
    with pytest.raises(BundleError, match=r"verify_reference\.npz: not listed in manifest\.json"):
        build_bundle(load_device("dev-u", env.devices), env.work("dev-u"), env.wheel)


def test_runtime_config_without_streams_is_refused(env: Env, tmp_path: Path) -> None:
    config = tmp_path / "empty.yaml"
    config.write_text("site: ward-1\n")
    env.write_device("dev-c", runtime_config=str(config))
    with pytest.raises(BundleError, match="streams must be a list"):
        build_bundle(load_device("dev-c", env.devices), env.work("dev-c"), env.wheel)
