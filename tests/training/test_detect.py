"""``lungwatch detect --audio``: the device's events for whole recordings, as JSON.

The events must be exactly those ``lungwatch run`` publishes for the same audio (the tiny
streaming model folder, real SPRSound recordings), whatever the model is given as: its ONNX
file, its folder, or the checkpoint it came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from edge.runtime.offline import OfflineError, recordings_in
from tests.edge.runtime_helpers import (
    CRACKLES,
    MIXED,
    WHEEZES,
    build,
    config_mapping,
    record_path,
    run_collecting,
    stream,
)
from tests.edge.test_runtime_streaming import rules
from tests.streaming_fixture import tiny_streaming_folder
from training.scoring.detect import main as detect_main

RECORDS = (WHEEZES, MIXED, CRACKLES)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    quality = {"poor_on": 0.999, "poor_off": 0.99}  # out of reach of the random model
    return tiny_streaming_folder(tmp_path_factory.mktemp("tiny"), rules("Wheeze"), quality)


@pytest.fixture
def audio_dir(tmp_path: Path) -> Path:
    """Three annotated SPRSound records (links to the audio and its annotation)."""
    out = tmp_path / "audio"
    out.mkdir()
    for record in RECORDS:
        for suffix in (".flac", ".json"):
            source = record_path(record, suffix)
            (out / source.name).symlink_to(source)
    return out


def runtime_events(tmp_path: Path, folder: Path, audio: Path) -> list[tuple[float, float, str]]:
    mapping = config_mapping(
        tmp_path,
        [stream("b1", audio, realtime=False, chunk_samples=800)],
        model={"dir": str(folder), "file": "model.onnx"},
    )
    _, sink = run_collecting(build(mapping))
    return [
        (e.start_sample / 8000, e.end_sample / 8000, e.type)
        for e in sink.events
        if e.kind == "physiological" and e.state == "ended"
    ]


def detected(path: Path) -> dict[str, list[tuple[float, float, str]]]:
    data = json.loads(path.read_text())
    return {r: [(e["start_s"], e["end_s"], e["type"]) for e in evs] for r, evs in data.items()}


def test_detect_writes_what_the_runtime_publishes(tmp_path, folder, audio_dir):
    out = tmp_path / "events.json"
    assert detect_main(["--audio", str(audio_dir), "--model", str(folder / "model.onnx"),
                        "--out", str(out)]) == 0  # fmt: skip
    data = json.loads(out.read_text())
    assert sorted(data) == sorted(Path(r).name for r in RECORDS)
    for record in RECORDS:
        name = Path(record).name
        events = data[name]
        assert events, f"{name}: the manifest's rules make Wheeze always on"
        for event in events:
            assert set(event) == {"start_s", "end_s", "type", "confidence"}
            assert event["type"] == "Wheeze"
            assert 0.0 <= event["confidence"] <= 1.0
        expected = runtime_events(tmp_path, folder, audio_dir / f"{name}.flac")
        assert detected(out)[name] == [(round(s, 4), round(e, 4), t) for s, e, t in expected]


def test_a_folder_runs_the_onnx_file_it_lists(tmp_path, folder, audio_dir):
    outs = {}
    for how, model in (
        ("onnx", folder / "model.onnx"),
        ("folder", folder),  # lists model.onnx only: that file runs
    ):
        outs[how] = tmp_path / f"{how}.json"
        assert detect_main(["--audio", str(audio_dir), "--model", str(model),
                            "--out", str(outs[how])]) == 0  # fmt: skip
    assert detected(outs["onnx"]) == detected(outs["folder"])


def test_a_checkpoint_is_refused_with_the_command_that_exports_it(folder, audio_dir):
    from lungwatch.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model\.pt: a training checkpoint; export it first"):
        detect_main(["--audio", str(audio_dir), "--model", str(folder / "model.pt")])


def test_score_and_technical_events(tmp_path, folder, audio_dir, capsys):
    tech = tmp_path / "technical.json"
    assert detect_main(["--audio", str(audio_dir), "--model", str(folder), "--score",
                        "--technical", str(tech)]) == 0  # fmt: skip
    captured = capsys.readouterr()
    events = json.loads(captured.out)  # no --out: the events on standard output
    assert sorted(events) == sorted(Path(r).name for r in RECORDS)
    assert sorted(json.loads(tech.read_text())) == sorted(events)
    line = next(x for x in captured.err.splitlines() if "event_f1_family=" in x)
    # none of the three records is labelled Normal, none Poor Quality: no false-alarm rate
    for part in ("fa_per_hour=0.0 ", "poor_pq=n/a", "poor_good=0.000"):
        assert part in line


def test_bad_inputs_are_named(tmp_path, folder, audio_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OfflineError, match="no audio files"):
        recordings_in([empty])
    with pytest.raises(OfflineError, match="no such file"):
        recordings_in([tmp_path / "nope.flac"])
    other = tmp_path / "other"
    other.mkdir()
    twin = other / f"{Path(WHEEZES).name}.flac"
    twin.symlink_to(record_path(WHEEZES))
    with pytest.raises(OfflineError, match="two recordings named"):
        recordings_in([audio_dir, other])
    from edge.inference.manifest import ManifestError
    from lungwatch.errors import ConfigError

    with pytest.raises(ConfigError, match="no such model"):
        detect_main(["--audio", str(audio_dir), "--model", str(folder / "missing.onnx")])
    stray = folder / "stray.onnx"
    stray.write_bytes(b"")
    try:
        with pytest.raises(ConfigError, match=r"stray\.onnx: not a model listed"):
            detect_main(["--audio", str(audio_dir), "--model", str(stray)])
    finally:
        stray.unlink()
    with pytest.raises(ManifestError, match=r"manifest\.json: manifest not found"):
        detect_main(["--audio", str(audio_dir), "--model", str(empty)])


def test_an_unreadable_recording_is_named_and_the_others_still_run(
    tmp_path, folder, audio_dir, capsys
):
    (audio_dir / "99000001_5.0_1_p1_1.flac").write_bytes(b"fLaC but not really")
    (audio_dir / "99000002_5.0_1_p1_1.wav").write_bytes(b"")
    for name in ("99000001_5.0_1_p1_1", "99000002_5.0_1_p1_1"):  # annotated, for --score
        note = {"record_annotation": "Normal", "event_annotation": []}
        (audio_dir / f"{name}.json").write_text(json.dumps(note))
    out = tmp_path / "events.json"
    assert detect_main(["--audio", str(audio_dir), "--model", str(folder),
                        "--out", str(out), "--score"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    # the readable records' events are written as if the others were not there
    alone = tmp_path / "alone.json"
    for name in (
        "99000001_5.0_1_p1_1.flac",
        "99000002_5.0_1_p1_1.wav",
        "99000001_5.0_1_p1_1.json",
        "99000002_5.0_1_p1_1.json",
    ):
        (audio_dir / name).unlink()
    assert (
        detect_main(["--audio", str(audio_dir), "--model", str(folder), "--out", str(alone)]) == 0
    )
    assert detected(out) == detected(alone)
    assert sorted(detected(out)) == sorted(Path(r).name for r in RECORDS)
    assert f"skipped {audio_dir / '99000001_5.0_1_p1_1.flac'}: cannot read audio" in err
    assert f"skipped {audio_dir / '99000002_5.0_1_p1_1.wav'}: cannot read audio" in err
    assert "2 of 5 recordings could not be read" in err
    assert "event_f1_family=" in err  # still scored


@pytest.fixture(scope="module")
def phase_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with the detector in phase mode (Wheeze in every Breath phase)."""
    quality = {"poor_on": 0.999, "poor_off": 0.99}
    detector = {
        **rules("Wheeze"),
        "phases": {"on_threshold": 0.5, "off_threshold": 0.45, "min_phase_ms": 120.0,
                   "output": "Breath", "lead_ms": 40.0},
    }  # fmt: skip
    return tiny_streaming_folder(tmp_path_factory.mktemp("tiny-phases"), detector, quality)


