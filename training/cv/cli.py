"""``lungwatch cv``: patient-grouped cross-validation of training designs. Subcommands live in
:mod:`training.cv.folds`, ``.run``, ``.score`` (``score``, ``rules``) and ``.findings``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import NoReturn

from edge.datapaths import data_root, sprsound_root
from lungwatch.cli import ArgumentParser
from lungwatch.errors import ConfigError
from training.cv.folds import DEFAULT_K, Folds, fold_path, label_counts, load_folds, make_folds
from training.cv.run import DEFAULT_OUT, parse_ints, predict_design, train_design


def current_folds(dataset: str, k: int) -> tuple[Folds, list[str], list[str]]:
    """Folds made from the data as it is now, with the recordings' patients and labels."""
    if dataset == "sprsound":
        from training.data.sprsound import load_sprsound

        records = load_sprsound(sprsound_root() / "train")
        patients = [r.patient_id for r in records]
        labels = [r.record_label for r in records]
    else:
        from training.data.icbhi import load_icbhi

        recordings = load_icbhi(data_root() / "icbhi" / "train")
        patients = [r.patient_id for r in recordings]
        labels = [
            "both" if c and w else "crackles" if c else "wheezes" if w else "normal"
            for c, w in (
                (any(x.crackles for x in r.cycles), any(x.wheezes for x in r.cycles))
                for r in recordings
            )
        ]
    return make_folds(dataset, patients, labels, k), patients, labels


def folds_command(write: bool, k: int) -> int:
    status = 0
    for dataset in ("sprsound", "icbhi"):
        made, patients, labels = current_folds(dataset, k)
        path = fold_path(dataset, k)
        if write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(made.to_dict(), indent=1) + "\n")
            stored = made
        else:
            stored = load_folds(dataset, k)
            if stored.patients != made.patients:
                print(f"{path}: differs from the folds the data gives now (--write makes it again)")
                status = 1
        counts = label_counts(stored, patients, labels)
        print(f"{dataset}: {len(stored.patients)} patients in {stored.k} folds ({path})")
        for fold, c in enumerate(counts):
            n = len(stored.patients_of(fold))
            print(
                f"  fold {fold}: {n:3d} patients, {sum(c.values()):4d} recordings  "
                + ", ".join(f"{label} {c[label]}" for label in sorted(c))
            )
    return status


class SubcommandParser(ArgumentParser):
    def error(self, message: str) -> NoReturn:
        what = self.prog.rsplit(" ", 1)[-1]
        print(f"lungwatch cv: error: {what}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="lungwatch cv",
        description="Patient-grouped cross-validation: fold files, fold models, out-of-fold "
        "scores of designs and the rules fitted on them.",
    )
    sub = parser.add_subparsers(
        dest="what", metavar="command", required=True, parser_class=SubcommandParser,
        help="what to do (each has its own --help)",
    )  # fmt: skip
    f = sub.add_parser("folds", help="check the stored fold files against the data (--write)")
    f.add_argument("--write", action="store_true", help="make the fold files from the data")
    f.add_argument("--k", type=int, default=DEFAULT_K, help="folds per dataset (default 5)")
    t = sub.add_parser("train", help="train a design's missing fold models and keep their outputs")
    t.add_argument("--config", type=Path, required=True, help="run YAML (training/configs)")
    t.add_argument("--design", required=True, help="the design's name (its folder under --out)")
    t.add_argument("--seeds", default="0,1,2", help="seeds, comma-separated (default 0,1,2)")
    t.add_argument(
        "--folds", help="folds to train (default every fold; -1: the full model, every patient)"
    )
    t.add_argument("--jobs", type=int, default=1, help="fold models trained at once (processes)")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the run, e.g. loss.phase_weight=0 (repeatable)",
    )
    t.add_argument("--out", type=Path, default=DEFAULT_OUT, help="designs' parent folder")
    t.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda)")
    t.add_argument(
        "--folds-file",
        type=Path,
        help="SPRSound fold file (default training/cv/folds/sprsound-k5.json)",
    )
    pr = sub.add_parser("predict", help="outputs of fold models brought back without them")
    pr.add_argument("--design", required=True, action="append", help="design name (repeatable)")
    pr.add_argument("--out", type=Path, default=DEFAULT_OUT, help="designs' parent folder")
    from training.cv import findings, score

    score.add_arguments(
        sub.add_parser("score", help="out-of-fold scores of a design (and against another)")
    )
    score.add_rules_arguments(
        sub.add_parser(
            "rules", help="fit a threshold per family on a design's OOF outputs into a manifest"
        )
    )
    # the console entry routes `cv device` to export.cv_device (export steps); listed for --help
    sub.add_parser("device", help="ICBHI through the device path, out of fold (fold models)")
    findings.add_arguments(
        sub.add_parser(
            "findings",
            help="fit the finding episodes' rules on new recordings (intra_test's fitting half)",
        )
    )
    args = parser.parse_args(argv)
    try:
        if args.what == "folds":
            return folds_command(args.write, args.k)
        if args.what == "train":
            folds = None if args.folds is None else parse_ints(args.folds, "--folds")
            train_design(
                args.config,
                args.design,
                parse_ints(args.seeds, "--seeds"),
                folds,
                args.set,
                args.out,
                args.device,
                args.jobs,
                args.folds_file,
            )
            return 0
        if args.what == "predict":
            for design in args.design:
                print(f"{design}: {predict_design(args.out, design)} fold models predicted")
            return 0
        if args.what == "rules":
            return score.rules_command(args)
        if args.what == "device":
            parser.error("cv device runs as 'lungwatch cv device' (export.cv_device)")
        if args.what == "findings":
            return findings.findings_command(args)
        return score.score_command(args)
    except ConfigError as exc:
        parser.error(str(exc))
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
