"""Patient-grouped cross-validation: the fold files, fold models and their out-of-fold outputs
on a small synthetic SPRSound folder, the teacher, the phase loss's pooling, and the decision
layer's counts, fits and bootstrap checked against sed_eval and NumPy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.bed.detector import FrameGrid
from edge.datapaths import data_root
from lungwatch.errors import ConfigError
from training.cv.decide import (
    FAMILIES,
    RecordCounts,
    cross_fit,
    detector_section,
    fit_thresholds,
    merged,
    summary,
)
from training.cv.folds import Folds, load_folds, make_folds
from training.cv.oof import Truth, ensemble, load_truth, oof_outputs
from training.cv.run import train_design
from training.cv.score import bootstrap, pooled_counts
from training.cv.teacher import teacher_outputs
from training.data.recordings import Batch
from training.data.targets import OUTPUTS
from training.models.checkpoint import load_checkpoint
from training.recipe.losses import distill_loss, mean_phases
from training.scoring.detection import score_detection

from .sprsound_folder import write_folder

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "training" / "configs" / "sed.yaml"
TINY = ["optim.epochs=1", "optim.batch_size=4", "model.channels=16", "model.dilations=[1, 2]",
        "model.lookahead_frames=2", "data.max_frames=60", "threads=1"]  # fmt: skip
GRID = FrameGrid.of(8000, 80, 256, 4)


# --- folds -----------------------------------------------------------------------------------


def test_made_folds_keep_each_patient_whole_and_balance_labels() -> None:
    rng = np.random.default_rng(0)
    patients = [f"p{i // 3}" for i in range(300)]  # 100 patients, 3 recordings each
    labels = [str(x) for x in rng.choice(["Normal", "CAS", "DAS"], size=300, p=[0.6, 0.2, 0.2])]
    folds = make_folds("sprsound", patients, labels, k=5)
    assert set(folds.patients) == set(patients)
    sizes = [len(folds.patients_of(k)) for k in range(5)]
    assert min(sizes) >= 15
    assert max(sizes) <= 25
    for label in ("CAS", "DAS"):
        per_fold = [sum(1 for p, lab in zip(patients, labels, strict=True)
                        if lab == label and folds.fold_of(p) == k) for k in range(5)]  # fmt: skip
        assert max(per_fold) - min(per_fold) <= 6, per_fold


def test_an_unknown_patient_is_named_and_a_bad_file_refused(tmp_path: Path) -> None:
    folds = Folds("sprsound", 2, {"a": 0, "b": 1})
    with pytest.raises(ConfigError, match="patient 'c' is in no fold"):
        folds.fold_of("c")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset": "x", "k": 2, "method": "", "patients": {"a": 7}}))
    with pytest.raises(ConfigError, match=r"folds \['7'\] outside 0..1"):
        load_folds("sprsound", path=bad)
    with pytest.raises(ConfigError, match="no fold file"):
        load_folds("sprsound", path=tmp_path / "missing.json")


@pytest.mark.skipif(
    not (data_root() / "sprsound" / "train").is_dir(), reason="../shared/data/sprsound absent"
)
def test_the_stored_fold_files_are_the_folds_the_data_gives() -> None:
    from training.cv.cli import main

    assert main(["folds"]) == 0  # 1 when a file no longer matches the data
    folds = load_folds("sprsound")
    assert folds.k == 5
    assert len(folds.patients) == 251


# --- fold models on a synthetic folder -------------------------------------------------------


@pytest.fixture(scope="module")
def cv_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cv")
    data = write_folder(root / "sprsound" / "train", patients=6, seconds=5.0)
    from training.data.sprsound import load_sprsound

    records = load_sprsound(data)
    folds = make_folds("sprsound", [r.patient_id for r in records],
                       [r.record_label for r in records], k=2)  # fmt: skip
    (root / "folds.json").write_text(json.dumps(folds.to_dict()))
    sets = [*TINY, f"data.train_dir={data}", f"data.cache_dir={root / 'cache'}",
            f"data.icbhi_dir={root / 'no-icbhi'}"]  # fmt: skip
    train_design(RECIPE, "base", [0], None, sets, root / "cv", folds_file=root / "folds.json")
    teach = [*sets, f"distill.teacher={root / 'cv' / 'base'}", "distill.weight=0.5"]
    train_design(RECIPE, "kd", [0], [0, -1], teach, root / "cv", folds_file=root / "folds.json")
    return root


def test_a_design_is_judged_by_the_rules_asked_for(cv_root: Path) -> None:
    from training.cv.score import score_design

    truth = load_truth(
        cv_root / "sprsound" / "train", load_folds("sprsound", path=cv_root / "folds.json")
    )
    rules = ["phase", "phase_boxes"]
    result, pooled = score_design(cv_root / "cv" / "base", truth, rules, GRID, 100.0, None, False)
    assert set(rules) <= set(result["members"]["seed0"])
    assert {"seeds:phase", "seeds:phase_boxes"} <= set(pooled)
    with pytest.raises(ConfigError, match="decision rule 'phase_att': expected one of"):
        score_design(cv_root / "cv" / "base", truth, ["phase_att"], GRID, 100.0, None, False)


def test_every_record_gets_an_output_from_the_model_that_never_heard_its_patient(
    cv_root: Path,
) -> None:
    folds = load_folds("sprsound", path=cv_root / "folds.json")
    for k in range(2):
        done = json.loads((cv_root / "cv/base/seed0" / f"fold{k}" / "done.json").read_text())
        assert done["held_out_patients"] == len(folds.patients_of(k))
        assert done["epochs"] == 1
        ckpt = load_checkpoint(cv_root / "cv/base/seed0" / f"fold{k}" / "model.pt")
        assert ckpt.icbhi_patients == ()  # no ICBHI material: it says so, for the ICBHI view
    truth = load_truth(cv_root / "sprsound" / "train", folds)
    oof = oof_outputs(cv_root / "cv" / "base", truth)[0]
    for r in truth.records:
        own = np.load(cv_root / f"cv/base/seed0/fold{truth.folds[r]}/outputs.npz")
        other = np.load(cv_root / f"cv/base/seed0/fold{1 - truth.folds[r]}/outputs.npz")
        assert np.array_equal(oof[r], own[f"sprsound/{r}"].astype(np.float32))
        assert not np.array_equal(oof[r], other[f"sprsound/{r}"].astype(np.float32))
        assert oof[r].shape[1] == len(OUTPUTS)


def test_a_design_is_not_retrained_nor_mixed_with_another_config(cv_root: Path) -> None:
    sets = [*TINY, f"data.train_dir={cv_root / 'sprsound/train'}",
            f"data.cache_dir={cv_root / 'cache'}",
            f"data.icbhi_dir={cv_root / 'no-icbhi'}"]  # fmt: skip
    folds = cv_root / "folds.json"
    assert train_design(RECIPE, "base", [0], None, sets, cv_root / "cv", folds_file=folds) == []
    with pytest.raises(ConfigError, match="trained with another config"):
        train_design(RECIPE, "base", [0], None, [*sets, "optim.lr=0.01"], cv_root / "cv",
                     folds_file=folds)  # fmt: skip


def test_the_student_is_taught_by_its_folds_teacher_and_the_full_model_by_all(
    cv_root: Path,
) -> None:
    fold0 = json.loads((cv_root / "cv/kd/seed0/fold0/done.json").read_text())
    full = json.loads((cv_root / "cv/kd/seed0/full/done.json").read_text())
    assert fold0["taught_recordings"] == fold0["training_recordings"]
    assert full["held_out_recordings"] == 0
    assert full["taught_recordings"] == 12  # every record of the folder
    with pytest.raises(ConfigError, match="no finished fold model of folds"):
        teacher_outputs(cv_root / "cv" / "base", [5])


def test_the_teacher_is_the_mean_of_its_models_logits(tmp_path: Path) -> None:
    design = tmp_path / "t"
    rng = np.random.default_rng(1)
    logits = []
    for seed in (0, 1, 2):
        folder = design / f"seed{seed}" / "fold0"
        folder.mkdir(parents=True)
        z = rng.normal(size=(10, 7))
        logits.append(z)
        np.savez(
            folder / "outputs.npz", **{"sprsound/r": (1 / (1 + np.exp(-z))).astype(np.float16)}
        )
        (folder / "done.json").write_text("{}")
    got = teacher_outputs(design, [0], temperature=0.5)["sprsound/r"]
    want = 1 / (1 + np.exp(-np.mean(logits, axis=0) / 0.5))
    assert np.allclose(got, want, atol=2e-3)
    assert np.allclose(
        ensemble([{"r": 1 / (1 + np.exp(-z))} for z in logits])["r"],
        1 / (1 + np.exp(-np.mean(logits, axis=0))),
        atol=1e-4,
    )


# --- losses ----------------------------------------------------------------------------------


def test_phase_pooling_is_each_segments_mean() -> None:
    rng = np.random.default_rng(2)
    probs = rng.uniform(0.01, 0.99, size=(40, 5))
    index = rng.integers(0, 6, size=40)
    got = mean_phases(torch.tensor(probs, dtype=torch.float32), torch.tensor(index), 6)
    for s in range(6):
        assert np.allclose(got[s].numpy(), probs[index == s].mean(0), atol=1e-5)


def test_distillation_pulls_towards_the_teacher_on_taught_frames_only() -> None:
    soft = np.full((1, 7, 4), 0.9, np.float32)
    batch = Batch(np.zeros((1, 1, 64, 16), np.float32), np.zeros((1, 7, 4), np.float32),
                  np.ones((1, 7, 4), np.float32), np.ones((1, 4), np.float32), 4, soft,
                  np.array([[1, 1, 0, 0]], np.float32))  # fmt: skip
    near = torch.full((1, 7, 4), float(np.log(9.0)))  # sigmoid = 0.9
    far = near.clone()
    far[:, :, :2] = -3.0
    assert float(distill_loss(far, batch)) > float(distill_loss(near, batch))
    untaught = near.clone()
    untaught[:, :, 2:] = -3.0  # the frames without a teacher output do not count
    assert float(distill_loss(untaught, batch)) == pytest.approx(float(distill_loss(near, batch)))


# --- the decision layer ----------------------------------------------------------------------


def synthetic_truth(
    n: int = 40, seed: int = 3
) -> tuple[Truth, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Records of 10 s in 4 folds: CAS / DAS records with two annotated events each and
    candidates over them scored high (some missed), Normal records with low-scored candidates."""
    rng = np.random.default_rng(seed)
    truth = Truth([], {}, {}, {}, {}, {})
    tables = {}
    for i in range(n):
        r = f"r{i:03d}"
        label = ("Normal", "CAS", "DAS", "Normal")[i % 4]
        events = [] if label == "Normal" else [
            (1.0, 2.0, "Wheeze" if label == "CAS" else "Fine Crackle"),
            (5.0, 6.5, "Wheeze" if label == "CAS" else "Fine Crackle")]  # fmt: skip
        edges = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.5, 10.0])
        scores = np.zeros((7, 2))
        col = 0 if label == "CAS" else 1
        if events:
            scores[1, col] = rng.uniform(0.3, 0.95)
            scores[5, col] = rng.uniform(0.1, 0.9)
        scores[3, rng.integers(0, 2)] = rng.uniform(0.0, 0.6)  # a candidate off every event
        truth.records.append(r)
        truth.annotated[r] = events
        truth.labels[r] = label
        truth.durations[r] = 10.0
        truth.patients[r] = f"p{i // 2}"
        truth.folds[r] = (i // 2) % 4
        tables[r] = (edges, scores)
    return truth, tables


def events_at(table: tuple[np.ndarray, np.ndarray], thresholds: dict[str, float]) -> list:
    edges, scores = table
    return [(edges[j], edges[j + 1], {"CAS": "Wheeze", "DAS": "Fine Crackle"}[f])
            for j in range(len(scores)) for i, f in enumerate(FAMILIES)
            if scores[j, i] > 0 and scores[j, i] >= thresholds[f]]  # fmt: skip


def test_record_counts_equal_sed_eval_at_any_threshold() -> None:
    truth, tables = synthetic_truth()
    counts = RecordCounts.of(tables, truth)
    rows = list(range(len(truth.records)))
    for t in (0.05, 0.3, 0.5, 0.8):
        predicted = {r: events_at(tables[r], {"CAS": t, "DAS": t}) for r in truth.records}
        report = score_detection(predicted, truth.annotated, truth.labels, truth.durations)
        for f in FAMILIES:
            tp, fp = counts.at(f, t, rows)
            n = counts.n_ref[f].sum()
            want = report.families[f]
            assert 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + n - tp.sum(), 1) == pytest.approx(
                want.event_f1, abs=1e-9
            )
            normal = [i for i in rows if truth.labels[truth.records[i]] == "Normal"]
            hours = 10.0 * len(normal) / 3600
            assert counts.at(f, t, normal)[1].sum() / hours == pytest.approx(
                want.false_events_per_hour
            )


