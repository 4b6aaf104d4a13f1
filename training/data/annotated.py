"""What the annotated data sets share: a folder of annotation files, each with its audio twin."""

from __future__ import annotations

from pathlib import Path

from edge.audio import AUDIO_SUFFIXES, audio_file
from lungwatch.errors import AnnotationError


def annotation_files(folder: Path, suffix: str, what: str) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: {what} folder not found")
    paths = sorted(folder.glob(f"*{suffix}"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no {suffix} annotation files")
    return paths


def audio_twin(annotation_path: Path) -> Path:
    """The audio file beside an annotation (``.flac`` preferred over ``.wav``)."""
    found = audio_file(annotation_path.parent, annotation_path.stem)
    if found is not None:
        return found
    raise AnnotationError(
        f"{annotation_path}: no audio file beside it (looked for {', '.join(AUDIO_SUFFIXES)})"
    )
