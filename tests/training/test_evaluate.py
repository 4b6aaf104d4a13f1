"""``lungwatch evaluate`` (training.scoring.evaluate): formats, errors, hand-computed scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.datapaths import icbhi_root, sprsound_root
from training.data.icbhi import read_cycles
from training.data.sprsound import read_annotation
from training.scoring.evaluate import EvaluationError, evaluate, main

# Four SPRSound-style records (names follow the data set's pattern); events in FILE order,
# and record A lists its events out of time order on purpose.
A, B, C, D = "100_5.0_0_p1_11", "101_6.0_1_p2_12", "102_7.0_0_p3_13", "103_8.0_1_p4_14"
SPR_RECORDS: dict[str, tuple[str, list[tuple[int, int, str]]]] = {
    A: ("CAS", [(3000, 4000, "Wheeze"), (500, 1500, "Normal")]),
    B: ("Normal", [(100, 900, "Normal"), (1000, 1800, "Normal")]),
    C: ("DAS", [(200, 700, "Fine Crackle"), (800, 1600, "Normal"), (1700, 2500, "Coarse Crackle")]),
    D: ("Poor Quality", []),
}
TASK_1_1 = {
    A: ["Adventitious", "Normal"],
    B: ["Normal", "Normal"],
    C: ["Adventitious", "Normal", "Adventitious"],
    D: [],
}
TASK_1_2 = {
    A: ["Wheeze", "Normal"],
    B: ["Normal", "Normal"],
    C: ["Fine Crackle", "Normal", "Coarse Crackle"],
    D: [],
}
TASK_2_1 = {A: "Adventitious", B: "Normal", C: "Adventitious", D: "Poor Quality"}
TASK_2_2 = {A: "CAS", B: "Normal", C: "DAS", D: "Poor Quality"}
PERFECT = {"1-1": TASK_1_1, "1-2": TASK_1_2, "2-1": TASK_2_1, "2-2": TASK_2_2}

P1, P2 = "101_1b1_Al_sc_Meditron", "102_1b1_Ar_sc_Meditron"
ICBHI_CYCLES: dict[str, list[str]] = {  # "start end crackles wheezes" lines
    P1: ["0.1 1.5 0 0", "1.5 3.0 1 0", "3.0 4.2 0 1"],
    P2: ["0.0 2.0 0 0", "2.0 4.0 1 1", "4.0 6.0 0 0", "6.0 8.0 1 0"],
}
ICBHI_TRUTH = {P1: ["normal", "crackle", "wheeze"], P2: ["normal", "both", "normal", "crackle"]}
SCORE_KEYS = ("se", "sp", "as", "hs", "score")
Capsys = pytest.CaptureFixture[str]


@pytest.fixture
def spr_dir(tmp_path: Path) -> Path:
    """SPRSound-style annotation JSONs only (no audio)."""
    folder = tmp_path / "spr"
    folder.mkdir()
    for record, (label, events) in SPR_RECORDS.items():
        spans = [{"start": str(s), "end": str(e), "type": t} for s, e, t in events]
        annotation = {"record_annotation": label, "event_annotation": spans}
        (folder / f"{record}.json").write_text(json.dumps(annotation))
    return folder


@pytest.fixture
def icbhi_dir(tmp_path: Path) -> Path:
    """ICBHI-style cycle files, plus a split file that is not a recording."""
    folder = tmp_path / "icbhi"
    folder.mkdir()
    for recording, lines in ICBHI_CYCLES.items():
        (folder / f"{recording}.txt").write_text("\n".join(lines) + "\n")
    (folder / "ICBHI_challenge_train_test.txt").write_text(f"{P1}\ttrain\n{P2}\ttest\n")
    return folder


def _run(task: str, preds: object, annotations: Path, tmp_path: Path) -> dict:
    """Run the CLI on ``preds`` (written as JSON); return the --json output."""
    preds_path, out_path = tmp_path / "preds.json", tmp_path / "out.json"
    preds_path.write_text(json.dumps(preds))
    argv = ["--task", task, "--preds", str(preds_path), "--annotations", str(annotations)]
    assert main([*argv, "--json", str(out_path)]) == 0
    return json.loads(out_path.read_text())


def _scores(result: dict) -> tuple[float, ...]:
    return tuple(result["scores"][key] for key in SCORE_KEYS)


def _error(task: str, preds_text: str, annotations: Path, tmp_path: Path, capsys: Capsys) -> str:
    """Run the CLI on raw predictions text that must fail; return its one-line error."""
    preds_path = tmp_path / "bad.json"
    preds_path.write_text(preds_text)
    argv = ["--task", task, "--preds", str(preds_path), "--annotations", str(annotations)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("lungwatch evaluate: error: ")
    assert captured.err.count("\n") == 1
    return captured.err


# --- scores -------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["1-1", "1-2", "2-1", "2-2"])
def test_perfect_sprsound_predictions_score_one(task: str, spr_dir: Path, tmp_path: Path) -> None:
    result = _run(task, PERFECT[task], spr_dir, tmp_path)
    assert _scores(result) == (1.0, 1.0, 1.0, 1.0, 1.0)
    assert result["n_records"] == len(SPR_RECORDS)


def test_task_1_2_known_mix(spr_dir: Path, tmp_path: Path, capsys: Capsys) -> None:
    preds = {
        A: ["Rhonchi", "Normal"],  # Wheeze -> Rhonchi: a miss (exact class)
        B: ["Normal", "Wheeze"],  # one normal missed
        C: ["Fine Crackle", "Normal", "Fine Crackle"],  # Coarse -> Fine: a miss
    }  # D has no events and may be left out
    result = _run("1-2", preds, spr_dir, tmp_path)
    se, sp = 1 / 3, 3 / 4
    as_, hs = (se + sp) / 2, 2 * se * sp / (se + sp)
    assert _scores(result) == pytest.approx((se, sp, as_, hs, 313 / 624))
    assert result["per_class"]["Wheeze"] == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 1, "fn": 1
    }  # fmt: skip
    printed = capsys.readouterr().out
    assert "Task 1-2: 4 records, 7 events (4 normal, 3 non-normal)" in printed
    assert "0.5016" in printed  # the Score column


def test_task_1_1_known_mix(spr_dir: Path, tmp_path: Path) -> None:
    preds = {A: ["Adventitious", "Normal"], B: ["Normal", "Adventitious"], C: TASK_1_1[C]}
    result = _run("1-1", preds, spr_dir, tmp_path)
    assert _scores(result) == pytest.approx((1.0, 0.75, 0.875, 6 / 7, (0.875 + 6 / 7) / 2))


def test_task_2_2_known_mix_scores_poor_quality_in_se(spr_dir: Path, tmp_path: Path) -> None:
    preds = {A: "CAS & DAS", B: "Normal", C: "DAS", D: "Normal"}
    assert _scores(_run("2-2", preds, spr_dir, tmp_path)) == pytest.approx(
        (1 / 3, 1.0, 2 / 3, 0.5, 7 / 12)
    )
    preds[D] = "Poor Quality"
    assert _run("2-2", preds, spr_dir, tmp_path)["scores"]["se"] == pytest.approx(2 / 3)


def test_icbhi_perfect_and_known_mix(icbhi_dir: Path, tmp_path: Path, capsys: Capsys) -> None:
    result = _run("icbhi", ICBHI_TRUTH, icbhi_dir, tmp_path)
    assert result["scores"] == {"se": 1.0, "sp": 1.0, "score": 1.0, "n_normal": 3, "n_abnormal": 4}
    preds = {P1: ["normal", "crackle", "both"], P2: ["crackle", "both", "normal", "normal"]}
    result = _run("icbhi", preds, icbhi_dir, tmp_path)
    assert (result["scores"]["se"], result["scores"]["sp"]) == (0.5, pytest.approx(2 / 3))
    assert result["scores"]["score"] == pytest.approx(7 / 12)
    assert result["confusion"]["matrix"][0] == [2, 1, 0, 0]  # true normal row
    assert "Se" in capsys.readouterr().out


def test_preds_file_inside_the_annotation_folder_is_skipped(spr_dir: Path) -> None:
    preds_path = spr_dir / "preds.json"
    preds_path.write_text(json.dumps(TASK_2_2))
    assert evaluate("2-2", preds_path, spr_dir).scores.score == 1.0


# --- errors -------------------------------------------------------------------------------


def test_missing_and_extra_records(spr_dir: Path, tmp_path: Path, capsys: Capsys) -> None:
    preds = {B: "Normal", C: "DAS", D: "Poor Quality", "999_1.0_0_p1_1": "Normal"}
    error = _error("2-2", json.dumps(preds), spr_dir, tmp_path, capsys)
    assert "1 predicted record(s) have no annotation: 999_1.0_0_p1_1" in error
    assert f"1 annotated record(s) have no prediction: {A}" in error


def test_many_missing_records_are_counted_and_the_first_few_named(
    spr_dir: Path, tmp_path: Path, capsys: Capsys
) -> None:
    error = _error("2-2", "{}", spr_dir, tmp_path, capsys)
    assert f"4 annotated record(s) have no prediction: {A}, {B}, {C}, ... (1 more)" in error


def test_task_1_record_with_events_may_not_be_left_out(
    spr_dir: Path, tmp_path: Path, capsys: Capsys
) -> None:
    preds = {B: TASK_1_2[B], C: TASK_1_2[C]}
    assert f"no prediction: {A}" in _error("1-2", json.dumps(preds), spr_dir, tmp_path, capsys)


def test_wrong_number_of_labels(spr_dir: Path, tmp_path: Path, capsys: Capsys) -> None:
    preds = dict(TASK_1_2, **{C: ["Normal", "Normal"]})
    error = _error("1-2", json.dumps(preds), spr_dir, tmp_path, capsys)
    assert f"first '{C}': 2 predicted for 3 annotated events" in error


def test_unknown_label_lists_the_allowed_ones(
    spr_dir: Path, tmp_path: Path, capsys: Capsys
) -> None:
    preds = dict(TASK_2_1, **{A: "CAS"})  # a Task 2-2 label in Task 2-1
    error = _error("2-1", json.dumps(preds), spr_dir, tmp_path, capsys)
    assert f"record '{A}': label 'CAS' is not a Task 2-1 label" in error
    assert "allowed: 'Normal', 'Adventitious', 'Poor Quality'" in error


@pytest.mark.parametrize(
    ("task", "text", "message"),
    [
        ("2-2", '{"a": "Normal",\n}', ":2: invalid JSON at line 2"),
        ("2-2", '["Normal"]', "top level must be a JSON object"),
        ("2-2", '{"a": ["Normal"]}', "Task 2-2 wants one label string"),
        ("1-2", '{"a": "Normal"}', "Task 1-2 wants a list of label strings"),
        ("icbhi", '{"a": [1]}', "Task icbhi wants a list of label strings"),
    ],
)
def test_malformed_predictions(
    task: str, text: str, message: str, spr_dir: Path, tmp_path: Path, capsys: Capsys
) -> None:
    assert message in _error(task, text, spr_dir, tmp_path, capsys)


def test_missing_or_empty_annotation_folder(tmp_path: Path, icbhi_dir: Path) -> None:
    preds_path = tmp_path / "preds.json"
    preds_path.write_text("{}")
    with pytest.raises(EvaluationError, match="annotations folder not found"):
        evaluate("2-2", preds_path, tmp_path / "absent")
    with pytest.raises(EvaluationError, match=r"no \.json annotation files"):
        evaluate("2-2", preds_path, icbhi_dir)


# --- real data ----------------------------------------------------------------------------


def _require(folder: Path) -> Path:
    if not folder.is_dir():
        pytest.skip(f"data not found at {folder} (set LUNGWATCH_DATA_DIR)")
    return folder


@pytest.mark.requires_data
def test_real_intra_test_ground_truth_and_all_normal(tmp_path: Path) -> None:
    folder = _require(sprsound_root() / "intra_test")
    annotations = {p.stem: read_annotation(p) for p in sorted(folder.glob("*.json"))}
    events = {r: [e.type for e in evs] for r, (_, evs) in annotations.items()}
    records = {r: label for r, (label, _) in annotations.items()}
    result = _run("1-2", events, folder, tmp_path)
    assert result["scores"]["score"] == 1.0
    assert (result["n_records"], result["n_items"]) == (379, 1004)
    assert _run("2-2", records, folder, tmp_path)["scores"]["score"] == 1.0
    all_normal = {r: ["Normal"] * len(labels) for r, labels in events.items()}
    scores = _run("1-2", all_normal, folder, tmp_path)["scores"]
    assert (scores["se"], scores["sp"]) == (0.0, 1.0)
    scores = _run("2-2", dict.fromkeys(records, "Normal"), folder, tmp_path)["scores"]
    assert (scores["se"], scores["sp"], scores["n_abnormal"]) == (0.0, 1.0, 138)


@pytest.mark.requires_data
def test_real_icbhi_ground_truth_and_all_normal(tmp_path: Path) -> None:
    folder = _require(icbhi_root() / "train")
    truth = {p.stem: [c.label for c in read_cycles(p)] for p in sorted(folder.glob("*.txt"))}
    assert _run("icbhi", truth, folder, tmp_path)["scores"]["score"] == 1.0
    all_normal = {r: ["normal"] * len(labels) for r, labels in truth.items()}
    scores = _run("icbhi", all_normal, folder, tmp_path)["scores"]
    assert (scores["se"], scores["sp"], scores["score"]) == (0.0, 1.0, 0.5)
