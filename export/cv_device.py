"""``lungwatch cv device``: ICBHI through the device path, out of fold.

Each fold model of the design's seed is made into what a device runs, the way the shipped
model is, in ``WORK/fold<k>`` (reused when it holds a verify reference), and detects the ICBHI
``train`` recordings of its own ICBHI fold through the public streaming path, so every
recording is judged by a model that never heard its patient; the folds' outputs are judged
together per annotated cycle (:func:`training.scoring.views.icbhi_view`).

It lives in ``export`` (it runs the export steps on training's fold models); the console
entry routes ``lungwatch cv device`` here.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.datapaths import data_root
from lungwatch.cli import ArgumentParser
from lungwatch.errors import ConfigError
from training.cv.folds import load_folds
from training.cv.run import fold_dir

RECIPE_CALIBRATION = ("--max-files", "600", "--max-chunks", "2048", "--keep-first")


def fitted_rules(design: str, cv_dir: Path, boxes: bool = False) -> dict[str, dict[str, Any]]:
    """The design's ``detector`` and ``quality`` manifest sections, fitted once on its
    out-of-fold outputs as ``lungwatch cv rules --design NAME [--boxes]`` fits them."""
    from training.cv.score import add_rules_arguments, fit_sections

    parser = ArgumentParser(prog="lungwatch cv rules")
    add_rules_arguments(parser)
    argv = ["--design", design, "--cv-dir", str(cv_dir), *(["--boxes"] if boxes else [])]
    return fit_sections(parser.parse_args(argv))


def built(folder: Path) -> bool:
    """``folder`` holds a finished device artifact (its verify reference is written last)."""
    return (folder / "verify_reference.npz").is_file()


def device_artifact(
    checkpoint: Path, folder: Path, rules: dict[str, dict[str, Any]], fp32: bool
) -> str:
    """``folder`` made from ``checkpoint`` as the shipped model is; returns the file to run."""
    from edge.inference.manifest_write import set_section
    from export.quantize import main as quantize
    from export.to_onnx import main as export
    from export.verify import main as verify

    file = "model.onnx" if fp32 else "model.int8.onnx"
    if built(folder):
        return file
    steps: list[tuple[Any, list[str]]] = [
        (export, ["--checkpoint", str(checkpoint), "--out", str(folder)])
    ]
    if not fp32:
        calib = str(data_root() / "sprsound" / "train")
        steps.append((quantize, ["--model", str(folder / "model.onnx"), "--out",
                                 str(folder / file), "--calib-dir", calib,
                                 *RECIPE_CALIBRATION]))  # fmt: skip
    for step, argv in steps:
        if step(argv) != 0:
            raise ConfigError(f"{folder}: {' '.join(argv[:2])} failed")
    for name, section in rules.items():
        set_section(folder / "manifest.json", name, section)
    if verify(["--model-dir", str(folder), "--write-reference"]) != 0:
        raise ConfigError(f"{folder}: verify --write-reference failed")
    return file


def run_device_view(
    design: str, seed: int, cv_dir: Path, work: Path, fp32: bool, boxes: bool = False
) -> dict[str, Any]:
    from edge.runtime.offline import detect_recordings
    from training.data.icbhi import load_icbhi
    from training.scoring.views import cycle_verdicts, icbhi_view

    folds = load_folds("icbhi")
    recordings = load_icbhi(data_root() / "icbhi" / "train")
    missing = [
        k for k in range(folds.k) if not (fold_dir(cv_dir, design, seed, k) / "done.json").is_file()
    ]
    if missing:
        raise ConfigError(
            f"design {design!r} seed {seed}: no finished fold model of folds {missing} in "
            f"{cv_dir / design} (cv train first)"
        )
    found: dict[str, Any] = {}
    per_fold: dict[str, Any] = {}
    to_build = any(not built(work / f"fold{k}") for k in range(folds.k))
    rules = fitted_rules(design, cv_dir, boxes) if to_build else {}  # one fit for every fold
    for k in range(folds.k):
        mine = [r for r in recordings if folds.fold_of(r.patient_id) == k]
        folder = work / f"fold{k}"
        file = device_artifact(fold_dir(cv_dir, design, seed, k) / "model.pt", folder, rules, fp32)
        got = detect_recordings({r.recording_id: r.audio_path for r in mine}, folder, file)
        found |= got
        per_fold[str(k)] = icbhi_view(mine, got) | {"recordings": len(mine)}
        print(f"fold {k}: {len(mine)} recordings, Score {per_fold[str(k)]['icbhi_score']:.3f}",
              flush=True)  # fmt: skip
    result = icbhi_view(recordings, found) | {"recordings": len(recordings), "folds": per_fold}
    result["verdicts"] = [list(row) for row in cycle_verdicts(recordings, found)]
    return result


def score_counts(verdicts: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray]:
    """Patients and, per patient, (abnormal cycles, correct ones, normal cycles, correct ones)."""
    patients = sorted({row[0] for row in verdicts})
    where = {p: i for i, p in enumerate(patients)}
    counts = np.zeros((len(patients), 4))
    for patient, truth, verdict in verdicts:
        col = 2 if truth == "normal" else 0
        counts[where[patient], col] += 1
        counts[where[patient], col + 1] += truth == verdict
    return patients, counts


def icbhi_score(counts: np.ndarray) -> float:
    """ICBHI's Score (SE + SP) / 2 of summed per-patient counts."""
    total = counts.sum(axis=0)
    return float((total[1] / max(1.0, total[0]) + total[3] / max(1.0, total[2])) / 2)


