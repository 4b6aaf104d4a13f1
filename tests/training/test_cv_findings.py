"""The finding rules' instrument (training.cv.findings): fixed halves by patient, the phase
form, the choice within the false-event budget, the paired bootstraps, the manifest it
writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge.bed.chain import resolve_detector
from edge.bed.detector import DetectorConfig
from edge.bed.findings import RecurrenceRule
from edge.inference.manifest import load_manifest
from tests.edge.runtime_helpers import MODEL_DIR
from training.cv.findings import (
    Truth,
    breath_phases,
    choose,
    halves,
    paired_f1,
    paired_false,
    phase_members,
    record_counts,
    write_manifest,
)


def test_halves_split_patients_not_records_and_balance_those_with_a_finding() -> None:
    records = [f"p{i:02d}_5.0_0_p1_{j}" for i in range(40) for j in range(3)]
    sick = {f"p{i:02d}" for i in range(0, 40, 4)}  # 10 patients with a finding
    half = halves(records, sick)
    by_patient: dict[str, set[int]] = {}
    for record, h in half.items():
        by_patient.setdefault(record.split("_")[0], set()).add(h)
    assert all(len(h) == 1 for h in by_patient.values())  # a patient lies in one half
    assert sum(next(iter(by_patient[p])) for p in sick) == 5  # 5 of the 10 in each half
    assert halves(list(reversed(records)), sick) == half  # fixed: the hash, not the order


def test_breath_phases_follow_the_devices_hysteresis_and_minimum_length() -> None:
    breath = np.array([0, 0.7, 0.7, 0.55, 0.7, 0.7, 0.7, 0.2, 0.9, 0.9, 0.1, 0.65] + [0.7] * 6)
    phases = breath_phases(breath, 0.04, 0.0, on=0.6, off=0.5, min_frames=3)
    # frames 1-6 (0.55 stays above the off-threshold), 8-9 too short, 11 to the end
    assert np.allclose(phases, [(0.04, 0.28), (0.44, 0.72)])


def test_the_phase_form_opens_at_k_events_in_different_phases_among_the_last_n() -> None:
    phases = [(float(i), i + 0.8) for i in range(20)]
    spans = [(0.2, 0.4), (0.5, 0.6), (5.2, 5.5), (6.3, 6.6), (7.1, 7.4), (15.1, 15.4)]
    # two events in phase 0 count once; phases 5 and 6 recur (2 of the last 2), 7 continues,
    # 15 is too far from 7 and alone
    assert phase_members(spans, phases, k=2, n=2) == [[2, 3, 4]]
    assert phase_members(spans, phases, k=2, n=10) == [[0, 1, 2, 3, 4, 5]]
    assert phase_members(spans, phases, k=3, n=3) == [[2, 3, 4]]


def row(family: str, threshold: float, fit_fa: float, oof_fa: float, oof_f1: float) -> dict:
    return {"family": family, "threshold": threshold, "events": 2, "within_s": 8.0,
            "fit": {"f1": 0.5, "fa_clean_per_hour": fit_fa},
            "oof": {"f1": oof_f1, "fa_clean_per_hour": oof_fa}}  # fmt: skip


def test_the_choice_is_the_best_out_of_fold_f1_within_the_budget_on_both_views() -> None:
    rows = [
        row("CAS", 0.6, 9.0, 1.0, 0.40),  # over the budget on the new recordings
        row("CAS", 0.7, 0.0, 5.0, 0.35),  # over it out of fold
        row("CAS", 0.8, 3.9, 1.0, 0.30),
        row("CAS", 0.9, 0.0, 0.0, 0.20),
        row("DAS", 0.7, 0.0, 0.0, 0.10),
    ]
    assert choose(rows, "CAS", 4.0)["threshold"] == 0.8
    with pytest.raises(ValueError, match="no CAS rule"):
        choose(rows, "CAS", -1.0)


def test_the_paired_bootstraps_say_the_difference_and_an_interval_around_it() -> None:
    truth = Truth(
        labels={f"p{i}_1_0_p1_{j}": "Normal" for i in range(20) for j in range(2)},
        refs={f"p{i}_1_0_p1_{j}": [] for i in range(20) for j in range(2)},
        durations={f"p{i}_1_0_p1_{j}": 1800.0 for i in range(20) for j in range(2)},
    )
    records = sorted(truth.labels)
    before = {r: [{"type": "Wheeze"}] for r in records}  # one false event per half hour
    after = {r: [] for r in records}
    d, lo, hi = paired_false(before, after, truth, records)
    assert (d, lo, hi) == (-2.0, -2.0, -2.0)  # every patient alike: no spread
    counts = np.array([[1, 1, 1]] * 20, float)
    better = np.array([[2, 0, 0]] * 20, float)
    d, lo, hi = paired_f1(counts, better, [f"p{i}" for i in range(20)])
    assert d == pytest.approx(1.0 - 0.5)
    assert lo <= d <= hi


def test_record_counts_are_the_yardsticks_matches_per_record() -> None:
    truth = Truth(labels={"a": "CAS", "b": "Normal"},
                  refs={"a": [(1.0, 2.0, "Wheeze")], "b": []},
                  durations={"a": 10.0, "b": 10.0})  # fmt: skip
    said = {"a": [{"start_s": 1.1, "end_s": 2.0, "type": "Wheeze"},
                  {"start_s": 5.0, "end_s": 6.0, "type": "Fine Crackle"}],
            "b": [{"start_s": 3.0, "end_s": 3.5, "type": "Rhonchi"}]}  # fmt: skip
    assert record_counts(said, truth, ["a", "b"], "CAS").tolist() == [[1, 0, 0], [0, 1, 0]]
    assert record_counts(said, truth, ["a", "b"], "DAS").tolist() == [[0, 1, 0], [0, 0, 0]]


def test_the_rules_written_into_a_manifest_reach_the_device(tmp_path: Path) -> None:
    folder = tmp_path / "sed"
    shutil.copytree(MODEL_DIR, folder)
    chosen = {"CAS": {"threshold": 0.7, "events": 3, "within_s": 5.0},
              "DAS": {"threshold": 0.8, "events": 2, "within_s": 4.0}}  # fmt: skip
    write_manifest(folder, chosen, "a test")
    body = json.loads((folder / "manifest.json").read_text())
    on = {r["type"]: r["on_threshold"] for r in body["detector"]["thresholds"]}
    stridor = json.loads((MODEL_DIR / "manifest.json").read_text())["detector"]["thresholds"]
    assert on["Wheeze"] == on["Rhonchi"] == 0.7
    assert on["Fine Crackle"] == on["Coarse Crackle"] == 0.8
    assert on["Stridor"] == next(r["on_threshold"] for r in stridor if r["type"] == "Stridor")
    findings = resolve_detector(DetectorConfig(), load_manifest(folder / "manifest.json")).findings
    assert findings.on
    assert findings.cas == RecurrenceRule(events=3, within_s=5.0)
    assert findings.das == RecurrenceRule(events=2, within_s=4.0)
