"""Writing ``manifest.json``: every change goes to a temporary file in the same folder and is
moved into place with ``os.replace``, so a reader never sees half a manifest. Standard library
only: the device writes with it too (``lungwatch engine``)."""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from edge.inference.manifest import ManifestError, read_json, sha256_file

PUBLISHED_MODE = 0o644  # temporary files are 0600; artifacts are readable by the service user


def utc_now() -> str:
    """ISO-8601 UTC time to the second, e.g. ``2025-01-31T12:00:00Z``."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_manifest(path: Path, data: dict[str, Any]) -> None:
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
    os.chmod(temp, PUBLISHED_MODE)
    os.replace(temp, dest)


def file_entry(artifact: Path, precision: str, extra: dict[str, Any] | None) -> dict[str, Any]:
    if not artifact.is_file():
        raise ManifestError(f"{artifact}: artifact not found, cannot record it")
    return {
        "sha256": sha256_file(artifact),
        "bytes": artifact.stat().st_size,
        "precision": precision,
        "recorded_utc": utc_now(),
        **(extra or {}),
    }


def record_artifact(
    manifest_path: Path, artifact: Path, *, precision: str, extra: dict[str, Any] | None = None
) -> None:
    """Add or replace ``files[artifact.name]``; ManifestError if the manifest is missing or
    unreadable, or ``artifact`` is not beside it."""
    manifest_path, artifact = Path(manifest_path), Path(artifact)
    if artifact.resolve().parent != manifest_path.resolve().parent:
        raise ManifestError(
            f"{artifact}: not in the manifest's folder {manifest_path.parent} "
            "(one manifest covers one model folder)"
        )
    data = read_json(manifest_path)
    data.setdefault("files", {})[artifact.name] = file_entry(artifact, precision, extra)
    write_manifest(manifest_path, data)


def set_section(manifest_path: Path, key: str, value: Any) -> None:
    """Set a top-level section (``calibration``, ``tools``, ...) of an existing manifest."""
    data = read_json(Path(manifest_path))
    data[key] = value
    write_manifest(Path(manifest_path), data)
