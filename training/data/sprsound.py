"""SPRSound (SJTU Paediatric Respiratory Sound Database, BioCAS 2022) loader. A split folder
(``train/``, ``intra_test/``, ``wav_quirks/``) holds ``<rec>.json`` beside each ``<rec>.flac`` (or
``.wav``), named ``<patient>_<age years>_<gender 0=M,1=F>_<location p1..p4>_<recording no>``.
``start``/``end`` are milliseconds as strings (integers accepted); ``recording_annotation`` (the
dataset's README) is an alias of ``record_annotation``::

    {"record_annotation": "DAS",
     "event_annotation": [{"start": "342", "end": "2515", "type": "Fine Crackle"}, ...]}

Events keep the file's order, in which the challenge tasks score them; it is out of time order in
about 40% of the training records: sort by ``start_ms`` to walk the timeline."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.audio import AUDIO_SUFFIXES, read_audio
from lungwatch.errors import AnnotationError
from lungwatch.labels import EVENT_LABELS, RECORD_LABELS
from training.data.annotated import annotation_files, audio_twin

LOCATIONS: tuple[str, ...] = ("p1", "p2", "p3", "p4")
GENDER_BY_CODE: dict[str, str] = {"0": "M", "1": "F"}

ANNOTATION_SUFFIX = ".json"
RECORD_KEY = "record_annotation"
RECORD_KEY_ALIAS = "recording_annotation"
EVENTS_KEY = "event_annotation"
EVENT_FIELDS: tuple[str, ...] = ("start", "end", "type")
N_NAME_FIELDS = 5


@dataclass(frozen=True)
class SprEvent:
    """One annotated respiratory event; times in milliseconds from the recording start."""

    start_ms: int
    end_ms: int
    type: str


@dataclass(frozen=True)
class SprRecord:
    record_id: str
    audio_path: Path
    annotation_path: Path
    patient_id: str
    age_years: float
    gender: str
    location: str
    record_label: str
    events: tuple[SprEvent, ...]

    @property
    def events_s(self) -> list[tuple[float, float, str]]:
        return [(e.start_ms / 1000, e.end_ms / 1000, e.type) for e in self.events]


def scoring_truth(
    records: Sequence[SprRecord],
) -> tuple[dict[str, list[tuple[float, float, str]]], dict[str, str], dict[str, float]]:
    """Per record: its events in seconds, its record label and its audio's duration (s)."""
    annotated = {r.record_id: r.events_s for r in records}
    labels = {r.record_id: r.record_label for r in records}
    return annotated, labels, {r.record_id: read_audio(r.audio_path).duration_s for r in records}


def load_sprsound(split_dir: str | Path) -> list[SprRecord]:
    """Every record of a split folder, sorted by ``record_id``; FileNotFoundError if none."""
    folder = Path(split_dir)
    annotation_paths = annotation_files(folder, ANNOTATION_SUFFIX, "SPRSound split")
    _check_no_orphan_audio(folder, {p.stem for p in annotation_paths})
    records = [_load_record(path) for path in annotation_paths]
    return sorted(records, key=lambda record: record.record_id)


def _check_no_orphan_audio(folder: Path, annotated_ids: set[str]) -> None:
    for suffix in AUDIO_SUFFIXES:
        for audio_path in sorted(folder.glob(f"*{suffix}")):
            if audio_path.stem not in annotated_ids:
                raise AnnotationError(f"{audio_path}: audio file has no {ANNOTATION_SUFFIX} twin")


def _load_record(annotation_path: Path) -> SprRecord:
    record_id = annotation_path.stem
    fields = parse_record_name(record_id, str(annotation_path))  # patient, age, gender, location
    record_label, events = read_annotation(annotation_path)
    audio = audio_twin(annotation_path)
    return SprRecord(record_id, audio, annotation_path, *fields, record_label, events)


def parse_record_name(record_id: str, where: str) -> tuple[str, float, str, str]:
    fields = record_id.split("_")
    if len(fields) != N_NAME_FIELDS:
        raise AnnotationError(
            f"{where}: file name {record_id!r} should have {N_NAME_FIELDS} '_'-separated "
            "fields <patient>_<age>_<gender>_<location>_<recording no>"
        )
    patient_id, age_text, gender_code, location, recording_no = fields
    if not patient_id.isdigit() or not recording_no.isdigit():
        raise AnnotationError(f"{where}: patient and recording numbers must be digits")
    try:
        age_years = float(age_text)
    except ValueError:
        raise AnnotationError(f"{where}: age {age_text!r} is not a number") from None
    if not 0.0 <= age_years < float("inf"):
        raise AnnotationError(f"{where}: age {age_text!r} must be a non-negative number")
    if gender_code not in GENDER_BY_CODE:
        raise AnnotationError(f"{where}: gender code {gender_code!r} must be 0 (M) or 1 (F)")
    if location not in LOCATIONS:
        raise AnnotationError(f"{where}: location {location!r} must be one of {LOCATIONS}")
    return patient_id, age_years, GENDER_BY_CODE[gender_code], location


