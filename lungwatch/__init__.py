"""lungwatch: a streaming detector of respiratory anomalies at the bedside. The public API is
``from lungwatch import Monitor`` (:mod:`edge.monitor`; README.md shows it at work); the
console scripts are :mod:`lungwatch.cli`. Importing this loads nothing until a name is used."""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("lungwatch")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

_PUBLIC = {name: "edge.monitor" for name in ("Monitor", "Bed", "BedStep", "BedEvent", "BedQuality")}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'lungwatch' has no attribute {name!r}")
