"""``lungwatch predict``: challenge-format predictions from a trained model.

The output formats: docs/metrics.md. ``--model`` is a model folder or an artifact its
manifest lists. Every task is answered from the output frames the device computes, with the
rules fitted on validation and stored in the manifest's ``tasks`` (:mod:`training.scoring.tasks`;
docs/training.md, "tasks and predict").
"""

from __future__ import annotations

import json
from pathlib import Path

from edge.audio import AUDIO_SUFFIXES, audio_file
from lungwatch.cli import ArgumentParser
from lungwatch.errors import LungwatchError
from lungwatch.labels import DETECTED_CLASSES, record_label_2_1, to_binary, to_icbhi
from training.data.icbhi import IcbhiRecording, parse_recording_name, read_cycles
from training.data.sprsound import SprRecord, parse_record_name, read_annotation

TASKS = ("1-1", "1-2", "2-1", "2-2", "icbhi")


class PredictionError(LungwatchError):
    """Inputs that cannot be predicted on (missing audio, a model without the classes)."""


def find_audio(audio_dir: Path, name: str) -> Path:
    found = audio_file(audio_dir, name)
    if found is not None:
        return found
    raise PredictionError(f"{audio_dir}: no audio for {name} ({' or '.join(AUDIO_SUFFIXES)})")


def sprsound_records(audio_dir: Path, annotations: Path) -> list[SprRecord]:
    records = []
    for path in sorted(annotations.glob("*.json")):
        label, events = read_annotation(path)
        fields = parse_record_name(path.stem, str(path))  # patient, age, gender, location
        audio = find_audio(audio_dir, path.stem)
        records.append(SprRecord(path.stem, audio, path, *fields, label, events))
    if not records:
        raise PredictionError(f"{annotations}: no SPRSound .json annotation files")
    return records


def icbhi_recordings(audio_dir: Path, annotations: Path) -> list[IcbhiRecording]:
    recordings = []
    for path in sorted(annotations.glob("*.txt")):
        try:
            fields = parse_recording_name(path.stem, str(path))
        except LungwatchError:
            continue  # the split file, demographics and other non-recording .txt files
        recordings.append(
            IcbhiRecording(
                path.stem, find_audio(audio_dir, path.stem), *fields, cycles=read_cycles(path)
            )
        )
    return recordings


def predict(task: str, model: Path, audio_dir: Path, annotations: Path) -> dict[str, object]:
    import sys

    from edge.monitor import resolve_model
    from training.scoring.tasks import (
        TaskRules,
        device_outputs,
        event_labels,
        record_label,
        rules_of_manifest,
    )

    if not model.exists():
        raise PredictionError(f"{model}: no such model file or folder")
    model_dir, model_file = resolve_model(model)
    rules = rules_of_manifest(model_dir)
    if rules is None:
        print(
            f"lungwatch predict: {model} has no fitted task rules (lungwatch tasks --model "
            f"{model}): thresholds 0.5 apply",
            file=sys.stderr,
        )
        rules = TaskRules(dict.fromkeys(DETECTED_CLASSES, 0.5))
    if task == "icbhi":
        cycles = icbhi_recordings(audio_dir, annotations)
        audio = {r.recording_id: r.audio_path for r in cycles}
    else:
        records = sprsound_records(audio_dir, annotations)
        audio = {r.record_id: r.audio_path for r in records}
    device = device_outputs(audio, model_dir, model_file)
    out: dict[str, object] = {}
    if task == "icbhi":
        for rec in cycles:
            spans = [(c.start_s, c.end_s) for c in rec.cycles]
            labels = event_labels(
                device.probs[rec.recording_id], spans, device.outputs, device.grid, rules
            )
            out[rec.recording_id] = [to_icbhi(label) for label in labels]
        return out
    for record in records:
        probs = device.probs[record.record_id]
        if task in ("1-1", "1-2"):
            spans = [(e.start_ms / 1000.0, e.end_ms / 1000.0) for e in record.events]
            labels = event_labels(probs, spans, device.outputs, device.grid, rules)
            out[record.record_id] = [to_binary(x) if task == "1-1" else x for x in labels]
        else:
            label = record_label(probs, device.outputs, rules)
            out[record.record_id] = record_label_2_1(label) if task == "2-1" else label
    return out


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch predict", description=__doc__)
    parser.add_argument(
        "--task", required=True, choices=TASKS, help="the challenge task to predict"
    )
    parser.add_argument("--audio", required=True, type=Path, help="folder of .wav/.flac files")
    parser.add_argument(
        "--annotations",
        required=True,
        type=Path,
        help="folder of SPRSound .json or ICBHI .txt annotation files",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=Path("models/sed/model.int8.onnx"),
        help="model folder or an .onnx its manifest lists",
    )
    parser.add_argument("--out", required=True, type=Path, help="predictions JSON to write")
    args = parser.parse_args(argv)
    preds = predict(args.task, args.model, args.audio, args.annotations)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(preds, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(preds)} {'recordings' if args.task == 'icbhi' else 'records'} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
