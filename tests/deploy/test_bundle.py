"""The bundle: every model file sha256-checked before it is packed, bundle.json lists the
sha256 of every file, the archive carries its own sha256, and the release name depends only
on the content (a wheel rebuilt from the same sources gives the same release, and its archive
is kept as it was); ``python -m deploy bundle`` prints it as one JSON line."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from deploy.bundle import REFERENCE_FILE, BundleSpec, build_bundle, build_wheel, content_digest
from deploy.cli import main
from deploy.errors import BundleError
from tests.deploy.conftest import MODELS

SPEC = BundleSpec(models=MODELS, deps="none")


def model_copy(directory: Path) -> Path:
    directory.mkdir()
    manifest = json.loads((MODELS / "manifest.json").read_text())
    for name in ["manifest.json", *manifest["files"]]:
        shutil.copy2(MODELS / name, directory / name)
    return directory


def test_bundle_lists_every_file_with_its_sha256(tmp_path: Path, wheel: Path) -> None:
    bundle = build_bundle(SPEC, tmp_path / "work", wheel)
    listed = bundle.manifest["files"]
    on_disk = {p.relative_to(bundle.staging).as_posix() for p in bundle.staging.rglob("*")
               if p.is_file() and p.name != "bundle.json"}  # fmt: skip
    assert set(listed) == on_disk
    assert {"remote.py", "models/manifest.json", "models/model.int8.onnx",
            f"wheels/{wheel.name}"} <= on_disk  # fmt: skip
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


def test_same_sources_give_the_same_release(tmp_path: Path, wheel: Path) -> None:
    rebuilt = build_wheel(tmp_path / "again")  # other zip timestamps, same members
    assert content_digest(rebuilt) == content_digest(wheel)
    first = build_bundle(SPEC, tmp_path / "work", wheel)
    second = build_bundle(SPEC, tmp_path / "work", rebuilt)
    assert (first.release, first.new) == (second.release, True)
    assert second.new is False, "the same release's archive is kept as it was"
    assert second.sha256 == first.sha256
    models = model_copy(tmp_path / "models")
    manifest = json.loads((models / "manifest.json").read_text())
    manifest["model_id"] = manifest.get("model_id", "m") + "-other"  # one byte differs
    (models / "manifest.json").write_text(json.dumps(manifest))
    third = build_bundle(BundleSpec(models=models, deps="none"), tmp_path / "work", wheel)
    assert third.release != first.release
    assert [p.name for p in (tmp_path / "work").glob("*.tar.gz")] == [third.archive.name]


def test_the_bundle_command_prints_the_release(
    tmp_path: Path, wheel: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = json.dumps({"models": str(MODELS), "deps": "none"})
    argv = ["bundle", "--spec", spec, "--work-dir", str(tmp_path / "w"), "--wheel", str(wheel)]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"release", "version", "archive", "sha256", "wheel", "new"}
    assert printed["wheel"] == wheel.name
    assert Path(printed["archive"]).is_file()
    assert main(["bundle", "--spec", '{"models": 1, "colour": "red"}', "--work-dir", "x"]) == 2
    assert "unknown key(s) ['colour']" in capsys.readouterr().err
    bad = json.dumps({"models": str(tmp_path / "nowhere"), "deps": "none"})
    assert main(["bundle", "--spec", bad, "--work-dir", str(tmp_path / "w2")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("deploy bundle: ")
    assert "nowhere" in err
    assert err.count("\n") == 1


def test_a_model_whose_sha256_differs_is_refused(tmp_path: Path, wheel: Path) -> None:
    models = model_copy(tmp_path / "models")
    (models / "model.onnx").write_bytes((models / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(BundleError, match=r"model\.onnx: sha256 \w+… does not match"):
        build_bundle(BundleSpec(models=models, deps="none"), tmp_path / "work", wheel)
    assert not list((tmp_path / "work").glob("*.tar.gz"))


def test_a_missing_model_file_is_refused(tmp_path: Path, wheel: Path) -> None:
    models = model_copy(tmp_path / "models")
    (models / "model.int8.onnx").unlink()
    with pytest.raises(BundleError, match=r"model\.int8\.onnx: file not found"):
        build_bundle(BundleSpec(models=models, deps="none"), tmp_path / "work", wheel)


def test_an_engine_from_the_workstation_is_not_shipped(tmp_path: Path, wheel: Path) -> None:
    models = model_copy(tmp_path / "models")
    (models / "model.plan").write_bytes(b"engine of another GPU")
    manifest = json.loads((models / "manifest.json").read_text())
    sha256 = hashlib.sha256(b"engine of another GPU").hexdigest()
    manifest["files"]["model.plan"] = {"sha256": sha256, "bytes": 21, "precision": "int8"}
    (models / "manifest.json").write_text(json.dumps(manifest))
    bundle = build_bundle(BundleSpec(models=models, deps="none"), tmp_path / "work", wheel)
    assert not (bundle.staging / "models" / "model.plan").exists()
    shipped = json.loads((bundle.staging / "models" / "manifest.json").read_text())
    assert "model.plan" not in shipped["files"]
    assert "model.int8.onnx" in shipped["files"]


def test_the_verify_reference_travels_and_an_unlisted_one_is_refused(
    tmp_path: Path, wheel: Path
) -> None:
    bundle = build_bundle(SPEC, tmp_path / "work", wheel)
    shipped = bundle.staging / "models" / REFERENCE_FILE
    assert shipped.read_bytes() == (MODELS / REFERENCE_FILE).read_bytes()
    assert f"models/{REFERENCE_FILE}" in bundle.manifest["files"]
    models = model_copy(tmp_path / "models")
    manifest = json.loads((models / "manifest.json").read_text())
    del manifest["files"][REFERENCE_FILE]  # the file stays: a reference nobody recorded
    (models / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"verify_reference\.npz: not listed in manifest\.json"):
        build_bundle(BundleSpec(models=models, deps="none"), tmp_path / "work2", wheel)


def test_a_bad_spec_is_refused() -> None:
    with pytest.raises(BundleError, match="deps must be bundle or none"):
        BundleSpec(models=MODELS, deps="some")
    with pytest.raises(BundleError, match="need deps: bundle"):
        BundleSpec(models=MODELS, deps="none", extras=("edge",))
    with pytest.raises(BundleError, match=r"onnx_model must be an \.onnx file name"):
        BundleSpec(models=MODELS, onnx_model="../model.onnx")


def test_the_wheel_is_built_from_every_package_the_project_declares() -> None:
    import tomllib

    from deploy.bundle import SOURCE_ITEMS, SOURCE_ROOT

    found = tomllib.loads((SOURCE_ROOT / "pyproject.toml").read_text())
    declared = found["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in declared}
    assert packages <= set(SOURCE_ITEMS), packages - set(SOURCE_ITEMS)
    assert all((SOURCE_ROOT / p / "__init__.py").is_file() for p in packages)
