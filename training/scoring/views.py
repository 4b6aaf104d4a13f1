"""``lungwatch views``: a model judged on the three views, through the device path.

Every recording runs as one bed of the public streaming API (:mod:`edge.runtime.offline`).
The views, their scores and the output: docs/metrics.md ("``lungwatch views``").
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from edge.bed.gate import POOR_SIGNAL
from edge.datapaths import data_root
from edge.monitor import resolve_model
from edge.runtime.detect import write_json
from edge.runtime.offline import RecordingEvents, detect_recordings
from lungwatch.cli import ArgumentParser
from lungwatch.labels import FAMILY_CLASSES, ICBHI_LABELS, icbhi_label, record_label_from_families
from training.data.icbhi import IcbhiCycle, IcbhiRecording, load_icbhi
from training.data.sprsound import SprRecord, load_sprsound, patient_disjoint_split, scoring_truth
from training.scoring.challenge import sprsound_scores
from training.scoring.detection import DetectionReport, score_detection

VIEWS = ("validation", "intra_test", "icbhi")
CRACKLE, WHEEZE = FAMILY_CLASSES["DAS"], FAMILY_CLASSES["CAS"]
NOTHING_SAID = {"crackle": False, "wheeze": False}  # a cycle not assessed counts as normal


def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def validation_split(model_dir: Path) -> tuple[Path, float, int]:
    from edge.datapaths import sprsound_root
    from training.models.checkpoint import load_checkpoint
    from training.recipe.config import DataConfig

    data, default = load_checkpoint(model_dir / "model.pt").run.get("data", {}), DataConfig()
    folder = Path(data["train_dir"]) if data.get("train_dir") else sprsound_root() / "train"
    fraction = float(data.get("val_fraction", default.val_fraction))
    return folder, fraction, int(data.get("split_seed", default.split_seed))


def validation_records(model_dir: Path) -> list[SprRecord]:
    """The validation split of the run that made ``model_dir``'s checkpoint."""
    folder, fraction, seed = validation_split(model_dir)
    return patient_disjoint_split(load_sprsound(folder), fraction, seed)[1]


def icbhi_training_patients(model_dir: Path) -> set[str]:
    """ICBHI patients the checkpoint trained on: its own list, else (older ones) its run's share."""
    from lungwatch.config import from_mapping
    from training.data.icbhi import training_share
    from training.models.checkpoint import load_checkpoint
    from training.recipe.config import RunConfig

    ckpt = load_checkpoint(model_dir / "model.pt")
    if ckpt.icbhi_patients is not None:
        return set(ckpt.icbhi_patients)
    run = from_mapping(RunConfig, ckpt.run, source="model.pt")
    return training_share(run.data.icbhi_dir, run.data.icbhi_fraction, run.data.icbhi_seed)[1]


def sprsound_view(records: Sequence[SprRecord], found: Mapping[str, RecordingEvents]) -> dict:
    annotated, labels, durations = scoring_truth(records)
    predicted = {
        r: [(e["start_s"], e["end_s"], e["type"]) for e in found[r].physiological]
        for r in annotated
    }
    out = _report(score_detection(predicted, annotated, labels, durations))
    poor = {r for r in annotated if any(e["type"] == POOR_SIGNAL for e in found[r].technical)}
    good = [r for r in annotated if labels[r] != "Poor Quality"]
    bad = [r for r in annotated if labels[r] == "Poor Quality"]
    out["poor_signal_on_good"] = sum(r in poor for r in good) / max(1, len(good))
    out["poor_signal_on_poor_quality"] = sum(r in poor for r in bad) / max(1, len(bad))
    verdicts = [found[r].verdict for r in annotated]
    if all(v is not None for v in verdicts):  # the model has Task rules: its rolling verdicts
        scores = sprsound_scores([labels[r] for r in annotated], [str(v) for v in verdicts])
        out |= {"task_2_2": scores.score, "task_2_2_se": scores.se, "task_2_2_sp": scores.sp}
    return out


