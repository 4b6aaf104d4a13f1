"""``lungwatch report --model CKPT``: every score of a model card, in one run.

Scores a trained checkpoint on:
- SPRSound ``intra_test``: Tasks 1-1, 1-2, 2-1, 2-2 (challenge formats, through
  ``predict`` and ``evaluate``: exactly what a challenge submission would get);
- ICBHI ``train`` recordings, cross-dataset (SPRSound classes mapped to ICBHI labels);
- event detection over whole ``intra_test`` recordings (event-based F1 per class).
Writes ``<out>.json`` and prints a Markdown table. The validation scores the epoch was
selected on are read from the checkpoint.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from edge.datapaths import icbhi_root, sprsound_root
from edge.labels import EVENT_LABELS, NORMAL
from firmware_bridge.cliparse import ArgumentParser
from training.detect import detect_events, score_track
from training.evaluate import evaluate
from training.inference import load_classifier
from training.metrics import Event, event_f1_recordings
from training.predict import predict

CHALLENGE_TASKS = ("1-1", "1-2", "2-1", "2-2")


def challenge_scores(model: Path, audio: Path, annotations: Path, task: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        preds = Path(tmp) / f"{task}.json"
        preds.write_text(json.dumps(predict(task, model, audio, annotations)))
        result = evaluate(task, preds, annotations).to_dict()
    return result


def detection_scores(model: Path, folder: Path) -> dict[str, Any]:
    """Event-based F1 of ``detect`` against the annotated adventitious events."""
    from training.datasets.sprsound import load_sprsound

    classifier = load_classifier(model)
    reference, estimated = {}, {}
    for record in load_sprsound(folder):
        reference[record.record_id] = [
            Event(e.start_ms / 1000, e.end_ms / 1000, e.type)
            for e in record.events
            if e.type != NORMAL
        ]
        estimated[record.record_id] = [
            Event(d.start_s, d.end_s, d.type)
            for d in detect_events(score_track(classifier, record.audio_path))
        ]
    classes = [c for c in EVENT_LABELS if c != NORMAL]
    scores = event_f1_recordings(reference, estimated, classes)
    return {
        "micro": scores.micro.__dict__,
        "macro": scores.macro.__dict__,
        "per_class": {k: v.__dict__ for k, v in scores.per_class.items()},
    }


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
        micro = report["detection_intra_test"]["micro"]
        lines.append(
            f"\nEvent detection on intra_test (micro): precision "
            f"{micro['precision']:.3f}, recall {micro['recall']:.3f}, "
            f"F1 {micro['f1']:.3f}"
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