def paired_bootstrap(
    mine: Sequence[Sequence[str]],
    theirs: Sequence[Sequence[str]],
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Score difference (mine - theirs) and 90 % interval, resampling the same patients for both."""
    if [list(r[:2]) for r in mine] != [list(r[:2]) for r in theirs]:
        raise ConfigError("--against: the two runs did not judge the same cycles")
    patients, a = score_counts(mine)
    _, b = score_counts(theirs)
    rng = np.random.default_rng(seed)
    diffs = [
        icbhi_score(a[pick]) - icbhi_score(b[pick])
        for pick in (rng.integers(0, len(patients), len(patients)) for _ in range(resamples))
    ]
    lo, hi = np.percentile(diffs, [5, 95])
    return {"difference": icbhi_score(a) - icbhi_score(b), "low": float(lo), "high": float(hi),
            "patients": len(patients)}  # fmt: skip


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    from training.cv.run import DEFAULT_OUT

    p.add_argument("--design", required=True, help="the design whose fold models detect")
    p.add_argument("--seed", type=int, default=0, help="the seed's fold models (default 0)")
    p.add_argument("--cv-dir", type=Path, default=DEFAULT_OUT, help="designs' parent folder")
    p.add_argument("--work", type=Path, default=None,
                   help="where the fold models' device artifacts go "
                        "(default out/cv-device/<design>-seed<seed>[-boxes])")  # fmt: skip
    p.add_argument("--fp32", action="store_true",
                   help="run the FP32 ONNX file (default: INT8, as the device)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="the view and every cycle's verdict")
    p.add_argument("--boxes", action="store_true",
                   help="the CAS classes on change-point boxes, as cv rules --boxes fits "
                        "them (default --work then ends in -boxes)")  # fmt: skip
    p.add_argument(
        "--against", type=Path, default=None,
        help="another run's --out: the paired bootstrap of the Score against it",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch cv device", description=__doc__)
    add_device_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return device_command(args)
    except ConfigError as exc:
        parser.error(str(exc))


def device_command(args: argparse.Namespace) -> int:
    boxed = "-boxes" if args.boxes else ""
    work = args.work or Path("out/cv-device") / f"{args.design}-seed{args.seed}{boxed}"
    other = None
    if args.against is not None:
        try:
            other = json.loads(args.against.read_text())["verdicts"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"--against {args.against}: not a cv device result ({exc})") from None
    result = run_device_view(args.design, args.seed, args.cv_dir, work, args.fp32, args.boxes)
    if other is not None:
        d = {"file": str(args.against)} | paired_bootstrap(result["verdicts"], other)
        result["against"] = d
        print(f"Score against {args.against}: {d['difference']:+.3f}, 90 % "
              f"[{d['low']:+.3f}, {d['high']:+.3f}] over {d['patients']} patients")  # fmt: skip
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"icbhi_score={result['icbhi_score']:.3f} se={result['icbhi_se']:.3f} "
        f"sp={result['icbhi_sp']:.3f} poor_time={result['poor_time']:.3f} "
        f"unassessed={result['unassessed']:.3f}"
    )
    return 0