def _report(report: DetectionReport) -> dict[str, Any]:
    return {**report.summary(), "family_table": report.family_table()}


def icbhi_view(recordings: Sequence[IcbhiRecording], found: Mapping[str, RecordingEvents]) -> dict:
    counts = dict.fromkeys(ICBHI_LABELS, 0)
    correct = dict.fromkeys(ICBHI_LABELS, 0)
    family = {"crackle": [0, 0, 0, 0], "wheeze": [0, 0, 0, 0]}  # tp, fn, fp, tn
    poor_time = total_time = 0.0
    unassessed = cycles = 0
    for rec, poor, judged in _judged_cycles(recordings, found):
        end = max(c.end_s for c in rec.cycles)
        total_time += end
        poor_time += sum(overlap(e["start_s"], e["end_s"], 0.0, end) for e in poor)
        for c, said in judged:
            cycles += 1
            unassessed += said is None
            said = said or NOTHING_SAID
            counts[c.label] += 1
            correct[c.label] += _verdict(said) == c.label
            for name, real in (("crackle", c.crackles), ("wheeze", c.wheezes)):
                family[name][2 * int(not real) + int(not said[name])] += 1
    abnormal = sum(counts[k] for k in ICBHI_LABELS[1:])
    se = sum(correct[k] for k in ICBHI_LABELS[1:]) / max(1, abnormal)
    sp = correct["normal"] / max(1, counts["normal"])
    out: dict[str, Any] = {"cycles": counts, "icbhi_se": se, "icbhi_sp": sp,
                           "icbhi_score": (se + sp) / 2}  # fmt: skip
    for name, (tp, fn, fp, tn) in family.items():
        out[f"cycle_se_{name}"] = tp / max(1, tp + fn)
        out[f"cycle_sp_{name}"] = tn / max(1, tn + fp)
    out["poor_time"] = poor_time / max(1e-9, total_time)
    out["unassessed"] = unassessed / max(1, cycles)
    out.update(_report(_icbhi_events(recordings, found)))
    return out


def _judged_cycles(
    recordings: Sequence[IcbhiRecording], found: Mapping[str, RecordingEvents]
) -> Iterator[tuple[IcbhiRecording, list[dict[str, Any]], list[tuple[IcbhiCycle, Any]]]]:
    """Each recording, its ``poor_signal`` events and every cycle with :func:`_said` of it."""
    for rec in recordings:
        events = found[rec.recording_id].physiological
        poor = [e for e in found[rec.recording_id].technical if e["type"] == POOR_SIGNAL]
        yield rec, poor, [(c, _said(c, events, poor)) for c in rec.cycles]


def _said(
    c: IcbhiCycle, events: Sequence[Mapping[str, Any]], poor: Sequence[Mapping[str, Any]]
) -> dict[str, bool] | None:
    """Which families the events overlapping cycle ``c`` name; None when more than half of
    it lies under ``poor_signal`` (not assessed)."""
    covered = sum(overlap(c.start_s, c.end_s, e["start_s"], e["end_s"]) for e in poor)
    if covered > 0.5 * (c.end_s - c.start_s):
        return None
    near = [e["type"] for e in events if overlap(c.start_s, c.end_s, e["start_s"], e["end_s"])]
    return {"crackle": any(t in CRACKLE for t in near), "wheeze": any(t in WHEEZE for t in near)}


def _verdict(said: Mapping[str, bool]) -> str:
    return icbhi_label(said["crackle"], said["wheeze"])


def cycle_verdicts(
    recordings: Sequence[IcbhiRecording], found: Mapping[str, RecordingEvents]
) -> list[tuple[str, str, str]]:
    """``(patient, annotated label, verdict)`` for every cycle (not assessed: normal)."""
    return [
        (rec.patient_id, c.label, _verdict(said or NOTHING_SAID))
        for rec, _, judged in _judged_cycles(recordings, found)
        for c, said in judged
    ]


