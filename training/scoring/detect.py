"""``lungwatch detect --score``: the device's events in recordings (:mod:`edge.runtime.detect`: each
recording one bed of the public streaming API, the manifest's fitted rules), scored. ``--score``
(folders of SPRSound recordings with their ``.json`` annotations) also prints detection scores,
threshold-free scores and operating points on the output frames the device's detector saw
(docs/metrics.md, "lungwatch detect --score"); ``--score-out FILE`` writes them as JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edge.bed.detector import DetectorConfig
from edge.bed.gate import POOR_SIGNAL
from edge.inference.manifest import MANIFEST_NAME, Manifest, load_manifest
from edge.runtime.detect import DetectConfig, write_json
from edge.runtime.detect import main as detect_main
from edge.runtime.offline import RecordingEvents
from lungwatch.errors import ConfigError
from lungwatch.labels import POOR_QUALITY


def score_folders(
    folders: list[Path],
    found: dict[str, RecordingEvents],
    model: tuple[Manifest, DetectorConfig | None],
) -> dict[str, Any]:
    """sed_eval scores of the device's events against the SPRSound annotations in ``folders``
    (each annotated record must have been run; unreadable ones are left out), technical-alarm
    shares and :func:`frame_scores` of ``model`` (manifest, run's detector section)."""
    from training.data.sprsound import load_sprsound, scoring_truth
    from training.scoring.detection import score_detection

    records = []
    for folder in folders:
        for record in load_sprsound(folder):
            if record.record_id not in found:
                raise ConfigError(f"{record.audio_path}: annotated but not run")
            if found[record.record_id].error is None:
                records.append(record)
    annotated, labels, durations = scoring_truth(records)
    if not annotated:
        raise ConfigError(f"no SPRSound annotations in {', '.join(map(str, folders))}")
    predicted = {
        r: [(e["start_s"], e["end_s"], e["type"]) for e in found[r].physiological]
        for r in annotated
    }
    report = score_detection(predicted, annotated, labels, durations)
    poor = {r for r in annotated if any(e["type"] == POOR_SIGNAL for e in found[r].technical)}
    good = [r for r in annotated if labels[r] != POOR_QUALITY]
    bad = [r for r in annotated if labels[r] == POOR_QUALITY]
    out = report.to_dict()
    out["family_table"] = report.family_table()
    out["poor_signal_on_good"] = sum(r in poor for r in good) / len(good) if good else None
    out["poor_signal_on_poor_quality"] = sum(r in poor for r in bad) / len(bad) if bad else None
    out["n_good"], out["n_poor_quality"] = len(good), len(bad)
    out.update(frame_scores(model, found, annotated, labels, durations))
    return out


def frame_scores(
    model: tuple[Manifest, DetectorConfig | None],
    found: dict[str, RecordingEvents],
    annotated: dict[str, list[tuple[float, float, str]]],
    labels: dict[str, str],
    durations: dict[str, float],
) -> dict[str, Any]:
    from edge.bed.chain import resolve_detector
    from training.recipe.fit import manifest_grid
    from training.scoring.threshold_free import as_dict, operating_points, threshold_free

    manifest, detector = model
    probs = {}
    for record in annotated:
        kept = found[record].probs
        if kept is None:
            raise ConfigError(f"{record}: no output frames kept")
        probs[record] = kept
    grid = manifest_grid(manifest)
    config = resolve_detector(detector or DetectorConfig(), manifest)
    outputs = manifest.outputs
    return {
        "threshold_free": as_dict(
            threshold_free(probs, annotated, durations, outputs, config, grid)
        ),
        "operating_points": operating_points(
            probs, annotated, labels, durations, outputs, config, grid
        ),
    }


def summary_line(scores: dict[str, Any]) -> str:
    s = scores["summary"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    return (
        f"event_f1_family={s['event_f1_family']:.3f} "
        f"(P {s['event_precision_family']:.3f} R {s['event_recall_family']:.3f}) "
        f"segment_f1_family={s['segment_f1_family']:.3f} "
        f"event_f1_4class={s['event_f1_4class']:.3f} "
        f"fa_per_hour={s['false_events_per_hour']:.1f} "
        f"normal_with_fa={s['normal_records_with_false_events']:.3f} "
        f"poor_good={fmt(scores['poor_signal_on_good'])} "
        f"poor_pq={fmt(scores['poor_signal_on_poor_quality'])}"
    )


def threshold_free_line(scores: dict[str, Any]) -> str:
    parts = []
    for name in ("phases", "frames"):
        if "family" in scores.get(name, {}):
            tf = scores[name]["family"]
            parts.append(
                f"{name}: psds1={tf['psds1']:.3f} psds2={tf['psds2']:.3f} "
                f"best_event_f1_family={tf['best_event_f1']:.3f}"
            )
    return "; ".join(parts) or "n/a (no annotated adventitious event in the records)"


def operating_lines(rows: list[dict[str, float]]) -> list[str]:
    out = ["operating points (every class's on-threshold):  on  event_f1  segment_f1  fa/h"]
    out += [
        f"  {r['threshold']:.1f}  {r['event_f1_family']:.3f}  {r['segment_f1_family']:.3f}  "
        f"{r['false_events_per_hour']:.1f}"
        for r in rows
    ]
    return out


def score(
    args: argparse.Namespace, config: DetectConfig, found: dict[str, RecordingEvents], folder: Path
) -> None:
    manifest = load_manifest(folder / MANIFEST_NAME)
    folders = [p for p in args.audio if p.is_dir()]
    scores = score_folders(folders, found, (manifest, config.detector))
    print(f"lungwatch detect: {summary_line(scores)}", file=sys.stderr)
    for row in scores["family_table"]:
        print(f"lungwatch detect: {row}", file=sys.stderr)
    if "threshold_free" in scores:
        line = threshold_free_line(scores["threshold_free"])
        print(f"lungwatch detect: threshold-free {line}", file=sys.stderr)
        for row in operating_lines(scores["operating_points"]):
            print(f"lungwatch detect: {row}", file=sys.stderr)
    if args.score_out is not None:
        write_json(args.score_out, scores)


def main(argv: list[str] | None = None) -> int:
    return detect_main(argv, scorer=score)


if __name__ == "__main__":
    raise SystemExit(main())