def test_the_fit_keeps_the_budget_and_the_cross_fit_judges_each_fold_by_the_others() -> None:
    truth, tables = synthetic_truth(80)
    counts = RecordCounts.of(tables, truth)
    rows = list(range(len(truth.records)))
    normal = [i for i in rows if truth.labels[truth.records[i]] == "Normal"]
    hours = 10.0 * len(normal) / 3600
    for budget in (20.0, 200.0):
        fitted = fit_thresholds(counts, truth, rows, budget)
        for f in FAMILIES:
            false = counts.at(f, fitted[f].threshold, normal)[1].sum() / hours
            assert false <= budget + 1e-9
            assert fitted[f].false_per_hour == pytest.approx(false)
    generous = fit_thresholds(counts, truth, rows, 1e6)
    strict = fit_thresholds(counts, truth, rows, 20.0)
    assert all(generous[f].f1 >= strict[f].f1 for f in FAMILIES)
    cf = cross_fit(counts, truth, 200.0)
    assert sorted(cf.thresholds) == [0, 1, 2, 3]
    for k, fitted in cf.thresholds.items():
        others = [i for i in rows if truth.folds[truth.records[i]] != k]
        assert fitted == fit_thresholds(counts, truth, others, 200.0)
    result = summary(cf, truth, counts.records)
    assert 0 < result["f1_cas"] <= 1
    assert result["fa_ratio_das"] > 0


