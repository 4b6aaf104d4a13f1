"""The deploy bundle: the software and models a device runs, as one tar.gz with its sha256.

Built once per rollout on the workstation and unpacked on every device; each device's runtime
config comes from the inventory, so one bundle serves a whole ward (docs/deploy.md, "A
rollout"). Layout: ``bundle.json`` (format, release, version, created_utc, content_sha256,
files {path: sha256} of every other file), ``remote.py`` (deploy/remote.py), ``models/``
(manifest.json and every artifact it lists, each sha256-checked), ``wheels/`` (the lungwatch
wheel, + its dependencies with deps: bundle).

The content hash covers every file but bundle.json, a wheel by its members (not its zip
timestamps), so the same sources give the same release: a rollout that changes nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from deploy.errors import BundleError
from edge.inference.manifest import MANIFEST_NAME, load_manifest, sha256_file, verify_file
from lungwatch.errors import LungwatchError

BUNDLE_FORMAT = 1
BUNDLE_MANIFEST = "bundle.json"
REMOTE = Path(__file__).resolve().parent / "remote.py"
SOURCE_ROOT = Path(__file__).resolve().parents[1]
# What `pip wheel` needs from a checkout (pyproject's packages + its readme); lungwatch, the
# console scripts' package, is absent in older checkouts: skipped.
PACKAGES = "lungwatch edge wardview demo firmware_bridge export training deploy bench gateway"
SOURCE_ITEMS = ("pyproject.toml", "README.md", *PACKAGES.split())
SOURCE_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc", "*.egg-info")
ENGINE_SUFFIX = ".plan"  # engines are built on the device, never shipped
REFERENCE_FILE = "verify_reference.npz"  # export.verify.REFERENCE_NAME
WHEEL_TIMEOUT_S = 600
PIP_QUIET = ("--disable-pip-version-check", "-q")


@dataclass(frozen=True)
class Bundle:
    release: str
    version: str  # git describe, else the package version
    wheel: str  # the lungwatch wheel's file name under wheels/
    staging: Path  # the bundle's files, unpacked
    archive: Path  # lungwatch-RELEASE.tar.gz
    sha256: str  # of the archive (also in ARCHIVE.sha256)
    manifest: dict[str, Any]
    new: bool = True  # False: this release's archive was there already (kept as it was)


@dataclass(frozen=True)
class BundleSpec:
    """What goes into a bundle (the inventory's ``lungwatch_bundle`` mapping)."""

    models: Path  # model folder: manifest.json and the artifacts it lists
    onnx_model: str = "model.int8.onnx"  # the Q/DQ model engines are built from
    deps: str = "bundle"  # bundle: dependency wheels shipped | none: the lungwatch wheel alone
    extras: tuple[str, ...] = ()  # lungwatch extras to bundle (deps: bundle)
    requirements: tuple[str, ...] = ()  # further requirements to bundle (deps: bundle)
    platforms: tuple[str, ...] = ()  # pip download --platform tags (empty: this machine's)
    python_version: str | None = None  # pip download --python-version (None: this one's)
    index_urls: tuple[str, ...] = ()  # extra package indexes for pip download

    def __post_init__(self) -> None:
        if self.deps not in ("bundle", "none"):
            raise BundleError(f"deps must be bundle or none, got {self.deps!r}")
        if self.deps == "none" and (self.extras or self.requirements):
            raise BundleError("extras and requirements need deps: bundle (none installs no deps)")
        if "/" in self.onnx_model or not self.onnx_model.endswith(".onnx"):
            raise BundleError(f"onnx_model must be an .onnx file name, got {self.onnx_model!r}")


def copy_models(models: Path, dest: Path) -> list[str]:
    """Refuses any sha256 mismatch and a verify reference the manifest does not list."""
    try:
        manifest = load_manifest(models / MANIFEST_NAME)
        if (models / REFERENCE_FILE).is_file() and REFERENCE_FILE not in manifest.files:
            raise BundleError(
                f"{REFERENCE_FILE}: not listed in {MANIFEST_NAME} (write it again with "
                f"`lungwatch verify --model-dir {models} --write-reference`)"
            )
        names = [n for n in sorted(manifest.files) if not n.endswith(ENGINE_SUFFIX)]
        for name in names:
            verify_file(manifest, models / name)
    except LungwatchError as exc:
        raise BundleError(f"{models}: {exc}; bundle refused") from None
    dest.mkdir(parents=True)
    for name in names:
        shutil.copy2(models / name, dest / name)
    raw = json.loads((models / MANIFEST_NAME).read_text(encoding="utf-8"))
    if len(names) == len(manifest.files):
        shutil.copy2(models / MANIFEST_NAME, dest / MANIFEST_NAME)
    else:  # drop engine entries: an engine belongs to one GPU and is rebuilt on the device
        raw["files"] = {k: v for k, v in raw["files"].items() if k in names}
        (dest / MANIFEST_NAME).write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    return names


def build_wheel(out_dir: Path, source_root: Path = SOURCE_ROOT) -> Path:
    """``pip wheel --no-deps`` of a clean copy of the checkout (the tree is never written)."""
    if not (source_root / "pyproject.toml").is_file():
        raise BundleError(
            f"{source_root}: no pyproject.toml; give --wheel or deploy from a checkout"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lungwatch-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for item in SOURCE_ITEMS:
            path = source_root / item
            if path.is_dir():
                shutil.copytree(path, src / item, ignore=SOURCE_IGNORE)
            elif path.is_file():
                shutil.copy2(path, src / item)
        # offline and fast with the local setuptools
        offline = ["--no-build-isolation"] if can_build_offline() else []
        _pip("wheel", "--no-deps", *offline, *PIP_QUIET, "-w", str(out_dir), str(src))
    wheels = sorted(out_dir.glob("lungwatch-*.whl"))
    if len(wheels) != 1:
        raise BundleError(f"pip wheel left {len(wheels)} lungwatch wheels in {out_dir}")
    return wheels[0]


def can_build_offline() -> bool:
    """This environment's setuptools builds the wheel itself: >= 68 (pyproject's floor) with
    its own bdist_wheel (>= 70.1) or the ``wheel`` package; else pip fetches them (isolation)."""
    try:
        parts = metadata.version("setuptools").split(".")[:2]
        version = (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0)
    except (metadata.PackageNotFoundError, ValueError):
        return False
    return version >= (68, 0) and (version >= (70, 1) or find_spec("wheel") is not None)


def download_deps(install: BundleSpec, wheel: Path, out_dir: Path) -> None:
    extras = f"[{','.join(install.extras)}]" if install.extras else ""
    cmd = ["download", *PIP_QUIET, "--only-binary=:all:", "--dest", str(out_dir)]
    for platform in install.platforms:
        cmd += ["--platform", platform]
    if install.python_version:
        cmd += ["--python-version", install.python_version, "--implementation", "cp"]
    for url in install.index_urls:
        cmd += ["--extra-index-url", url]
    _pip(*cmd, f"lungwatch{extras} @ {wheel.as_uri()}", *install.requirements)


def _pip(*args: str) -> None:
    cmd, what = [sys.executable, "-m", "pip", *args], f"pip {args[0]}"
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=WHEEL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BundleError(f"{what} failed: {exc}") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise BundleError(f"{what} exited {done.returncode}: {lines[-1] if lines else ''}")


def content_digest(path: Path) -> str:
    if path.suffix != ".whl":
        return sha256_file(path)
    digest = hashlib.sha256()
    with zipfile.ZipFile(path) as wheel:
        for name in sorted(wheel.namelist()):
            digest.update(name.encode() + b"\0" + hashlib.sha256(wheel.read(name)).digest())
    return digest.hexdigest()


def git_version(source_root: Path = SOURCE_ROOT) -> str | None:
    cmd = ["git", "-C", str(source_root), "describe", "--tags", "--always", "--dirty"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def write_manifest(staging: Path, wheel: Path) -> dict[str, Any]:
    files: dict[str, str] = {}
    content = hashlib.sha256()
    for path in sorted(staging.rglob("*")):
        if path.is_file() and path.name != BUNDLE_MANIFEST:
            name = path.relative_to(staging).as_posix()
            files[name] = sha256_file(path)
            content.update(f"{name}\0{content_digest(path)}\n".encode())
    package_version = wheel.name.split("-")[1]
    git = git_version()
    manifest = {
        "format": BUNDLE_FORMAT,
        "release": f"{package_version}-{content.hexdigest()[:12]}",
        "version": f"{package_version}+git.{git}" if git else package_version,
        "package_version": package_version,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "content_sha256": content.hexdigest(),
        "wheel": wheel.name,
        "files": files,
    }
    (staging / BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def write_archive(staging: Path, archive: Path) -> str:
    def neutral(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(staging.rglob("*")):
            name = path.relative_to(staging).as_posix()
            tar.add(path, arcname=name, recursive=False, filter=neutral)
    digest = sha256_file(archive)
    Path(f"{archive}.sha256").write_text(f"{digest}  {archive.name}\n")
    return digest


def build_bundle(spec: BundleSpec, work_dir: Path, wheel: Path | None = None) -> Bundle:
    staging = work_dir / "bundle"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    copy_models(spec.models, staging / "models")
    if spec.onnx_model not in {p.name for p in (staging / "models").iterdir()}:
        raise BundleError(f"onnx_model {spec.onnx_model} is not in {spec.models}")
    shutil.copy2(REMOTE, staging / "remote.py")
    wheels = staging / "wheels"
    if wheel is None:
        built = build_wheel(wheels)
    else:
        if not Path(wheel).is_file():
            raise BundleError(f"--wheel {wheel}: no such file")
        wheels.mkdir()
        built = Path(shutil.copy2(wheel, wheels / Path(wheel).name))
    if spec.deps == "bundle":
        download_deps(spec, built, wheels)
    manifest = write_manifest(staging, built)
    archive = work_dir / f"lungwatch-{manifest['release']}.tar.gz"
    for old in work_dir.glob("lungwatch-*.tar.gz*"):
        if old.name not in (archive.name, f"{archive.name}.sha256"):
            old.unlink()
    kept = existing_archive(archive)  # the same release built before: kept as it was
    digest = write_archive(staging, archive) if kept is None else kept
    return Bundle(
        manifest["release"], manifest["version"], built.name, staging, archive, digest, manifest,
        kept is None,
    )  # fmt: skip


def existing_archive(archive: Path) -> str | None:
    """The sha256 of ``archive`` when it exists whole (its .sha256 says so), else None."""
    check = Path(f"{archive}.sha256")
    if not (archive.is_file() and check.is_file()):
        return None
    expected = check.read_text().split()[0] if check.read_text().split() else ""
    return expected if sha256_file(archive) == expected else None
