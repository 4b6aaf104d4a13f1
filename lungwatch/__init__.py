"""lungwatch: a streaming detector of respiratory anomalies that runs at the bedside.

The public Python API is the device's streaming detector (:mod:`edge.monitor`)::

    from lungwatch import Monitor

    monitor = Monitor.load("models/sed")        # the INT8 model and its manifest's rules
    bed = monitor.open_bed("bed-1")
    for chunk in chunks:                        # float32 mono at monitor.sample_rate_hz
        for event in bed.push(chunk).events:
            print(event.state, event.type, event.start_s)
    bed.close()                                 # the last frames; every open event ends

The console scripts ``lungwatch`` and ``lungwatch-edge`` are :mod:`lungwatch.cli`. Importing
this package loads nothing else until a name is used.
"""

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