def test_seeds_pool_into_one_fit_and_the_section_the_device_reads() -> None:
    truth, tables = synthetic_truth()
    counts = RecordCounts.of(tables, truth)
    both, big = merged([counts, counts], truth)
    assert len(both.records) == 2 * len(truth.records)
    alone = fit_thresholds(counts, truth, range(len(truth.records)), 100.0)
    pooled = fit_thresholds(both, big, range(len(both.records)), 100.0)
    assert {f: v.threshold for f, v in alone.items()} == {f: v.threshold for f, v in pooled.items()}
    section = detector_section(pooled, "d", 40, 2, 100.0, {})
    from edge.inference.manifest import _detector_phases, _detector_rules

    rules = _detector_rules(Path("m"), {"detector": section}, OUTPUTS)
    assert {r["type"] for r in rules} == {"Wheeze", "Rhonchi", "Stridor", "Fine Crackle",
                                          "Coarse Crackle"}  # fmt: skip
    assert _detector_phases(Path("m"), {"detector": section}, OUTPUTS) is not None


def test_the_paired_bootstrap_sees_no_gain_in_a_copy_and_one_in_a_better_design() -> None:
    truth, tables = synthetic_truth(80)
    counts = RecordCounts.of(tables, truth)
    cf = cross_fit(counts, truth, 200.0)
    a = pooled_counts([cf])
    patients = [truth.patients[r] for r in truth.records]
    same = bootstrap(a, a, patients, 200)
    assert same["macro"]["diff"] == 0
    assert same["macro"]["ci90"] == [0.0, 0.0]
    better = {k: v.copy() for k, v in a.items()}
    for f in FAMILIES:  # every missed event found, nothing false added
        better[f"tp_{f}"] = better[f"n_{f}"].astype(float)
    gain = bootstrap(a, better, patients, 200)
    assert gain["macro"]["ci90"][0] > 0