def test_score_out_holds_every_score_and_the_threshold_free_ones(
    tmp_path, phase_folder, audio_dir, capsys
):
    scores_path = tmp_path / "scores.json"
    args = ["--audio", str(audio_dir), "--model", str(phase_folder), "--score"]
    args += ["--score-out", str(scores_path), "--out", str(tmp_path / "ev.json")]
    assert detect_main(args) == 0
    err = capsys.readouterr().err
    scores = json.loads(scores_path.read_text())
    assert scores["n_good"] == len(RECORDS)
    tf = scores["threshold_free"]
    assert set(tf) == {"phases", "frames"}
    for name, views in tf.items():
        assert set(views) == {"family", "4class"}
        family = views["family"]
        assert family["classes"] == ["CAS", "DAS"]  # the three records hold both families
        for key in ("psds1", "psds2", "best_event_f1"):
            assert 0.0 <= family[key] <= 1.0, (name, key)
    line = next(x for x in err.splitlines() if "threshold-free" in x)
    phases = tf["phases"]["family"]
    assert f"phases: psds1={phases['psds1']:.3f}" in line
    assert f"best_event_f1_family={phases['best_event_f1']:.3f}" in line
    for thresholds in (phases["best_thresholds"], tf["frames"]["family"]["best_thresholds"]):
        assert set(thresholds) == {"CAS", "DAS"}
        assert all(isinstance(t, float) or t in ("inf", "-inf") for t in thresholds.values())
    rows = scores["operating_points"]
    assert [r["threshold"] for r in rows] == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    for row in rows:
        assert set(row) == {"threshold", *scores["summary"]}
        assert 0.0 <= row["event_f1_family"] <= 1.0
    printed = [x for x in err.splitlines() if x.startswith("lungwatch detect:   0.")]
    assert len(printed) == len(rows)
    assert printed[4].split()[2:4] == ["0.7", f"{rows[4]['event_f1_family']:.3f}"]


def test_score_out_needs_score(tmp_path, folder, audio_dir, capsys):
    with pytest.raises(SystemExit):
        detect_main(["--audio", str(audio_dir), "--model", str(folder),
                     "--score-out", str(tmp_path / "s.json")])  # fmt: skip
    assert "--score-out needs --score" in capsys.readouterr().err
