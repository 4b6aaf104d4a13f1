"""Benchmarks: each writes its table and its record to ``bench/results/`` (or a folder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_results(
    name: str, record: dict[str, Any], table: str, folder: Path = RESULTS_DIR
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.md").write_text(table + "\n")
    (folder / f"{name}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(table)