def test_the_gate_is_fitted_on_each_records_out_of_fold_output(cv_root: Path) -> None:
    """The gate's replay reads every record from its own fold's model, once per seed; the
    fit's held-out shares are shares of those records."""
    from training.cv.gate import ON_GRID, cross_fit_gate, gate_outputs, replay

    folds = load_folds("sprsound", path=cv_root / "folds.json")
    truth = load_truth(cv_root / "sprsound" / "train", folds)
    oof = oof_outputs(cv_root / "cv" / "base", truth)[0]
    frame_s = GRID.frame_samples / GRID.sample_rate_hz
    outputs = gate_outputs({0: oof}, truth, cv_root / "cv" / "base", {}, frame_s)
    assert sorted(name for name, *_ in outputs) == sorted(f"0/{r}" for r in truth.records)
    for name, kind, fold, duration, probs in outputs:
        record = name.split("/", 1)[1]
        assert np.array_equal(probs, oof[record])
        assert (kind, fold, duration) == (0, truth.folds[record], truth.durations[record])
    counts = replay(outputs, window_frames=12, frame_s=frame_s)
    assert counts.flagged.shape == (len(truth.records), len(ON_GRID))
    # a higher threshold never raises more
    assert (np.diff(counts.poor_s, axis=1) <= 1e-9).all()
    fit = cross_fit_gate(counts, max_good_share=0.0, max_other_time_share=1.0, k=2)
    assert len(fit.thresholds) == 2
    assert fit.held_out["good"] in {i / len(truth.records) for i in range(len(truth.records) + 1)}


def test_icbhi_recordings_come_from_their_own_icbhi_folds_models(tmp_path: Path) -> None:
    """A design may train on ICBHI patients outside each fold: the ICBHI view and the gate
    read each recording from the models of its patient's own fold only."""
    from training.cv.oof import icbhi_out_of_fold

    folds = load_folds("icbhi")
    patients = {"105_a": "105", "108_a": "108", "110_a": "110"}  # folds 0, 2, 4
    for k in range(folds.k):
        folder = tmp_path / "design" / "seed0" / f"fold{k}"
        folder.mkdir(parents=True)
        outputs = {f"icbhi/{r}": np.full((3, len(OUTPUTS)), k / 10) for r in patients}
        np.savez(folder / "outputs.npz", **outputs)
        (folder / "done.json").write_text("{}")
    got = icbhi_out_of_fold(tmp_path / "design", patients, seed=0)
    assert {r: k for r, (k, _) in got.items()} == {r: folds.fold_of(p) for r, p in patients.items()}
    for _, (k, probs) in got.items():
        assert np.allclose(probs, k / 10)
