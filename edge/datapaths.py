"""Where the reference data sets live: ``../shared/data`` beside the project root, or the
folder ``$LUNGWATCH_DATA_DIR`` names (never copied into the repository)."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "LUNGWATCH_DATA_DIR"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data"


def data_root() -> Path:
    """The data folder (it may not exist; callers check and say so)."""
    override = os.environ.get(DATA_DIR_ENV)
    return Path(override).expanduser() if override else DEFAULT_DATA_DIR


def sprsound_root() -> Path:
    """The SPRSound folder (``train/``, ``intra_test/``, ``wav_quirks/``)."""
    return data_root() / "sprsound"


def icbhi_root() -> Path:
    """The ICBHI folder (``train/``, ``annotations/``)."""
    return data_root() / "icbhi"
