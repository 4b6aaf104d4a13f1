"""Write ``manifest.json``, the record of a model folder (workstation side).

    write_manifest(out_dir / MANIFEST_NAME, {...})           # export.streaming_model builds it
    record_artifact(path, out_dir / "model.int8.onnx", precision="int8", extra={...})
    set_section(path, "tasks", {...})

The device reads the same file with :mod:`edge.manifest` (schema, validation, hashes); this
module only builds and updates it. Every write goes to a temporary file in the same folder and
is moved into place with ``os.replace``, so a reader never sees half a manifest.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from edge.manifest import MANIFEST_NAME, ManifestError, read_json, sha256_file

__all__ = [
    "MANIFEST_NAME",
    "ManifestError",
    "model_id",
    "publish",
    "record_artifact",
    "set_section",
    "sha256_file",
    "tool_versions",
    "write_manifest",
]

MODEL_ID_HASH_CHARS = 12
PUBLISHED_MODE = 0o644  # temporary files are 0600; artifacts are readable by the service user
# import name -> distribution name, for the versions recorded in "tools"
TOOL_PACKAGES: dict[str, str] = {
    "numpy": "numpy",
    "scipy": "scipy",
    "numba": "numba",
    "soundfile": "soundfile",
    "torch": "torch",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "tensorrt": "tensorrt",
}


def utc_now() -> str:
    """ISO-8601 UTC time to the second, e.g. ``2025-01-31T12:00:00Z``."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def model_id(run_name: str, checkpoint_sha256: str) -> str:
    """``<run name>-<first 12 hex of the checkpoint sha256>``."""
    return f"{run_name}-{checkpoint_sha256[:MODEL_ID_HASH_CHARS]}"


def tool_versions() -> dict[str, str]:
    """Versions of Python and of the packages in :data:`TOOL_PACKAGES` importable here."""
    versions = {"python": platform.python_version()}
    for module, dist in TOOL_PACKAGES.items():
        if importlib.util.find_spec(module) is None:
            continue
        try:
            versions[module] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def read_manifest(path: Path) -> dict[str, Any]:
    """The raw manifest mapping (for updating); errors name the file."""
    return read_json(Path(path))


def write_manifest(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON atomically (temporary file in the same folder + ``os.replace``)."""
    path = Path(path)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        publish(Path(temp_name), path)
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)


def publish(temp: Path, dest: Path) -> None:
    """Move a finished temporary file into place atomically, readable by all (0644)."""
    os.chmod(temp, PUBLISHED_MODE)
    os.replace(temp, dest)


def file_entry(artifact: Path, precision: str, extra: dict[str, Any] | None) -> dict[str, Any]:
    """``{"sha256", "bytes", "precision", "recorded_utc", **extra}`` of one artifact."""
    if not artifact.is_file():
        raise ManifestError(f"{artifact}: artifact not found, cannot record it")
    entry: dict[str, Any] = {
        "sha256": sha256_file(artifact),
        "bytes": artifact.stat().st_size,
        "precision": precision,
        "recorded_utc": utc_now(),
    }
    entry.update(extra or {})
    return entry


def record_artifact(
    manifest_path: Path, artifact: Path, *, precision: str, extra: dict[str, Any] | None = None
) -> None:
    """Add or replace ``files[artifact.name]`` (sha256, bytes, precision, ``extra``).

    Raises:
        ManifestError: the manifest is missing or unreadable, or ``artifact`` is not beside it.
    """
    manifest_path, artifact = Path(manifest_path), Path(artifact)
    if artifact.resolve().parent != manifest_path.resolve().parent:
        raise ManifestError(
            f"{artifact}: not in the manifest's folder {manifest_path.parent} "
            "(one manifest covers one model folder)"
        )
    data = read_manifest(manifest_path)
    data.setdefault("files", {})[artifact.name] = file_entry(artifact, precision, extra)
    write_manifest(manifest_path, data)


def set_section(manifest_path: Path, key: str, value: Any) -> None:
    """Set a top-level section (``calibration``, ``tools``, ...) of an existing manifest."""
    data = read_manifest(Path(manifest_path))
    data[key] = value
    write_manifest(Path(manifest_path), data)
