"""Tests of the SPRSound loader: annotation parsing, errors, the data set itself, splitting."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge.audio import read_audio
from edge.datapaths import sprsound_root
from lungwatch.errors import AnnotationError
from training.data.sprsound import (
    EVENT_LABELS,
    RECORD_LABELS,
    SprEvent,
    SprRecord,
    load_sprsound,
    parse_record_name,
    patient_disjoint_split,
    patient_ids,
    read_annotation,
)

RECORD_ID = "65101170_0.4_1_p3_3246"
RATE_HZ = 8000
DECODE_EVERY = 40  # fully decode every 40th data file; headers of all are read


def _write_record(folder: Path, record_id: str, annotation: object, *, audio: bool = True) -> Path:
    """A JSON annotation (object or raw text) and, optionally, a short FLAC beside it."""
    path = folder / f"{record_id}.json"
    text = annotation if isinstance(annotation, str) else json.dumps(annotation, indent=2)
    path.write_text(text)
    if audio:
        sf.write(folder / f"{record_id}.flac", np.zeros(80, dtype=np.int16), RATE_HZ)
    return path


def by_time(record: SprRecord) -> tuple[SprEvent, ...]:
    """The record's events in time order (the file's order is kept in ``record.events``)."""
    return tuple(sorted(record.events, key=lambda e: (e.start_ms, e.end_ms)))


def _events(*spans: tuple[object, object, str]) -> list[dict[str, object]]:
    return [{"start": start, "end": end, "type": kind} for start, end, kind in spans]


# --- parsing ------------------------------------------------------------------------------


def test_loads_record_with_string_and_int_times_in_file_order(tmp_path: Path) -> None:
    annotation = {
        "record_annotation": "CAS & DAS",
        "event_annotation": _events(
            ("3210", "4859", "Wheeze"), (236, 1900, "Fine Crackle"), (" 5000 ", "5100", "Normal")
        ),
    }
    _write_record(tmp_path, RECORD_ID, annotation)
    (record,) = load_sprsound(tmp_path)
    assert record == SprRecord(
        record_id=RECORD_ID,
        audio_path=tmp_path / f"{RECORD_ID}.flac",
        annotation_path=tmp_path / f"{RECORD_ID}.json",
        patient_id="65101170",
        age_years=0.4,
        gender="F",
        location="p3",
        record_label="CAS & DAS",
        events=(
            SprEvent(3210, 4859, "Wheeze"),
            SprEvent(236, 1900, "Fine Crackle"),
            SprEvent(5000, 5100, "Normal"),
        ),
    )
    assert [e.start_ms for e in by_time(record)] == [236, 3210, 5000]


def test_recording_annotation_alias_and_wav_audio(tmp_path: Path) -> None:
    path = _write_record(
        tmp_path, RECORD_ID, {"recording_annotation": "Normal", "event_annotation": []}, audio=False
    )
    sf.write(path.with_suffix(".wav"), np.zeros(10, dtype=np.int16), RATE_HZ)
    (record,) = load_sprsound(tmp_path)
    assert record.record_label == "Normal"
    assert record.events == ()
    assert record.audio_path.suffix == ".wav"


def test_conflicting_record_keys_raise(tmp_path: Path) -> None:
    annotation = {"record_annotation": "CAS", "recording_annotation": "DAS", "event_annotation": []}
    path = _write_record(tmp_path, RECORD_ID, annotation)
    with pytest.raises(AnnotationError, match="must be one label"):
        read_annotation(path)


def test_json_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    text = '{\n  "record_annotation": "Normal",\n  "event_annotation": [\n    {"start": "1",,}\n]}'
    _write_record(tmp_path, RECORD_ID, text)
    with pytest.raises(AnnotationError, match=rf"{RECORD_ID}\.json:4: invalid JSON at line 4"):
        load_sprsound(tmp_path)


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"start": "500", "end": "400", "type": "Normal"}, r"end \(400 ms\) must be after"),
        ({"start": "500", "end": "500", "type": "Normal"}, "must be after"),
        ({"start": "-5", "end": "400", "type": "Normal"}, "must be non-negative"),
        ({"start": "1.5", "end": "400", "type": "Normal"}, "expected integer milliseconds"),
        ({"start": True, "end": 400, "type": "Normal"}, "expected integer milliseconds"),
        ({"start": "1", "end": "400", "type": "Crackle"}, "type 'Crackle' is not one of"),
        ({"start": "1", "type": "Normal"}, r"missing field\(s\) \['end'\]"),
        (["1", "400", "Normal"], "must be an object"),
    ],
)
def test_bad_event_names_file_and_index(tmp_path: Path, event: object, message: str) -> None:
    events = [*_events(("0", "100", "Normal")), event]
    path = _write_record(
        tmp_path, RECORD_ID, {"record_annotation": "DAS", "event_annotation": events}
    )
    with pytest.raises(AnnotationError, match=message) as caught:
        read_annotation(path)
    assert str(caught.value).startswith(f"{path}: event_annotation[1]")


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        ([], "top level must be a JSON object"),
        ({"event_annotation": []}, "missing 'record_annotation'"),
        ({"record_annotation": "Abnormal", "event_annotation": []}, "'Abnormal' is not one of"),
        ({"record_annotation": "Normal"}, "'event_annotation' must be a list"),
    ],
)
def test_bad_record_fields_raise(tmp_path: Path, annotation: object, message: str) -> None:
    path = _write_record(tmp_path, RECORD_ID, annotation)
    with pytest.raises(AnnotationError, match=message) as caught:
        read_annotation(path)
    assert str(caught.value).startswith(str(path))


@pytest.mark.parametrize(
    ("record_id", "message"),
    [
        ("65101170_0.4_1_p3", "should have 5"),
        ("65101170_old_1_p3_1", "age 'old' is not a number"),
        ("65101170_0.4_2_p3_1", "gender code '2'"),
        ("65101170_0.4_1_p5_1", "location 'p5'"),
        ("abc_0.4_1_p3_1", "must be digits"),
    ],
)
def test_bad_record_names_raise(record_id: str, message: str) -> None:
    with pytest.raises(AnnotationError, match=rf"where\.json: .*{message}"):
        parse_record_name(record_id, "where.json")


def test_missing_audio_and_orphan_audio_raise(tmp_path: Path) -> None:
    _write_record(
        tmp_path, RECORD_ID, {"record_annotation": "Normal", "event_annotation": []}, audio=False
    )
    with pytest.raises(AnnotationError, match=rf"{RECORD_ID}\.json: no audio file"):
        load_sprsound(tmp_path)
    (tmp_path / f"{RECORD_ID}.json").unlink()
    _write_record(tmp_path, "1_1_0_p1_1", {"record_annotation": "Normal", "event_annotation": []})
    sf.write(tmp_path / f"{RECORD_ID}.flac", np.zeros(10, dtype=np.int16), RATE_HZ)
    with pytest.raises(AnnotationError, match=rf"{RECORD_ID}\.flac: audio file has no \.json"):
        load_sprsound(tmp_path)


def test_missing_or_empty_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_sprsound(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"no \.json"):
        load_sprsound(tmp_path)


# --- splitting ----------------------------------------------------------------------------


def _fake_records(n_patients: int, seed: int) -> list[SprRecord]:
    rng = np.random.default_rng(seed)
    records = []
    for patient in range(n_patients):
        for number in range(int(rng.integers(1, 9))):
            label = RECORD_LABELS[int(rng.integers(len(RECORD_LABELS)))]
            record_id = f"{1000 + patient}_5.0_0_p1_{patient * 10 + number}"
            path = Path(f"{record_id}.json")
            records.append(
                SprRecord(record_id, path, path, str(1000 + patient), 5.0, "M", "p1", label, ())
            )
    return records


def test_split_is_patient_disjoint_complete_and_deterministic() -> None:
    records = _fake_records(60, seed=3)
    train, val = patient_disjoint_split(records, 0.25, seed=7)
    assert not patient_ids(train) & patient_ids(val)
    assert sorted(r.record_id for r in train + val) == sorted(r.record_id for r in records)
    assert len(val) / len(records) == pytest.approx(0.25, abs=0.05)
    assert [r.record_id for r in train] == sorted(r.record_id for r in train)
    again = patient_disjoint_split(list(reversed(records)), 0.25, seed=7)
    assert again == (train, val)
    other = patient_disjoint_split(records, 0.25, seed=8)
    assert patient_ids(other[1]) != patient_ids(val)


def test_split_edge_cases() -> None:
    two = _fake_records(2, seed=0)
    train, val = patient_disjoint_split(two, 0.01, seed=0)
    assert train
    assert val
    with pytest.raises(ValueError, match="at least 2 patients"):
        patient_disjoint_split([r for r in two if r.patient_id == "1000"], 0.2, seed=0)
    for fraction in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="val_fraction"):
            patient_disjoint_split(two, fraction, seed=0)


# --- the real data set --------------------------------------------------------------------


@pytest.fixture(scope="module")
def spr_root() -> Path:
    root = sprsound_root()
    if not root.is_dir():
        pytest.skip(f"SPRSound data not found at {root} (set LUNGWATCH_DATA_DIR)")
    return root


@pytest.fixture(scope="module")
def spr_train(spr_root: Path) -> list[SprRecord]:
    return load_sprsound(spr_root / "train")


@pytest.mark.requires_data
def test_train_counts(spr_train: list[SprRecord]) -> None:
    assert len(spr_train) == 1949
    assert len(patient_ids(spr_train)) == 251
    assert {r.record_label for r in spr_train} == set(RECORD_LABELS)
    assert {e.type for r in spr_train for e in r.events} == set(EVENT_LABELS)
    out_of_order = 0
    for record in spr_train:
        timeline = by_time(record)
        out_of_order += timeline != record.events
        assert all(a.end_ms <= b.start_ms for a, b in itertools.pairwise(timeline))
    assert out_of_order == 851  # files list events out of time order; file order is kept


@pytest.mark.requires_data
def test_intra_test_counts_and_patients_in_train(
    spr_root: Path, spr_train: list[SprRecord]
) -> None:
    intra = load_sprsound(spr_root / "intra_test")
    assert len(intra) == 379
    assert len(patient_ids(intra)) == 162
    assert patient_ids(intra) <= patient_ids(spr_train)
    assert not {r.record_id for r in intra} & {r.record_id for r in spr_train}


@pytest.mark.requires_data
def test_wav_quirks_load_with_annotations_of_train(
    spr_root: Path, spr_train: list[SprRecord]
) -> None:
    quirks = load_sprsound(spr_root / "wav_quirks")
    assert len(quirks) == 12
    by_id = {r.record_id: r for r in spr_train}
    for record in quirks:
        assert record.audio_path.suffix == ".wav"
        assert record.events == by_id[record.record_id].events
        assert record.record_label == by_id[record.record_id].record_label


@pytest.mark.requires_data
def test_every_audio_file_opens(spr_root: Path) -> None:
    paths = sorted(p for p in spr_root.rglob("*") if p.suffix in {".flac", ".wav"})
    assert len(paths) == 1949 + 379 + 12
    for path in paths:
        info = sf.info(str(path))
        assert (info.samplerate, info.channels) == (RATE_HZ, 1), path
        assert info.frames > 0, path
    for path in paths[::DECODE_EVERY]:
        decoded = read_audio(path)
        assert decoded.n_samples == sf.info(str(path)).frames
        assert np.abs(decoded.samples).max() > 0.0, path


@pytest.mark.requires_data
def test_events_lie_within_audio(spr_train: list[SprRecord]) -> None:
    for record in spr_train[::DECODE_EVERY]:
        duration_ms = 1000.0 * sf.info(str(record.audio_path)).duration
        assert all(e.end_ms <= duration_ms for e in record.events), record.record_id


@pytest.mark.requires_data
def test_real_split_is_patient_disjoint_and_stratified(spr_train: list[SprRecord]) -> None:
    train, val = patient_disjoint_split(spr_train, 0.2, seed=0)
    assert not patient_ids(train) & patient_ids(val)
    assert len(train) + len(val) == len(spr_train)
    assert len(val) / len(spr_train) == pytest.approx(0.2, abs=0.03)
    totals = Counter(r.record_label for r in spr_train)
    in_val = Counter(r.record_label for r in val)
    for label in RECORD_LABELS:
        assert in_val[label] / totals[label] == pytest.approx(0.2, abs=0.12), label
    assert patient_disjoint_split(spr_train, 0.2, seed=0) == (train, val)
