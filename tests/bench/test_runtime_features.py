"""The runtime benchmark's comparisons: the feature costs (each run turns off exactly the
feature it names, on a runtime that really runs: a few file beds, no broker) and what a
comparison with another revision runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.runtime import FEATURES, _comparison_spec, _feature_table, _parse, build, runtime_config
from edge.bed.chain import BedChain


def test_each_named_feature_is_turned_off_and_the_others_stay_on(tmp_path: Path) -> None:
    on = runtime_config(2, False, None, tmp_path / "spool.sqlite")
    assert on.respiration.enabled
    assert on.evidence.enabled
    assert on.verdict.enabled
    assert on.live_interval_s > 0
    for name in FEATURES:
        off = runtime_config(2, False, None, tmp_path / "spool.sqlite", off=(name,))
        turned = {
            "respiration": not off.respiration.enabled,
            "evidence": not off.evidence.enabled,
            "verdict": not off.verdict.enabled,
            "live": off.live_interval_s == 0.0,
        }
        assert [k for k, v in turned.items() if v] == [name]


def test_an_unknown_feature_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown feature 'breathing'"):
        runtime_config(2, False, None, tmp_path / "spool.sqlite", off=("breathing",))


def test_a_runtime_built_without_a_feature_runs_its_beds_without_it(tmp_path: Path) -> None:
    def bed(off: tuple[str, ...]) -> BedChain:
        config = runtime_config(2, False, None, tmp_path / "spool.sqlite", off=off)
        runtime, _, _ = build(config, paced=False)
        for _ in range(20):
            runtime.step()
        assert runtime.streams[0].counters["windows"] > 0
        return runtime.streams[0].chain

    on = bed(())
    assert on.breathing is not None
    assert on.verdict is not None
    assert bed(("respiration",)).breathing is None
    assert bed(("verdict",)).verdict is None


def test_the_table_gives_each_feature_its_share_of_the_time() -> None:
    record = {
        "header": {"date": "d", "command": "c", "machine": "m", "threads": {}, "model": "x",
                   "broker": "b"},
        "load": "folder", "streams": 10, "seconds": 1.0,
        "streams_real_time": {"all on": [80.0], "respiration off": [100.0]},
        "medians": {"all on": 80.0, "respiration off": 100.0},
        "share_of_time": {"respiration": 0.2},
    }  # fmt: skip
    table = _feature_table(record)
    assert "| all on | 80 | 80 | - |" in table
    assert "| respiration off | 100 | 100 | 20.0% |" in table


def test_a_paced_comparison_runs_paced_for_the_paced_seconds_and_feature_costs_do_not() -> None:
    args = _parse(["--baseline", "HEAD", "--baseline-paced", "--seconds", "7",
                   "--paced-seconds", "11", "--baseline-streams", "650"])  # fmt: skip
    paced = _comparison_spec(args, None, paced=args.baseline_paced)
    assert (paced["paced"], paced["seconds"], paced["streams"]) == (True, 11.0, 650)
    fast = _comparison_spec(args, None)  # what --feature-costs runs
    assert (fast["paced"], fast["seconds"]) == (False, 7.0)
