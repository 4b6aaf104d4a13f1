"""Train a design's fold models and keep every output (docs/training.md, "Fold models"). A
**design** is a run config (the YAML and its ``--set`` overrides) under a name. Kept:

    out/cv/<design>/design.json                  the resolved run (seed aside), the overrides
    out/cv/<design>/seed<S>/fold<k>/model.pt     the checkpoint (no fitted rules)
    out/cv/<design>/seed<S>/fold<k>/outputs.npz  "<set>/<record>" -> (n, O) float16 outputs
    out/cv/<design>/seed<S>/fold<k>/log.jsonl    one line per epoch
    out/cv/<design>/seed<S>/fold<k>/done.json    when, how long, how many recordings

A fold whose ``done.json`` exists is skipped, so an interrupted run goes on where it stopped;
a design folder made with another config is refused rather than mixed."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.datapaths import data_root
from lungwatch.config import to_mapping
from lungwatch.errors import ConfigError
from training.cv.folds import Folds, load_folds
from training.cv.teacher import attach, teacher_outputs
from training.data.icbhi import IcbhiRecording, load_icbhi
from training.data.recordings import Recording, load_icbhi_recordings, load_recordings
from training.data.sprsound import SprRecord, load_sprsound
from training.data.targets import OUTPUTS
from training.models.checkpoint import Checkpoint, save_checkpoint, without_retired
from training.models.sed import SedNet
from training.recipe.config import RunConfig, load_run

DEFAULT_OUT = Path("out/cv")


@dataclass
class Material:
    """Everything a design's folds read, loaded once per process."""

    records: list[SprRecord]  # SPRSound train
    recs: list[Recording]
    intra: list[Recording]  # SPRSound intra_test
    icbhi_recordings: list[IcbhiRecording]
    icbhi: list[Recording]
    folds: Folds
    icbhi_folds: Folds


def load_material(run: RunConfig, folds: Folds, icbhi_folds: Folds) -> Material:
    from training.recipe.train import feature_store, frame_grid, sprsound_folder

    store, grid, stride = feature_store(run), frame_grid(run), run.model.stride
    weight = run.data.unannotated_weight
    records = load_sprsound(sprsound_folder(run))
    recs = load_recordings(records, store, run.kinds, grid, stride, weight)
    intra_dir = sprsound_folder(run).parent / "intra_test"  # beside train, as SPRSound lays it out
    intra_records = load_sprsound(intra_dir) if intra_dir.is_dir() else []
    intra = load_recordings(intra_records, store, run.kinds, grid, stride, weight)
    icbhi_dir = Path(run.data.icbhi_dir) if run.data.icbhi_dir else data_root() / "icbhi" / "train"
    icbhi_recordings = load_icbhi(icbhi_dir) if icbhi_dir.is_dir() else []
    icbhi = load_icbhi_recordings(icbhi_recordings, store, run.kinds, grid, stride)
    for r in records:  # every patient in a fold, before hours of training
        folds.fold_of(r.patient_id)
    for ir in icbhi_recordings:
        icbhi_folds.fold_of(ir.patient_id)
    return Material(records, recs, intra, icbhi_recordings, icbhi, folds, icbhi_folds)


def design_dir(out: Path, design: str) -> Path:
    if not design or "/" in design or design.startswith("."):
        raise ConfigError(f"--design {design!r}: expected a folder name")
    return out / design


FULL = -1  # the fold number of a design's full model (no patient held out)


def fold_dir(out: Path, design: str, seed: int, fold: int) -> Path:
    name = "full" if fold == FULL else f"fold{fold}"
    return design_dir(out, design) / f"seed{seed}" / name


