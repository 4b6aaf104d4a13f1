"""ICBHI 2017 Respiratory Sound Database loader. A recording is ``<rec>.flac`` (or ``.wav``) with
``<rec>.txt`` beside it, one line per cycle: ``start_s end_s crackles(0/1) wheezes(0/1)``; named
``<patient>_<recording index>_<chest location>_<acquisition mode sc/mc>_<device>``. Patient ids stay
strings (``"101"``..``"226"``), as in the SPRSound loader, so patient code serves both."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungwatch.errors import AnnotationError
from lungwatch.labels import (
    ICBHI_LABELS as ICBHI_LABELS,  # re-exported; the table is lungwatch.labels
)
from lungwatch.labels import icbhi_label
from training.data.annotated import annotation_files, audio_twin

CHEST_LOCATIONS: dict[str, str] = {
    "Tc": "trachea",
    "Al": "anterior left",
    "Ar": "anterior right",
    "Pl": "posterior left",
    "Pr": "posterior right",
    "Ll": "lateral left",
    "Lr": "lateral right",
}
ACQUISITION_MODES: dict[str, str] = {
    "sc": "sequential/single channel",
    "mc": "simultaneous/multichannel",
}
DEVICES: dict[str, str] = {
    "AKGC417L": "AKG C417L microphone",
    "LittC2SE": "3M Littmann Classic II SE stethoscope",
    "Litt3200": "3M Littmann 3200 electronic stethoscope",
    "Meditron": "WelchAllyn Meditron Master Elite electronic stethoscope",
}
SPLIT_HALVES: tuple[str, ...] = ("train", "test")
# the official split file's name of a recording -> the name of its audio and annotation files
SPLIT_NAME_CORRECTIONS: dict[str, str] = {"226_1b1_Pl_sc_Meditron": "226_1b1_Pl_sc_LittC2SE"}

ANNOTATION_SUFFIX = ".txt"
N_NAME_FIELDS = 5
N_CYCLE_FIELDS = 4
N_SPLIT_FIELDS = 2
FLAG_VALUES: dict[str, bool] = {"0": False, "1": True}


@dataclass(frozen=True)
class IcbhiCycle:
    """One annotated respiratory cycle; times in seconds from the recording start."""

    start_s: float
    end_s: float
    crackles: bool
    wheezes: bool

    @property
    def label(self) -> str:
        return icbhi_label(self.crackles, self.wheezes)


@dataclass(frozen=True)
class IcbhiRecording:
    """One ICBHI recording, its metadata (from the file name) and its cycles (time order)."""

    recording_id: str
    audio_path: Path
    patient_id: str
    recording_index: str
    chest_location: str
    acquisition_mode: str
    device: str
    cycles: tuple[IcbhiCycle, ...]


def load_icbhi(train_dir: str | Path) -> list[IcbhiRecording]:
    """Every recording of a folder, sorted by ``recording_id``; FileNotFoundError if none."""
    paths = annotation_files(Path(train_dir), ANNOTATION_SUFFIX, "ICBHI")
    return [_load_recording(path) for path in paths]


def _load_recording(txt_path: Path) -> IcbhiRecording:
    fields = parse_recording_name(txt_path.stem, str(txt_path))  # patient ... device, in order
    return IcbhiRecording(txt_path.stem, audio_twin(txt_path), *fields, read_cycles(txt_path))


def parse_recording_name(recording_id: str, where: str) -> tuple[str, str, str, str, str]:
    fields = recording_id.split("_")
    if len(fields) != N_NAME_FIELDS:
        raise AnnotationError(
            f"{where}: recording name {recording_id!r} should have {N_NAME_FIELDS} '_'-separated "
            "fields <patient>_<index>_<location>_<mode>_<device>"
        )
    patient_id, index, location, mode, device = fields
    if not patient_id.isdigit():
        raise AnnotationError(f"{where}: patient {patient_id!r} must be digits")
    if location not in CHEST_LOCATIONS:
        raise AnnotationError(
            f"{where}: chest location {location!r} not in {list(CHEST_LOCATIONS)}"
        )
    if mode not in ACQUISITION_MODES:
        raise AnnotationError(
            f"{where}: acquisition mode {mode!r} not in {list(ACQUISITION_MODES)}"
        )
    if device not in DEVICES:
        raise AnnotationError(f"{where}: device {device!r} not in {list(DEVICES)}")
    return patient_id, index, location, mode, device


def read_cycles(txt_path: str | Path) -> tuple[IcbhiCycle, ...]:
    """The cycles of a cycle file, in file order (the official files are in time order)."""
    path = Path(txt_path)
    lines = _read_lines(path)
    cycles = [
        _parse_cycle(line, f"{path}:{number}")
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]
    if not cycles:
        raise AnnotationError(f"{path}: no respiratory cycles")
    return tuple(cycles)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: cannot read annotation: {exc}") from exc


def _parse_cycle(line: str, where: str) -> IcbhiCycle:
    fields = line.split()
    if len(fields) != N_CYCLE_FIELDS:
        raise AnnotationError(
            f"{where}: expected {N_CYCLE_FIELDS} fields 'start_s end_s crackles wheezes', "
            f"got {len(fields)}: {line.strip()!r}"
        )
    start_s = _parse_seconds(fields[0], "start", where)
    end_s = _parse_seconds(fields[1], "end", where)
    if end_s <= start_s:
        raise AnnotationError(f"{where}: end ({end_s} s) must be after start ({start_s} s)")
    crackles = _parse_flag(fields[2], "crackles", where)
    wheezes = _parse_flag(fields[3], "wheezes", where)
    return IcbhiCycle(start_s=start_s, end_s=end_s, crackles=crackles, wheezes=wheezes)


def _parse_seconds(text: str, name: str, where: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise AnnotationError(f"{where}: {name} {text!r} is not a number") from None
    if not math.isfinite(seconds) or seconds < 0.0:
        raise AnnotationError(f"{where}: {name} must be a finite non-negative time, got {text!r}")
    return seconds


def _parse_flag(text: str, name: str, where: str) -> bool:
    if text not in FLAG_VALUES:
        raise AnnotationError(f"{where}: {name} flag must be 0 or 1, got {text!r}")
    return FLAG_VALUES[text]


def read_official_split(path: str | Path) -> dict[str, str]:
    """``ICBHI_challenge_train_test.txt``: recording id -> ``"train"``/``"test"``. Not
    patient-disjoint (:func:`patients_in_both_halves`); one name with the wrong device; CRLF
    line ends (a reader without universal newlines matches no half)."""
    file_path = Path(path)
    split: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, line in enumerate(_read_lines(file_path), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{file_path}:{number}"
        if len(fields) != N_SPLIT_FIELDS:
            raise AnnotationError(f"{where}: expected '<recording id> <train|test>', got {line!r}")
        recording_id = SPLIT_NAME_CORRECTIONS.get(fields[0], fields[0])
        half = fields[1]
        if half not in SPLIT_HALVES:
            raise AnnotationError(f"{where}: half must be one of {SPLIT_HALVES}, got {half!r}")
        if recording_id in split:
            raise AnnotationError(
                f"{where}: {recording_id} already listed at line {first_line[recording_id]}"
            )
        split[recording_id] = half
        first_line[recording_id] = number
    return split


def patients_in_both_halves(split: Mapping[str, str]) -> set[str]:
    """Patients with recordings in both halves of a split (``{"156", "218"}`` officially)."""
    halves_by_patient: dict[str, set[str]] = {}
    for recording_id, half in split.items():
        halves_by_patient.setdefault(recording_id.split("_", 1)[0], set()).add(half)
    return {patient for patient, halves in halves_by_patient.items() if len(halves) > 1}


def training_patients(recordings: Sequence[IcbhiRecording], fraction: float, seed: int) -> set[str]:
    """Patients that train (``fraction`` of them, by ``seed``); the rest serve the ICBHI view."""
    patients = sorted({r.patient_id for r in recordings})
    count = round(fraction * len(patients))
    order = np.random.default_rng(seed).permutation(len(patients))
    return {patients[int(i)] for i in order[:count]}


def training_share(
    folder: str, fraction: float, seed: int
) -> tuple[list[IcbhiRecording], set[str]]:
    """ICBHI's recordings in ``folder`` and their patients that train; ``fraction`` 0: none."""
    from edge.datapaths import data_root

    if fraction <= 0:
        return [], set()
    recordings = load_icbhi(Path(folder) if folder else data_root() / "icbhi" / "train")
    return recordings, training_patients(recordings, fraction, seed)
