"""Model-card tables from reports: the numbers in the table are the report's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.report import markdown, summarise


def _report(score: float) -> dict[str, object]:
    scores = {"se": score, "sp": 1 - score, "as": 0.5, "hs": score, "score": score}
    return {
        "sprsound_intra_test": {t: {"scores": scores} for t in ("1-1", "1-2", "2-1", "2-2")},
        "icbhi_cross_dataset": {"scores": {"se": 0.1, "sp": 0.9, "score": 0.5}},
        "detection_intra_test": {
            "summary": {
                "event_precision_family": 0.25,
                "event_recall_family": 0.5,
                "event_f1_family": 1 / 3,
                "segment_f1_family": 0.5,
                "false_events_per_hour": 12.0,
            }
        },
    }


def test_markdown_lists_every_task() -> None:
    table = markdown(_report(0.7))
    assert "| SPRSound intra_test Task 2-2 | 0.700 | 0.300 | 0.500 | 0.700 | 0.700 |" in table
    assert "| ICBHI train, cross-dataset (Se/Sp) | 0.100 | 0.900 | | | 0.500 |" in table
    assert "F1 0.333" in table
    assert "12.0 false events per hour" in table


def test_summarise_gives_mean_and_sample_std(tmp_path: Path) -> None:
    paths = []
    for i, score in enumerate((0.6, 0.7, 0.8)):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(_report(score)))
    table = summarise(paths)
    assert (
        "| SPRSound intra_test Task 1-2 | 0.700 ± 0.100 | 0.300 ± 0.100 | 0.700 ± 0.100 |" in table
    )
    assert table.startswith("3 runs")


def test_summarise_of_a_missing_file_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        summarise([tmp_path / "absent.json"])