def check_design(folder: Path, run: RunConfig, overrides: list[str]) -> None:
    resolved = to_mapping(run)
    for key in ("seed", "name", "threads", "out_dir"):  # not the recipe
        resolved.pop(key)
    doc = {
        "run": resolved,
        "overrides": [o for o in overrides if not o.startswith(("seed=", "threads="))],
    }
    path = folder / "design.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        try:
            kept = without_retired(stored["run"])
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if kept != json.loads(json.dumps(resolved)):
            raise ConfigError(
                f"{folder}: this design was trained with another config (overrides "
                f"{stored['overrides']}); name the new one --design <other name>"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def train_fold(
    run: RunConfig, mat: Material, fold: int | None, folder: Path, device: str = "cpu"
) -> dict[str, Any]:
    """One fold model trained on ``device``, saved, its outputs kept; ``fold`` None: the design's
    full model, trained on every patient (and taught by every fold model of the teacher)."""
    from training.recipe.train import feature_store, new_model, train, training_data

    torch.manual_seed(run.seed)
    np.random.seed(run.seed)
    torch.set_num_threads(run.threads)
    rng = np.random.default_rng(run.seed * 1000 + (fold if fold is not None else mat.folds.k))
    t0 = time.time()
    inside = [] if fold is None else mat.folds.split(mat.records, fold)[1]
    held_out = {r.record_id for r in inside}
    chosen: set[str] = set()
    if run.data.icbhi_fraction > 0:
        chosen = {
            r.patient_id
            for r in mat.icbhi_recordings
            if fold is None or mat.icbhi_folds.fold_of(r.patient_id) != fold
        }
    data = training_data(
        run, feature_store(run), mat.recs, held_out, (mat.icbhi_recordings, chosen)
    )
    taught = 0
    if run.distill.weight > 0:
        teachers = None if fold is None else [fold]
        soft = teacher_outputs(Path(run.distill.teacher), teachers, run.distill.temperature)
        taught = attach([r for r in data.train if r.label != "icbhi"], soft, "sprsound")
        taught += attach([r for r in data.train if r.label == "icbhi"], soft, "icbhi")
    print(
        f"seed {run.seed} fold {fold}: {len(data.train)} training, {len(data.val)} held-out "
        f"recordings",
        flush=True,
    )
    folder.mkdir(parents=True, exist_ok=True)
    model = new_model(run, data, rng, device)
    kept = train(run, model, data, rng, choose_epoch=False, log_path=folder / "log.jsonl")
    assert kept.state is not None
    model.load_state_dict(kept.state)
    for r in data.train:  # the teacher's outputs are the next fold's to set
        r.soft = None
    ckpt = Checkpoint(
        model.eval(),
        run.features,
        run.kinds,
        OUTPUTS,
        name=f"sed-{run.name}",  # the exported model id's prefix: sed-<design>-<hash>
        epoch=kept.epoch,
        run=to_mapping(run),
        quality={"poor_on": run.quality.poor_on, "poor_off": run.quality.poor_off},
        icbhi_patients=tuple(sorted(chosen)),
    )
    save_checkpoint(folder / "model.pt", ckpt)
    t1 = time.time()
    write_outputs(model, mat, data.flush, data.view.transform, folder)
    done = {
        "seed": run.seed,
        "fold": fold,
        "epochs": run.optim.epochs,
        "train_s": round(t1 - t0, 1),
        "predict_s": round(time.time() - t1, 1),
        "training_recordings": len(data.train),
        "held_out_recordings": len(inside),
        "held_out_patients": len({r.patient_id for r in inside}),
        "icbhi_training_patients": sorted(chosen),
        "taught_recordings": taught,
        "device": device,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (folder / "done.json").write_text(json.dumps(done, indent=1) + "\n")
    return done


def write_outputs(
    model: SedNet, mat: Material, flush: np.ndarray, transform: Any, folder: Path
) -> int:
    """Outputs over every set of ``mat`` into ``folder/outputs.npz``; how many recordings."""
    from training.recipe.train import predict

    outputs: dict[str, Any] = {}
    for name, recs in (("sprsound", mat.recs), ("intra_test", mat.intra), ("icbhi", mat.icbhi)):
        if recs:
            probs = predict(model, recs, flush, transform=transform)
            for r, p in zip(recs, probs, strict=True):
                outputs[f"{name}/{r.record_id}"] = p.astype(np.float16)
    temp = folder / ".outputs.tmp.npz"
    np.savez_compressed(temp, **outputs)
    temp.replace(folder / "outputs.npz")
    return len(outputs)


def parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what} {text!r}: expected integers separated by commas") from None
    if not values:
        raise ConfigError(f"{what} {text!r}: expected at least one integer")
    return values


def train_design(
    config: Path,
    design: str,
    seeds: list[int],
    folds: list[int] | None,
    overrides: list[str],
    out: Path = DEFAULT_OUT,
    device: str = "cpu",
    jobs: int = 1,
    folds_file: Path | None = None,
) -> list[dict[str, Any]]:
    """Every missing (seed, fold) model of ``design``; what each reported. ``folds_file``:
    another SPRSound fold file than the repository's (another data set)."""
    base = load_run(config, [*overrides, f"name={design}"])
    sprsound = load_folds("sprsound", path=folds_file)
    icbhi = load_folds("icbhi")
    chosen = folds if folds is not None else list(range(sprsound.k))
    bad = [f for f in chosen if not 0 <= f < sprsound.k and f != FULL]
    if bad:
        raise ConfigError(f"--folds {bad}: expected 0..{sprsound.k - 1}")
    check_design(design_dir(out, design), base, overrides)
    todo = [
        (s, f)
        for s in seeds
        for f in chosen
        if not (fold_dir(out, design, s, f) / "done.json").is_file()
    ]
    if not todo:
        print(f"{design}: every fold of seeds {seeds} is trained", flush=True)
        return []
    if jobs > 1 and len(todo) > 1:
        return run_parallel(config, design, todo, overrides, out, device, jobs, folds_file)
    mat = load_material(base, sprsound, icbhi)
    reports = []
    for seed, fold in todo:
        run = load_run(config, [*overrides, f"name={design}", f"seed={seed}"])
        folder = fold_dir(out, design, seed, fold)
        reports.append(train_fold(run, mat, None if fold == FULL else fold, folder, device))
        print(json.dumps(reports[-1]), flush=True)
    return reports


def run_parallel(
    config: Path,
    design: str,
    todo: list[tuple[int, int]],
    overrides: list[str],
    out: Path,
    device: str,
    jobs: int,
    folds_file: Path | None = None,
) -> list[dict[str, Any]]:
    """Each (seed, fold) in its own process, ``jobs`` at a time, output to its ``train.log``; a
    failed one is reported, the others go on."""
    import subprocess
    import sys

    waiting = list(todo)
    running: list[tuple[subprocess.Popen[bytes], Path]] = []
    failed: list[str] = []
    while waiting or running:
        while waiting and len(running) < jobs:
            seed, fold = waiting.pop(0)
            folder = fold_dir(out, design, seed, fold)
            folder.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "training.cv.cli", "train", "--config", str(config)]
            cmd += ["--design", design, "--seeds", str(seed), "--folds", str(fold)]
            cmd += ["--out", str(out), "--device", device]
            for o in overrides:
                cmd += ["--set", o]
            if folds_file is not None:
                cmd += ["--folds-file", str(folds_file)]
            with (folder / "train.log").open("wb") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            running.append((proc, folder))
            print(f"{design}: seed {seed} fold {fold} started ({folder / 'train.log'})", flush=True)
        time.sleep(1.0)
        for proc, folder in list(running):
            if proc.poll() is None:
                continue
            running.remove((proc, folder))
            if proc.returncode != 0:
                failed.append(f"{folder} (exit {proc.returncode}, see its train.log)")
            print(f"{design}: {folder} finished, exit {proc.returncode}", flush=True)
    if failed:
        raise ConfigError("fold models failed: " + "; ".join(failed))
    return [json.loads((fold_dir(out, design, s, f) / "done.json").read_text()) for s, f in todo]


def predict_design(out: Path, design: str) -> int:
    """``outputs.npz`` of every finished fold model brought back without it; how many written."""
    from training.models.checkpoint import load_checkpoint
    from training.recipe.inputs import InputView

    folder = design_dir(out, design)
    if not folder.is_dir():
        raise ConfigError(f"design {design!r}: no folder {folder} (cv train first)")
    todo = sorted(
        p.parent
        for p in folder.glob("seed*/*/done.json")
        if not (p.parent / "outputs.npz").is_file()
    )
    if not todo:
        return 0
    from lungwatch.config import from_mapping

    first = load_checkpoint(todo[0] / "model.pt")
    run = from_mapping(RunConfig, first.run, source=str(todo[0] / "model.pt"))
    mat = load_material(run, load_folds("sprsound"), load_folds("icbhi"))
    for path in todo:
        ckpt = load_checkpoint(path / "model.pt")
        view = InputView(ckpt.spec, ckpt.kinds)
        n = write_outputs(ckpt.model, mat, ckpt.mean.cpu().numpy(), view.transform, path)
        print(f"{path}: outputs of {n} recordings", flush=True)
    return len(todo)
