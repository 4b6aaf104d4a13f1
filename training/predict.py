"""``lungwatch predict``: challenge-format predictions from a trained model.

    lungwatch predict --task 1-2 --audio DIR --annotations DIR --model best.pt --out preds.json

- Task 1-1 / 1-2: one label per annotated event of each SPRSound annotation file, in file
  order (the event boundaries come from the annotation): ``{"<record>": ["Normal", ...]}``.
- Task 2-1 / 2-2: one label per record from sliding windows over the whole recording:
  ``{"<record>": "CAS & DAS"}`` (rule: :func:`record_decision`, thresholds fitted on the
  validation split by ``lungwatch calibrate`` when the checkpoint has them).
- ``icbhi``: one label per cycle of each ICBHI ``.txt`` file, in order. A model trained on
  SPRSound classes is mapped to ICBHI labels through ``edge.labels`` (cross-dataset).

``--model`` is a frame-level streaming model (the default, ``models/sed/model.int8.onnx``; a
model folder, an artifact its manifest lists, or a SedNet checkpoint) or a window classifier
(``models/edge/model.pt`` and its exports). A frame-level model answers every task from the
output frames the device computes (:mod:`training.sed_tasks`: each recording as one bed
through the device path; Task 1 pools the frames of each annotated span, Task 2 reads the
whole record's frames and the quality output) with the rules fitted on validation and stored
in its manifest (``tasks``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.audio import AUDIO_SUFFIXES, audio_file
from edge.errors import LungwatchError
from edge.labels import (
    DETECTED_CLASSES,
    EVENT_LABELS,
    ICBHI_LABELS,
    POOR_QUALITY,
    record_label_2_1,
    record_label_from_families,
    sound_class,
    to_binary,
    to_icbhi,
)
from firmware_bridge.cliparse import ArgumentParser
from training.datasets.icbhi import IcbhiRecording, parse_recording_name, read_cycles
from training.datasets.sprsound import SprRecord, parse_record_name, read_annotation
from training.inference import WindowClassifier, load_classifier, window_probabilities
from training.windows import event_windows, icbhi_cycle_windows, sliding_windows

TASKS = ("1-1", "1-2", "2-1", "2-2", "icbhi")
ANY_LABEL = (*EVENT_LABELS, POOR_QUALITY)  # window labels are not used for prediction
POOR_QUALITY_THRESHOLD = 0.5  # mean window probability of Poor Quality
FAMILY_THRESHOLD = 0.5  # top-window probability of a family (CAS or DAS) to call it present
TOP_WINDOWS = 3  # a family's record score: mean of its highest window probabilities


class PredictionError(LungwatchError):
    """Inputs that cannot be predicted on (missing audio, a model without the classes)."""


def find_audio(audio_dir: Path, name: str) -> Path:
    found = audio_file(audio_dir, name)
    if found is not None:
        return found
    raise PredictionError(f"{audio_dir}: no audio for {name} ({' or '.join(AUDIO_SUFFIXES)})")


def sprsound_records(audio_dir: Path, annotations: Path) -> list[SprRecord]:
    """Records from annotation JSONs, with audio from another folder."""
    records = []
    for path in sorted(annotations.glob("*.json")):
        label, events = read_annotation(path)
        patient, age, gender, location = parse_record_name(path.stem, str(path))
        records.append(
            SprRecord(
                path.stem,
                find_audio(audio_dir, path.stem),
                path,
                patient,
                age,
                gender,
                location,
                label,
                events,
            )
        )
    if not records:
        raise PredictionError(f"{annotations}: no SPRSound .json annotation files")
    return records


def event_indices(classifier: WindowClassifier, vocabulary: tuple[str, ...]) -> np.ndarray:
    """Indices of the model classes that belong to ``vocabulary`` (argmax is taken there)."""
    idx = np.array([i for i, c in enumerate(classifier.classes) if c in vocabulary])
    if idx.size == 0:
        raise PredictionError(
            f"{classifier.source}: model classes {classifier.classes} hold none of {vocabulary}"
        )
    return idx


def predict_events(
    classifier: WindowClassifier, records: list[SprRecord], task: str
) -> dict[str, list[str]]:
    spec, store = classifier.spec, classifier.store()
    windows = (
        event_windows(
            records,
            ANY_LABEL,
            classifier.window_frames,
            spec.hop_samples,
            spec.sample_rate_hz,
            frame_samples=spec.frame_samples,
        )
        if _has_events(records)
        else []
    )
    probs = window_probabilities(classifier, store, windows) if windows else np.zeros((0, 1))
    idx = event_indices(classifier, EVENT_LABELS)
    out: dict[str, list[str]] = {r.record_id: [] for r in records}
    for window, p in zip(windows, probs, strict=True):
        label = classifier.classes[idx[np.argmax(p[idx])]]
        out[window.recording_id].append(to_binary(label) if task == "1-1" else label)
    return out


def _has_events(records: list[SprRecord]) -> bool:
    return any(r.events for r in records)


@dataclass(frozen=True)
class RecordThresholds:
    """Task 2 decision thresholds on a record's statistics (see :func:`record_statistics`).

    Defaults are the uncalibrated ones; ``lungwatch calibrate`` fits them on the run's
    patient-disjoint validation split and stores them in the checkpoint.
    """

    poor_quality: float = POOR_QUALITY_THRESHOLD
    cas: float = FAMILY_THRESHOLD
    das: float = FAMILY_THRESHOLD

    @classmethod
    def of(cls, classifier: WindowClassifier) -> RecordThresholds:
        stored = classifier.meta.get("record_thresholds")
        return cls(**stored) if stored else cls()


def record_statistics(classes: tuple[str, ...], probs: np.ndarray) -> np.ndarray:
    """(3,) statistics of one record's window probabilities (n_windows, classes):
    mean Poor Quality probability, and for CAS and DAS the mean of the ``TOP_WINDOWS``
    highest window probabilities of that family (its classes summed; Wheeze+Crackle counts
    for both)."""
    pq = probs[:, classes.index(POOR_QUALITY)].mean() if POOR_QUALITY in classes else 0.0
    families = [sound_class(c).family if c in EVENT_LABELS else "" for c in classes]
    stats = [float(pq)]
    for family in ("CAS", "DAS"):
        score = probs[:, [i for i, f in enumerate(families) if family in f]].sum(axis=1)
        stats.append(float(np.sort(score)[-TOP_WINDOWS:].mean()))
    return np.array(stats)


def record_decision(stats: np.ndarray, thresholds: RecordThresholds) -> str:
    """Task 2-2 label from :func:`record_statistics`."""
    if stats[0] > thresholds.poor_quality:
        return POOR_QUALITY
    return record_label_from_families(
        bool(stats[1] > thresholds.cas), bool(stats[2] > thresholds.das)
    )


def record_window_stats(classifier: WindowClassifier, records: list[SprRecord]) -> np.ndarray:
    """(n_records, 3) :func:`record_statistics` from windows every quarter window."""
    spec, store = classifier.spec, classifier.store()
    rows = []
    for record in records:
        unlabelled = dataclasses.replace(record, record_label="Normal", events=())
        windows = sliding_windows(
            [unlabelled],
            ANY_LABEL,
            classifier.window_frames,
            max(1, classifier.window_frames // 4),
            n_frames_of=store.n_frames,
            frame_samples=spec.frame_samples,
            hop_samples=spec.hop_samples,
            sample_rate_hz=spec.sample_rate_hz,
        )
        probs = window_probabilities(classifier, store, windows)
        rows.append(record_statistics(classifier.classes, probs))
    return np.array(rows).reshape(len(rows), 3)


def predict_records(
    classifier: WindowClassifier, records: list[SprRecord], task: str
) -> dict[str, str]:
    thresholds = RecordThresholds.of(classifier)
    stats = record_window_stats(classifier, records)
    out = {}
    for record, row in zip(records, stats, strict=True):
        label = record_decision(row, thresholds)
        out[record.record_id] = record_label_2_1(label) if task == "2-1" else label
    return out


def icbhi_recordings(audio_dir: Path, annotations: Path) -> list[IcbhiRecording]:
    """The ICBHI recordings of ``annotations`` (cycle files), with audio from ``audio_dir``."""
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


def predict_icbhi(
    classifier: WindowClassifier, audio_dir: Path, annotations: Path
) -> dict[str, list[str]]:
    recordings = icbhi_recordings(audio_dir, annotations)
    spec, store = classifier.spec, classifier.store()
    native = set(classifier.classes) <= set(ICBHI_LABELS)
    windows = icbhi_cycle_windows(
        recordings,
        ICBHI_LABELS,
        classifier.window_frames,
        frame_samples=spec.frame_samples,
        hop_samples=spec.hop_samples,
        sample_rate_hz=spec.sample_rate_hz,
    )
    probs = window_probabilities(classifier, store, windows)
    idx = event_indices(classifier, ICBHI_LABELS if native else EVENT_LABELS)
    out: dict[str, list[str]] = {r.recording_id: [] for r in recordings}
    for window, p in zip(windows, probs, strict=True):
        label = classifier.classes[idx[np.argmax(p[idx])]]
        out[window.recording_id].append(label if native else to_icbhi(label))
    return out


def _is_streaming(model: Path) -> bool:
    """True for a frame-level streaming model: a SedNet checkpoint, or a folder / artifact
    whose manifest says schema version 2."""
    if model.suffix == ".pt":
        from export.streaming_model import StreamingModelError, load_checkpoint

        try:
            load_checkpoint(model)
        except StreamingModelError:
            return False
        return True
    folder = model if model.is_dir() else model.parent
    try:
        data = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("schema_version") == 2


def predict_streaming(
    task: str, model: Path, audio_dir: Path, annotations: Path
) -> dict[str, object]:
    """Every task from a frame-level model's device outputs (module doc)."""
    import sys
    import tempfile

    from training.detect import export_checkpoint, resolve_model
    from training.sed_tasks import (
        TaskRules,
        device_outputs,
        event_labels,
        record_label,
        rules_of_manifest,
    )

    with tempfile.TemporaryDirectory(prefix="lungwatch-predict-") as tmp:
        if model.suffix == ".pt":
            model_dir, model_file = export_checkpoint(model, Path(tmp))
            beside = model.parent / "manifest.json"
            rules = rules_of_manifest(model.parent) if beside.is_file() else None
        else:
            model_dir, model_file = resolve_model(model)
            rules = rules_of_manifest(model_dir)
        if rules is None:
            print(
                f"lungwatch predict: {model} has no fitted task rules (python -m "
                "training.sed_tasks --model ...): thresholds 0.5 apply",
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


def predict(task: str, model: Path, audio_dir: Path, annotations: Path) -> dict[str, object]:
    if not model.exists():
        raise PredictionError(f"{model}: no such model file or folder")
    if _is_streaming(model):
        return predict_streaming(task, model, audio_dir, annotations)
    classifier = load_classifier(model)
    if task == "icbhi":
        return dict(predict_icbhi(classifier, audio_dir, annotations))
    records = sprsound_records(audio_dir, annotations)
    if task in ("1-1", "1-2"):
        return dict(predict_events(classifier, records, task))
    return dict(predict_records(classifier, records, task))


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch predict", description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=TASKS)
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
        help="frame-level model (folder, .onnx its manifest lists, SedNet .pt) or a window "
        "classifier's checkpoint / export",
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
