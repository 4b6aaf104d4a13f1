"""Benchmarks: each writes its table and its record to ``bench/results/`` (or a folder)."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
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


def median_seconds(
    run: Callable[[], object],
    repeats: int,
    warmups: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    for _ in range(warmups):
        run()
    times = []
    for _ in range(repeats):
        t0 = clock()
        run()
        times.append(clock() - t0)
    return statistics.median(times)


def target_records(rows: list[tuple[str, float, float, bool]]) -> list[dict[str, Any]]:
    return [dict(zip(("target", "measured", "wanted", "met"), row, strict=True)) for row in rows]
