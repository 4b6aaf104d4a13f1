"""``lungwatch report --model CKPT``: every score of a model card, in one run.

Scores a trained checkpoint on:
- SPRSound ``intra_test``: Tasks 1-1, 1-2, 2-1, 2-2 (challenge formats, through
  ``predict`` and ``evaluate``: exactly what a challenge submission would get);
- ICBHI ``train`` recordings, cross-dataset (SPRSound classes mapped to ICBHI labels);
- event detection over whole ``intra_test`` recordings through the device's path
  (``lungwatch detect --score``: the model's ONNX artifact, the manifest's fitted rules,
  sed_eval scores).
Writes ``<out>.json`` and prints a Markdown table. The validation scores the epoch was
selected on are read from the checkpoint.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from edge.datapaths import icbhi_root, sprsound_root
from firmware_bridge.cliparse import ArgumentParser
from training.evaluate import evaluate
from training.predict import predict

CHALLENGE_TASKS = ("1-1", "1-2", "2-1", "2-2")


def challenge_scores(model: Path, audio: Path, annotations: Path, task: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        preds = Path(tmp) / f"{task}.json"
        preds.write_text(json.dumps(predict(task, model, audio, annotations)))
        result = evaluate(task, preds, annotations).to_dict()
    return result


def detection_scores(model: Path, folder: Path) -> dict[str, Any]:
    """Detection scores of the artifact the model was exported to (the manifest beside
    ``model``; a SedNet checkpoint without one is exported first), through the device path."""
    from edge.offline import detect_recordings, recordings_in
    from training.detect import export_checkpoint, resolve_model, score_folders

    with tempfile.TemporaryDirectory(prefix="lungwatch-report-") as tmp:
        if model.suffix == ".onnx" or (model.parent / "manifest.json").is_file():
            where, file = resolve_model(model if model.suffix == ".onnx" else model.parent)
        else:
            where, file = export_checkpoint(model, Path(tmp))
        found = detect_recordings(recordings_in([folder]), where, file)
    scores = score_folders([folder], found)
    scores["artifact"] = str(where / file)
    return scores


def build_report(model: Path, detection: bool = True) -> dict[str, Any]:
    intra = sprsound_root() / "intra_test"
    report: dict[str, Any] = {"model": str(model)}
    from training.checkpoint import read_checkpoint

    # validation scores are stored in checkpoints (an exported model has its own manifest)
    report["validation"] = (
        None if model.suffix == ".onnx" else read_checkpoint(model).get("val_scores")
    )
    report["sprsound_intra_test"] = {
        t: challenge_scores(model, intra, intra, t) for t in CHALLENGE_TASKS
    }
    icbhi = icbhi_root() / "train"
    report["icbhi_cross_dataset"] = challenge_scores(model, icbhi, icbhi, "icbhi")
    if detection:
        report["detection_intra_test"] = detection_scores(model, intra)
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = ["| evaluation | SE | SP | AS | HS | Score |", "|---|---:|---:|---:|---:|---:|"]
    for task, result in report["sprsound_intra_test"].items():
        s = result["scores"]
        lines.append(
            f"| SPRSound intra_test Task {task} | {s['se']:.3f} | {s['sp']:.3f} | "
            f"{s['as']:.3f} | {s['hs']:.3f} | {s['score']:.3f} |"
        )
    s = report["icbhi_cross_dataset"]["scores"]
    lines.append(
        f"| ICBHI train, cross-dataset (Se/Sp) | {s['se']:.3f} | {s['sp']:.3f} | | | "
        f"{s['score']:.3f} |"
    )
    if "detection_intra_test" in report:
        s = report["detection_intra_test"]["summary"]
        lines.append(
            f"\nEvent detection on intra_test (device path, CAS/DAS families): precision "
            f"{s['event_precision_family']:.3f}, recall {s['event_recall_family']:.3f}, "
            f"F1 {s['event_f1_family']:.3f}; segment F1 {s['segment_f1_family']:.3f}; "
            f"{s['false_events_per_hour']:.1f} false events per hour on Normal records"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch report", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/edge/model.pt"))
    parser.add_argument("--out", type=Path, help="JSON report to write")
    parser.add_argument("--no-detection", action="store_true", help="skip event detection")
    parser.add_argument(
        "--summarise",
        nargs="+",
        type=Path,
        metavar="REPORT",
        help="print mean ± std over existing report JSONs instead",
    )
    args = parser.parse_args(argv)
    if args.summarise:
        print(summarise(args.summarise))
        return 0
    if args.out is None:
        parser.error("--out is required (or use --summarise)")
    report = build_report(args.model, detection=not args.no_detection)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return 0


def summarise(paths: list[Path]) -> str:
    """Mean ± std over several reports (e.g. seeds) of every challenge score."""
    import numpy as np

    reports = [json.loads(p.read_text()) for p in paths]
    rows = ["| evaluation | SE | SP | Score |", "|---|---:|---:|---:|"]
    sections = [
        (f"SPRSound intra_test Task {t}", ("sprsound_intra_test", t)) for t in CHALLENGE_TASKS
    ] + [("ICBHI train, cross-dataset", ("icbhi_cross_dataset",))]
    for title, keys in sections:
        cells = []
        for metric in ("se", "sp", "score"):
            values = np.array([_dig(r, keys)["scores"][metric] for r in reports])
            cells.append(
                f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0:.3f}"
            )
        rows.append(f"| {title} | " + " | ".join(cells) + " |")
    return f"{len(reports)} runs: " + ", ".join(str(p) for p in paths) + "\n\n" + "\n".join(rows)


def _dig(report: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    node: Any = report
    for key in keys:
        node = node[key]
    return dict(node)


if __name__ == "__main__":
    raise SystemExit(main())
