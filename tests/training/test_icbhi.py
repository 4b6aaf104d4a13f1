"""Tests of the ICBHI 2017 loader: cycle files, the official split file, the data set itself."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge.audio import read_audio
from edge.datapaths import icbhi_root
from lungwatch.errors import AnnotationError
from training.data.icbhi import (
    ICBHI_LABELS,
    SPLIT_NAME_CORRECTIONS,
    IcbhiCycle,
    IcbhiRecording,
    load_icbhi,
    parse_recording_name,
    patients_in_both_halves,
    read_cycles,
    read_official_split,
)

RECORDING_ID = "107_2b3_Al_mc_AKGC417L"
SPLIT_FILE = "ICBHI_challenge_train_test.txt"


def _write_recording(folder: Path, recording_id: str, lines: str, *, audio: bool = True) -> Path:
    path = folder / f"{recording_id}.txt"
    path.write_text(lines)
    if audio:
        sf.write(folder / f"{recording_id}.flac", np.zeros(400, dtype=np.int16), 4000)
    return path


# --- cycle files --------------------------------------------------------------------------


def test_cycle_labels() -> None:
    labels = [
        IcbhiCycle(0.0, 1.0, crackles, wheezes).label
        for crackles, wheezes in ((False, False), (True, False), (False, True), (True, True))
    ]
    assert tuple(labels) == ICBHI_LABELS


def test_load_recording_parses_name_and_cycles(tmp_path: Path) -> None:
    _write_recording(
        tmp_path, RECORDING_ID, "0.036\t0.579\t0\t0\n0.579 2.45 1 0\r\n\n2.45\t3.9\t1\t1\n"
    )
    (recording,) = load_icbhi(tmp_path)
    assert recording == IcbhiRecording(
        recording_id=RECORDING_ID,
        audio_path=tmp_path / f"{RECORDING_ID}.flac",
        patient_id="107",
        recording_index="2b3",
        chest_location="Al",
        acquisition_mode="mc",
        device="AKGC417L",
        cycles=(
            IcbhiCycle(0.036, 0.579, False, False),
            IcbhiCycle(0.579, 2.45, True, False),
            IcbhiCycle(2.45, 3.9, True, True),
        ),
    )
    assert [c.label for c in recording.cycles] == ["normal", "crackle", "both"]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("1.0\t2.0\t0", "expected 4 fields"),
        ("1.0\t2.0\t0\t0\t0", "expected 4 fields"),
        ("1.0\tabc\t0\t0", "end 'abc' is not a number"),
        ("nan\t2.0\t0\t0", "start must be a finite"),
        ("-1.0\t2.0\t0\t0", "start must be a finite non-negative"),
        ("1.0\t2.0\t2\t0", "crackles flag must be 0 or 1, got '2'"),
        ("1.0\t2.0\t0\tyes", "wheezes flag must be 0 or 1"),
        ("2.0\t2.0\t0\t0", r"end \(2.0 s\) must be after start"),
        ("3.0\t2.0\t0\t0", "must be after start"),
    ],
)
def test_malformed_cycle_line_names_file_and_line(
    tmp_path: Path, bad_line: str, message: str
) -> None:
    path = _write_recording(tmp_path, RECORDING_ID, f"0.0\t1.0\t0\t0\n\n{bad_line}\n", audio=False)
    with pytest.raises(AnnotationError, match=message) as caught:
        read_cycles(path)
    assert str(caught.value).startswith(f"{path}:3: ")


def test_empty_cycle_file_and_missing_audio_raise(tmp_path: Path) -> None:
    path = _write_recording(tmp_path, RECORDING_ID, "\n\n", audio=False)
    with pytest.raises(AnnotationError, match="no respiratory cycles"):
        read_cycles(path)
    path.write_text("0.0\t1.0\t0\t0\n")
    with pytest.raises(AnnotationError, match=rf"{RECORDING_ID}\.txt: no audio file"):
        load_icbhi(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_icbhi(tmp_path / "nope")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("107_2b3_Al_mc", "should have 5"),
        ("x07_2b3_Al_mc_AKGC417L", "must be digits"),
        ("107_2b3_Zz_mc_AKGC417L", "chest location 'Zz'"),
        ("107_2b3_Al_xx_AKGC417L", "acquisition mode 'xx'"),
        ("107_2b3_Al_mc_iPhone", "device 'iPhone'"),
    ],
)
def test_bad_recording_names_raise(name: str, message: str) -> None:
    with pytest.raises(AnnotationError, match=rf"here\.txt: .*{message}"):
        parse_recording_name(name, "here.txt")


# --- the official split file --------------------------------------------------------------


def test_split_handles_crlf_and_wrong_device_name(tmp_path: Path) -> None:
    ((wrong_name, right_name),) = SPLIT_NAME_CORRECTIONS.items()
    path = tmp_path / SPLIT_FILE
    lines = [f"{RECORDING_ID}\ttrain", "156_1b1_Al_sc_Meditron\ttest", f"{wrong_name}\ttrain", ""]
    path.write_bytes("\r\n".join(lines).encode())
    split = read_official_split(path)
    assert split == {RECORDING_ID: "train", "156_1b1_Al_sc_Meditron": "test", right_name: "train"}
    assert patients_in_both_halves(split) == set()
    assert patients_in_both_halves({**split, "156_2b1_Al_sc_Meditron": "train"}) == {"156"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (f"{RECORDING_ID}\ttrain\n{RECORDING_ID}\ttest\n", r":3: .* already listed at line 2"),
        (f"{RECORDING_ID}\tTrain\n", "half must be one of"),
        (f"{RECORDING_ID}\n", "expected '<recording id> <train|test>'"),
        (f"{RECORDING_ID} train extra\n", "expected '<recording id> <train|test>'"),
    ],
)
def test_malformed_split_file_raises(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / SPLIT_FILE
    path.write_text("101_1b1_Al_sc_Meditron\ttest\n" + content)
    with pytest.raises(AnnotationError, match=message) as caught:
        read_official_split(path)
    assert str(caught.value).startswith(f"{path}:")


# --- the real data set --------------------------------------------------------------------


@pytest.fixture(scope="module")
def icbhi_dir() -> Path:
    root = icbhi_root()
    if not root.is_dir():
        pytest.skip(f"ICBHI data not found at {root} (set LUNGWATCH_DATA_DIR)")
    return root


@pytest.fixture(scope="module")
def recordings(icbhi_dir: Path) -> list[IcbhiRecording]:
    return load_icbhi(icbhi_dir / "train")


@pytest.fixture(scope="module")
def official_split(icbhi_dir: Path) -> dict[str, str]:
    return read_official_split(icbhi_dir / "annotations" / SPLIT_FILE)


@pytest.mark.requires_data
def test_train_folder_counts(recordings: list[IcbhiRecording]) -> None:
    assert len(recordings) == 92
    ids = [r.recording_id for r in recordings]
    assert ids == sorted(ids)
    labels = {c.label for r in recordings for c in r.cycles}
    assert labels == set(ICBHI_LABELS)


@pytest.mark.requires_data
def test_all_920_annotation_files_parse(icbhi_dir: Path, official_split: dict[str, str]) -> None:
    paths = sorted((icbhi_dir / "annotations" / "audio_and_txt_files").glob("*.txt"))
    assert len(paths) == 920
    for path in paths:
        cycles = read_cycles(path)
        assert all(a.start_s <= b.start_s for a, b in itertools.pairwise(cycles)), path
    assert {p.stem for p in paths} == set(official_split)


@pytest.mark.requires_data
def test_official_split_counts_and_overlap(official_split: dict[str, str]) -> None:
    halves = list(official_split.values())
    assert (halves.count("train"), halves.count("test")) == (539, 381)
    assert patients_in_both_halves(official_split) == {"156", "218"}


@pytest.mark.requires_data
def test_train_folder_is_official_train(
    recordings: list[IcbhiRecording], official_split: dict[str, str]
) -> None:
    assert {official_split[r.recording_id] for r in recordings} == {"train"}
    assert "226_1b1_Pl_sc_LittC2SE" in {r.recording_id for r in recordings}


@pytest.mark.requires_data
def test_every_audio_file_opens_and_lead_in_is_silent(recordings: list[IcbhiRecording]) -> None:
    rates = set()
    for recording in recordings:
        info = sf.info(str(recording.audio_path))
        assert info.channels == 1, recording.recording_id
        assert recording.cycles[-1].end_s <= info.duration + 1e-3, recording.recording_id
        rates.add(info.samplerate)
    assert rates <= {4000, 10000, 44100}
    for recording in recordings[::3]:
        decoded = read_audio(recording.audio_path)
        lead_in = decoded.samples[: int(recording.cycles[0].start_s * decoded.sample_rate_hz)]
        assert not np.any(lead_in), recording.recording_id
        assert np.abs(decoded.samples).max() > 0.0, recording.recording_id