def read_annotation(path: str | Path) -> tuple[str, tuple[SprEvent, ...]]:
    file_path = Path(path)
    document = _read_json(file_path)
    if not isinstance(document, dict):
        raise AnnotationError(f"{file_path}: top level must be a JSON object")
    record_label = _record_label(document, file_path)
    raw_events = document.get(EVENTS_KEY)
    if not isinstance(raw_events, list):
        raise AnnotationError(f"{file_path}: {EVENTS_KEY!r} must be a list")
    events = [_parse_event(raw, index, file_path) for index, raw in enumerate(raw_events)]
    return record_label, tuple(events)


def _read_json(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: cannot read annotation: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            f"{path}:{exc.lineno}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None


def _record_label(document: dict, path: Path) -> str:
    present = [key for key in (RECORD_KEY, RECORD_KEY_ALIAS) if key in document]
    if not present:
        raise AnnotationError(f"{path}: missing {RECORD_KEY!r} (or {RECORD_KEY_ALIAS!r})")
    values = [document[key] for key in present]
    if not all(isinstance(value, str) for value in values) or len(set(values)) != 1:
        raise AnnotationError(f"{path}: {' and '.join(present)} must be one label, got {values!r}")
    label = values[0]
    if label not in RECORD_LABELS:
        raise AnnotationError(f"{path}: record label {label!r} is not one of {RECORD_LABELS}")
    return label


def _parse_event(raw: object, index: int, path: Path) -> SprEvent:
    where = f"{path}: {EVENTS_KEY}[{index}]"
    if not isinstance(raw, dict):
        raise AnnotationError(f"{where}: must be an object, got {type(raw).__name__}")
    missing = [field for field in EVENT_FIELDS if field not in raw]
    if missing:
        raise AnnotationError(f"{where}: missing field(s) {missing}")
    start_ms = _parse_ms(raw["start"], f"{where}.start")
    end_ms = _parse_ms(raw["end"], f"{where}.end")
    if end_ms <= start_ms:
        raise AnnotationError(f"{where}: end ({end_ms} ms) must be after start ({start_ms} ms)")
    event_type = raw["type"]
    if event_type not in EVENT_LABELS:
        raise AnnotationError(f"{where}: type {event_type!r} is not one of {EVENT_LABELS}")
    return SprEvent(start_ms=start_ms, end_ms=end_ms, type=event_type)


def _parse_ms(value: object, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        milliseconds = value
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        milliseconds = int(value.strip())
    else:
        raise AnnotationError(f"{where}: expected integer milliseconds, got {value!r}")
    if milliseconds < 0:
        raise AnnotationError(f"{where}: must be non-negative, got {milliseconds}")
    return milliseconds


def patient_ids(records: Iterable[SprRecord]) -> set[str]:
    return {record.patient_id for record in records}


def patient_disjoint_split(
    records: Sequence[SprRecord], val_fraction: float, seed: int
) -> tuple[list[SprRecord], list[SprRecord]]:
    """``(train, val)`` with no patient in both, each non-empty, sorted by ``record_id``; roughly
    stratified by record label and deterministic: patients, shuffled with ``seed``, go to val if
    that brings its per-label record counts closer to ``val_fraction`` of each label's total."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    by_patient: dict[str, list[SprRecord]] = defaultdict(list)
    for record in records:
        by_patient[record.patient_id].append(record)
    patients = sorted(by_patient)
    if len(patients) < 2:
        raise ValueError(f"need records of at least 2 patients to split, got {len(patients)}")
    counts = _label_counts(patients, by_patient)
    target = val_fraction * counts.sum(axis=0)
    val_counts = np.zeros_like(target)
    val_patients: set[str] = set()
    for index in np.random.default_rng(seed).permutation(len(patients)):
        candidate = val_counts + counts[index]
        if np.sum((candidate - target) ** 2) < np.sum((val_counts - target) ** 2):
            val_counts = candidate
            val_patients.add(patients[int(index)])
    _ensure_both_sides(val_patients, patients)
    train = [r for r in records if r.patient_id not in val_patients]
    val = [r for r in records if r.patient_id in val_patients]
    return sorted(train, key=lambda r: r.record_id), sorted(val, key=lambda r: r.record_id)


def _label_counts(patients: list[str], by_patient: dict[str, list[SprRecord]]) -> np.ndarray:
    labels = sorted({r.record_label for group in by_patient.values() for r in group})
    column = {label: index for index, label in enumerate(labels)}
    counts = np.zeros((len(patients), len(labels)))
    for row, patient in enumerate(patients):
        for record in by_patient[patient]:
            counts[row, column[record.record_label]] += 1
    return counts


def _ensure_both_sides(val_patients: set[str], all_patients: list[str]) -> None:
    if not val_patients:
        val_patients.add(all_patients[0])
    elif len(val_patients) == len(all_patients):
        val_patients.discard(all_patients[0])