def _icbhi_events(
    recordings: Sequence[IcbhiRecording], found: Mapping[str, RecordingEvents]
) -> DetectionReport:
    """Per-family event scores with each cycle with crackles (wheezes) a DAS (CAS) event."""
    annotated, labels, durations, predicted = {}, {}, {}, {}
    for rec in recordings:
        annotated[rec.recording_id] = [
            (c.start_s, c.end_s, t)
            for c in rec.cycles
            for t, on in (("Normal", True), ("Fine Crackle", c.crackles), ("Wheeze", c.wheezes))
            if on
        ]
        wheezes = any(c.wheezes for c in rec.cycles)
        crackles = any(c.crackles for c in rec.cycles)
        labels[rec.recording_id] = record_label_from_families(wheezes, crackles)
        durations[rec.recording_id] = max(c.end_s for c in rec.cycles)
        predicted[rec.recording_id] = [
            (e["start_s"], e["end_s"], e["type"]) for e in found[rec.recording_id].physiological
        ]
    return score_detection(predicted, annotated, labels, durations)


def run_views(model: Path, views: Sequence[str], exclude: set[str]) -> dict[str, Any]:
    folder, file = resolve_model(model)
    out: dict[str, Any] = {"model": str(folder / file)}
    for view in views:
        if view == "icbhi":
            held = exclude | icbhi_training_patients(folder)  # never a training patient
            recs = [r for r in load_icbhi(data_root() / "icbhi" / "train")
                    if r.patient_id not in held]  # fmt: skip
            out[view] = {"recordings": len(recs), "patients_left_out": sorted(held)}
            if not recs:  # a model trained on every ICBHI patient has no held-out ICBHI view
                out[view]["note"] = "every ICBHI recording is of a patient left out: no view"
                continue
            found = detect_recordings({r.recording_id: r.audio_path for r in recs}, folder, file)
            out[view] |= icbhi_view(recs, found)
            continue
        records = (
            validation_records(folder)
            if view == "validation"
            else load_sprsound(data_root() / "sprsound" / "intra_test")
        )
        found = detect_recordings({r.record_id: r.audio_path for r in records}, folder, file)
        out[view] = sprsound_view(records, found)
    return out


HEADLINE = ("macro_f1", "f1_cas", "f1_das", "fa_per_hour_cas", "fa_per_hour_das",
            "se_cas", "sp_cas", "se_das", "sp_das", "poor_signal_on_good", "task_2_2",
            "icbhi_score", "icbhi_se", "icbhi_sp", "poor_time")  # fmt: skip


def headline(result: Mapping[str, Any]) -> str:
    return " ".join(
        f"{view}.{key}={result[view][key]:.3f}"
        for view in VIEWS
        for key in HEADLINE
        if key in result.get(view, {})
    )


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch views", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="model folder or an artifact")
    parser.add_argument(
        "--views", default=",".join(VIEWS), help="comma-separated, of " + ", ".join(VIEWS)
    )
    parser.add_argument(
        "--icbhi-exclude-patients", type=Path, help="file of patient ids, one a line"
    )
    parser.add_argument("--out", type=Path, help="every score as JSON here")
    args = parser.parse_args(argv)
    views = parser.names("--views", args.views, VIEWS)
    exclude = set()
    if args.icbhi_exclude_patients is not None:
        exclude = set(args.icbhi_exclude_patients.read_text().split())
    result = run_views(args.model, views, exclude)
    for view in views:
        print(f"[{view}]")
        if "note" in result[view]:
            print(f"  {result[view]['note']} ({len(result[view]['patients_left_out'])} patients)")
        for row in result[view].get("family_table", []):
            print(f"  {row}")
    if args.out is not None:
        write_json(args.out, result)
    print(headline(result))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
