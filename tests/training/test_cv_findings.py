"""The finding rules' instrument (training.cv.findings): fixed halves by patient, the choice
within the false-event budget, the paired bootstrap, the manifest it writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge.bed.chain import resolve_detector
from edge.bed.detector import DetectorConfig
from edge.bed.findings import RecurrenceRule
from edge.inference.manifest import load_manifest
from tests.edge.runtime_helpers import MODEL_DIR
from training.cv.findings import (
    Truth,
    choose,
    halves,
    paired_false,
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


def test_the_paired_bootstrap_says_the_difference_and_an_interval_around_it() -> None:
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
