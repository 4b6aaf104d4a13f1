"""The SPRSound tasks from a frame-level model's output frames (training/scoring/tasks.py) and
``lungwatch predict`` on a streaming model folder (real ONNX Runtime, real recordings)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge.bed.detector import FrameGrid
from lungwatch.errors import ConfigError
from lungwatch.labels import DETECTED_CLASSES
from training.data.targets import OUTPUTS
from training.scoring.tasks import (
    TaskRecord,
    TaskRules,
    event_labels,
    fit_task_rules,
    label_of_pooled,
    record_label,
    span_frames,
    task_scores,
)

GRID = FrameGrid.of(8000, 80, 256, 4)  # 40-ms output frames, as the shipped model
T = np.array([0.5] * len(DETECTED_CLASSES))


def pooled(**values: float) -> np.ndarray:
    out = np.zeros(len(DETECTED_CLASSES))
    for name, value in values.items():
        out[DETECTED_CLASSES.index(name.replace("_", " "))] = value
    return out


def test_a_span_with_nothing_above_threshold_is_normal():
    assert label_of_pooled(pooled(Wheeze=0.49, Fine_Crackle=0.3), T) == "Normal"


def test_the_largest_ratio_wins_and_wheeze_with_a_crackle_is_both():
    assert label_of_pooled(pooled(Wheeze=0.6, Rhonchi=0.9), T) == "Rhonchi"
    t = T.copy()
    t[DETECTED_CLASSES.index("Rhonchi")] = 0.95  # ratios: Wheeze 1.2, Rhonchi 0.95
    assert label_of_pooled(pooled(Wheeze=0.6, Rhonchi=0.9), t) == "Wheeze"
    assert label_of_pooled(pooled(Wheeze=0.6, Coarse_Crackle=0.55), T) == "Wheeze+Crackle"
    assert label_of_pooled(pooled(Rhonchi=0.6, Fine_Crackle=0.7), T) == "Fine Crackle"


def test_span_frames_are_those_centred_in_the_span_or_the_nearest():
    centres = (GRID.start_sample(np.arange(100)) + GRID.frame_samples / 2) / 8000
    frames = span_frames(GRID, 100, 1.0, 2.0)
    assert frames.size
    assert np.all((centres[frames] >= 1.0) & (centres[frames] <= 2.0))
    assert frames.size == np.sum((centres >= 1.0) & (centres <= 2.0))
    short = span_frames(GRID, 100, 1.001, 1.002)  # shorter than a frame: one, the nearest
    assert short.size == 1
    assert abs(centres[short[0]] - 1.0015) <= GRID.frame_samples / 8000


def synthetic(seed: int) -> tuple[dict[str, np.ndarray], list[TaskRecord]]:
    """Records whose annotated spans light up their class's output (0.3-0.6 under noise
    ≤ 0.2); Poor Quality records light up the quality output."""
    rng = np.random.default_rng(seed)
    probs, records = {}, []
    kinds = [("Normal", []), ("DAS", ["Fine Crackle"]), ("CAS", ["Wheeze", "Rhonchi"]),
             ("CAS & DAS", ["Wheeze+Crackle", "Coarse Crackle"]), ("Poor Quality", [])]  # fmt: skip
    for i in range(40):
        label, types = kinds[i % len(kinds)]
        p = rng.uniform(0, 0.2, (250, len(OUTPUTS))).astype(np.float32)
        if label == "Poor Quality":
            p[:, OUTPUTS.index("Poor Quality")] += 0.6
        spans, span_labels = [], []
        for j, kind in enumerate([*types, "Normal"]):
            start, end = 1.0 + 3 * j, 2.5 + 3 * j
            frames = span_frames(GRID, 250, start, end)
            for name in ("Wheeze", "Fine Crackle") if kind == "Wheeze+Crackle" else (kind,):
                if name != "Normal":
                    p[frames, OUTPUTS.index(name)] += rng.uniform(0.3, 0.6)
            spans.append((start, end))
            span_labels.append(kind)
        probs[f"r{i}"] = p
        records.append(TaskRecord(f"r{i}", label, tuple(spans), tuple(span_labels)))
    return probs, records


def test_fitting_on_separable_outputs_reaches_perfect_scores_on_new_records():
    probs, records = synthetic(0)
    rules, scores = fit_task_rules(probs, records, OUTPUTS, GRID)
    assert scores == {"1-1": 1.0, "1-2": 1.0, "2-1": 1.0, "2-2": 1.0}
    held_out, held_records = synthetic(1)
    assert task_scores(held_out, held_records, OUTPUTS, GRID, rules)["1-2"] == 1.0
    labels = event_labels(held_out["r3"], held_records[3].spans, OUTPUTS, GRID, rules)
    assert labels == list(held_records[3].span_labels)
    assert record_label(held_out["r4"], OUTPUTS, rules) == "Poor Quality"


def test_rules_round_trip_and_a_bad_field_is_named():
    rules = TaskRules(dict.fromkeys(DETECTED_CLASSES, 0.4), "max", 0.3, 0.2, 0.6, 25)
    assert TaskRules.from_dict(json.loads(json.dumps(rules.to_dict())), "m.json") == rules
    bad = rules.to_dict() | {"top_frames": 0}
    with pytest.raises(ConfigError, match=r"m\.json: tasks\.top_frames"):
        TaskRules.from_dict(bad, "m.json")
    bad = rules.to_dict() | {"event_thresholds": {"Wheeze": 0.5}}
    with pytest.raises(ConfigError, match=r"tasks\.event_thresholds"):
        TaskRules.from_dict(bad, "m.json")
    with pytest.raises(ConfigError, match=r"tasks\.pool"):
        TaskRules.from_dict(rules.to_dict() | {"pool": "median"}, "m.json")


# --- through the device path ------------------------------------------------------------------

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from tests.edge.test_runtime_streaming import rules as detector_rules
    from tests.streaming_fixture import tiny_streaming_folder

    out = tiny_streaming_folder(tmp_path_factory.mktemp("tiny"), detector_rules("Wheeze"))
    manifest = json.loads((out / "manifest.json").read_text())
    fitted = TaskRules(dict.fromkeys(DETECTED_CLASSES, 0.5), "mean", 0.5, 0.5, 0.5, 12)
    manifest["tasks"] = {"rules": fitted.to_dict(), "fitted_on": "test"}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture
def audio_dir(tmp_path: Path) -> Path:
    from tests.edge.runtime_helpers import CRACKLES, MIXED, WHEEZES, record_path

    out = tmp_path / "audio"
    out.mkdir()
    for record in (WHEEZES, MIXED, CRACKLES):
        for suffix in (".flac", ".json"):
            source = record_path(record, suffix)
            (out / source.name).symlink_to(source)
    return out


def test_kept_frames_cover_the_recording_and_do_not_depend_on_the_read_size(folder, audio_dir):
    from edge.audio import read_audio
    from edge.runtime import offline

    audio = offline.recordings_in([audio_dir])
    runs = []
    for read in (8000, 700):
        offline.READ_SAMPLES, saved = read, offline.READ_SAMPLES
        try:
            runs.append(offline.detect_recordings(audio, folder, "model.onnx", keep_probs=True))
        finally:
            offline.READ_SAMPLES = saved
    for name, path in audio.items():
        probs = runs[0][name].probs
        assert probs is not None
        assert probs.shape[1] == len(OUTPUTS)
        assert not np.isnan(probs).any()
        samples = read_audio(path).samples.shape[0]
        front_end_frames = (samples - 256) // 80 + 1  # 32-ms frames every 10 ms
        # every 40-ms output frame with audio in it, the last ones too (the stream is flushed)
        assert probs.shape[0] == -(-front_end_frames // 4)
        assert np.allclose(probs, runs[1][name].probs, atol=1e-5)


def test_predict_on_a_streaming_model_labels_every_annotated_event(tmp_path, folder, audio_dir):
    from training.data.sprsound import load_sprsound
    from training.scoring.evaluate import main as evaluate_main
    from training.scoring.predict import main as predict_main

    records = {r.record_id: r for r in load_sprsound(audio_dir)}
    for task in ("1-1", "1-2", "2-1", "2-2"):
        out = tmp_path / f"{task}.json"
        args = ["--task", task, "--audio", str(audio_dir), "--annotations", str(audio_dir),
                "--model", str(folder / "model.onnx"), "--out", str(out)]  # fmt: skip
        assert predict_main(args) == 0
        preds = json.loads(out.read_text())
        assert sorted(preds) == sorted(records)
        for name, value in preds.items():
            if task in ("1-1", "1-2"):
                assert len(value) == len(records[name].events)
        assert evaluate_main(["--task", task, "--preds", str(out),
                              "--annotations", str(audio_dir)]) == 0  # fmt: skip


def test_predict_labels_follow_the_kept_frames_and_the_manifest_rules(tmp_path, folder, audio_dir):
    """The labels are those of the device's own frames read with the manifest's rules: a
    threshold lowered to 0 in the manifest makes every span that class (never Normal)."""
    from training.scoring.predict import predict

    manifest = json.loads((folder / "manifest.json").read_text())
    low = dict.fromkeys(DETECTED_CLASSES, 1.0) | {"Rhonchi": 1e-6}
    changed = tmp_path / "model"
    changed.mkdir()
    for item in folder.iterdir():
        (changed / item.name).symlink_to(item)
    (changed / "manifest.json").unlink()
    manifest["tasks"]["rules"]["event_thresholds"] = low
    (changed / "manifest.json").write_text(json.dumps(manifest))
    preds = predict("1-2", changed / "model.onnx", audio_dir, audio_dir)
    labels = {label for value in preds.values() for label in value}  # type: ignore[union-attr]
    assert labels == {"Rhonchi"}


def test_device_frames_equal_the_whole_recording_pass_to_the_last_frame(folder, audio_dir):
    """The runtime's frames (streamed in 0.1-s reads, flushed at the end) are the PyTorch pass
    over the whole recording that training scores (features padded with the manifest's flush
    frame), to the recording's last output frame."""
    import torch

    from edge.audio import read_audio
    from edge.features import FeatureSpec, extract
    from edge.runtime import offline
    from training.models.checkpoint import load_checkpoint

    model = load_checkpoint(folder / "model.pt").model
    lookahead, stride = model.config.lookahead_frames, model.config.stride
    audio = offline.recordings_in([audio_dir])
    offline.READ_SAMPLES, saved = 800, offline.READ_SAMPLES
    try:
        device = offline.detect_recordings(audio, folder, "model.onnx", keep_probs=True)
    finally:
        offline.READ_SAMPLES = saved
    for name, path in audio.items():
        feats = extract(read_audio(path).samples, FeatureSpec()).T  # (F, T)
        n = -(-feats.shape[1] // stride)
        pad = (n + lookahead) * stride - feats.shape[1]
        flush = model.input_mean.numpy()[0][:, None].repeat(pad, axis=1)
        x = torch.from_numpy(np.concatenate([feats, flush], axis=1)[None, None].astype(np.float32))
        with torch.no_grad():
            logits = model.forward_train(x, n)
        expected = torch.sigmoid(logits)[0].numpy().T
        got = device[name].probs
        assert got is not None
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-4
