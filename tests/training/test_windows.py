"""Tests of the feature cache, the model windows (event, sliding, ICBHI cycle) and datasets."""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import training.features_cache as features_cache
from edge.datapaths import sprsound_root
from edge.features import FeatureSpec, extract
from edge.labels import (
    BINARY_LABELS,
    EVENT_LABELS,
    ICBHI_LABELS,
    POOR_QUALITY,
    RECORD_LABELS,
    RECORD_LABELS_2_1,
)
from training.datasets.icbhi import IcbhiCycle, IcbhiRecording
from training.datasets.sprsound import SprEvent, SprRecord, load_sprsound
from training.datasets.synthetic import synthesize
from training.features_cache import FeatureStore, silence_value
from training.windows import (
    VOCAB_BINARY,
    VOCAB_EVENT,
    VOCAB_ICBHI,
    VOCAB_RECORD,
    Window,
    WindowDataset,
    class_counts,
    crop,
    event_windows,
    feature_stats,
    icbhi_cycle_windows,
    map_label,
    sliding_windows,
)

SPEC = FeatureSpec()  # 8 kHz, frame 256, hop 80 samples (10 ms), 64 bands
RATE_HZ = SPEC.sample_rate_hz
HOP = SPEC.hop_samples
FRAME = SPEC.frame_samples
ALL_KINDS = ("logmel", "gammatone", "cwt")
GEOMETRY = {"frame_samples": FRAME, "hop_samples": HOP, "sample_rate_hz": RATE_HZ}
WINDOW = 100  # frames (~1 s)
QUIET_BREATH_RMS = 0.005  # makes a synthetic wheeze dominate its window's energy
MAX_CENTRE_ERROR_FRAMES = 1.0  # frame_samples // 2 misplaced would be 1.6 frames
REAL_CAS = "40638274_9.7_1_p3_1765"  # 3 events, listed out of time order
REAL_POOR = "40069321_15.3_0_p1_981"  # Poor Quality, no events; also in wav_quirks/


def _write(path: Path, samples: np.ndarray) -> Path:
    sf.write(str(path), samples, RATE_HZ, subtype="PCM_16")
    return path


def _record(
    audio_path: Path, events: list[SprEvent], label: str = "CAS", record_id: str = "101_5_0_p1_1"
) -> SprRecord:
    return SprRecord(
        record_id=record_id,
        audio_path=audio_path,
        annotation_path=audio_path.with_suffix(".json"),
        patient_id=record_id.split("_")[0],
        age_years=5.0,
        gender="M",
        location="p1",
        record_label=label,
        events=tuple(events),
    )


@pytest.fixture
def count_extract(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the front end seen by the store with a wrapper that records each kind run."""
    calls: list[str] = []

    def counting(signal: np.ndarray, spec: FeatureSpec) -> np.ndarray:
        calls.append(spec.kind)
        return extract(signal, spec)

    monkeypatch.setattr(features_cache, "extract", counting)
    return calls


@pytest.fixture
def noise_path(tmp_path: Path) -> Path:
    samples = synthesize(1.5, RATE_HZ, seed=1).samples
    return _write(tmp_path / "noise.flac", samples)


# --- FeatureStore -------------------------------------------------------------------------------


def test_cache_hit_returns_identical_arrays_without_recomputing(
    tmp_path: Path, noise_path: Path, count_extract: list[str]
) -> None:
    cache = tmp_path / "cache"
    store = FeatureStore(SPEC, ALL_KINDS, cache)
    first = store.features(noise_path)
    assert count_extract == list(ALL_KINDS)
    assert store.features(noise_path) is first  # memory hit
    fresh = FeatureStore(SPEC, ALL_KINDS, cache)  # empty memory: must come from disk
    np.testing.assert_array_equal(fresh.features(noise_path), first)
    assert count_extract == list(ALL_KINDS)
    assert (store.stats.memory_hits, fresh.stats.disk_hits, fresh.stats.computed) == (1, 1, 0)
    assert [p.suffix for p in cache.iterdir()] == [".npy"]  # no temporary file left behind
    assert not first.flags.writeable
    FeatureStore(SPEC, ALL_KINDS, cache_dir=None, memory_items=0).features(noise_path)
    assert len(count_extract) == 2 * len(ALL_KINDS)  # no cache at all: computed again


def test_cache_invalidates_when_the_file_changes(tmp_path: Path, count_extract: list[str]) -> None:
    wav = _write(tmp_path / "x.wav", synthesize(1.5, RATE_HZ, seed=1).samples)
    store = FeatureStore(SPEC, ("logmel",), tmp_path / "cache")
    before = store.features(wav).copy()
    stat = wav.stat()
    _write(wav, synthesize(1.5, RATE_HZ, seed=2).samples)  # PCM WAV: same size, other samples
    os.utime(wav, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert wav.stat().st_size == stat.st_size
    after = store.features(wav)
    assert count_extract == ["logmel", "logmel"]
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after[0], extract(store.samples(wav), SPEC).T)


def test_the_same_audio_hits_its_entry_wherever_it_lies_and_whenever_touched(
    tmp_path: Path, noise_path: Path, count_extract: list[str]
) -> None:
    cache = tmp_path / "cache"
    first = FeatureStore(SPEC, ("logmel",), cache).features(noise_path)
    copy = tmp_path / "elsewhere" / "copy.wav"
    copy.parent.mkdir()
    copy.write_bytes(noise_path.read_bytes())
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5 * 10**9))  # a later copy
    fresh = FeatureStore(SPEC, ("logmel",), cache)
    np.testing.assert_array_equal(fresh.features(copy), first)
    assert (fresh.stats.disk_hits, fresh.stats.computed) == (1, 0)
    assert count_extract == ["logmel"]  # computed once, for the original
    assert len(list(cache.iterdir())) == 1


def test_cache_key_depends_on_spec_and_kinds(tmp_path: Path, noise_path: Path) -> None:
    keys = {
        FeatureStore(SPEC, ("logmel", "cwt")).cache_key(noise_path),
        FeatureStore(SPEC, ("cwt", "logmel")).cache_key(noise_path),
        FeatureStore(SPEC.replace(n_bands=32), ("logmel", "cwt")).cache_key(noise_path),
    }
    assert len(keys) == 3


def test_kinds_are_cropped_to_a_common_frame_count(noise_path: Path) -> None:
    store = FeatureStore(SPEC, ALL_KINDS)
    stacked = store.features(noise_path)
    audio = store.samples(noise_path)
    per_kind = [extract(audio, SPEC.replace(kind=kind)) for kind in ALL_KINDS]
    counts = [frames.shape[0] for frames in per_kind]
    assert counts[2] < counts[0]  # cwt has lookahead, so cropping really happens
    assert stacked.shape == (3, SPEC.n_bands, min(counts))
    assert stacked.dtype == np.float32
    assert store.n_frames(noise_path) == min(counts)
    for index, frames in enumerate(per_kind):
        np.testing.assert_array_equal(stacked[index], frames[: min(counts)].T)


def test_pad_value_is_the_front_ends_output_for_silence() -> None:
    silence = np.zeros(2 * RATE_HZ, dtype=np.float32)
    for kind in ALL_KINDS:
        spec = SPEC.replace(kind=kind)
        np.testing.assert_allclose(extract(silence, spec), silence_value(spec), atol=1e-4)
    assert silence_value(SPEC) == pytest.approx(math.log(SPEC.log_offset))
    assert silence_value(SPEC.replace(normalisation="power")) == 0.0


def test_pickled_store_leaves_its_memory_cache_behind(noise_path: Path) -> None:
    store = FeatureStore(SPEC, ALL_KINDS)
    features = store.features(noise_path)
    payload = pickle.dumps(store)  # what a spawned data-loader worker receives
    assert len(payload) < features.nbytes // 10
    np.testing.assert_array_equal(pickle.loads(payload).features(noise_path), features)


def test_store_rejects_bad_kinds() -> None:
    for kinds in ((), ("logmel", "logmel"), ("mfcc",)):
        with pytest.raises(ValueError, match="kind"):
            FeatureStore(SPEC, kinds)


def test_precompute_fills_the_disk_cache(
    tmp_path: Path, noise_path: Path, count_extract: list[str]
) -> None:
    store = FeatureStore(SPEC, ("logmel",), tmp_path / "cache")
    assert store.precompute([noise_path, noise_path], workers=1) == 1
    FeatureStore(SPEC, ("logmel",), tmp_path / "cache").features(noise_path)
    assert count_extract == ["logmel"]
    with pytest.raises(ValueError, match="cache_dir"):
        FeatureStore(SPEC, ("logmel",)).precompute([noise_path])


# --- windows ------------------------------------------------------------------------------------


def _wheeze_record(tmp_path: Path, seed: int) -> SprRecord:
    recording = synthesize(3.0, RATE_HZ, seed=seed, wheezes=1, breath_rms=QUIET_BREATH_RMS)
    path = _write(tmp_path / f"wheeze{seed}.flac", recording.samples)
    (event,) = recording.events
    start_ms, end_ms = round(1000 * event.start_s), round(1000 * event.end_s)
    return _record(path, [SprEvent(start_ms, end_ms, "Wheeze")], record_id=f"10{seed}_5_0_p1_1")


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_event_window_is_centred_on_a_synthetic_wheeze(tmp_path: Path, seed: int) -> None:
    record = _wheeze_record(tmp_path, seed)
    store = FeatureStore(SPEC, ("logmel", "cwt"))
    (window,) = event_windows([record], EVENT_LABELS, WINDOW, HOP, RATE_HZ, frame_samples=FRAME)
    assert (window.label, window.target, window.event_index) == ("Wheeze", 2, 0)
    x = crop(store.features(record.audio_path), window.start_frame, WINDOW, pad_value=-23.0)
    energy = np.exp(x.astype(np.float64)).sum(axis=1)  # (n_kinds, WINDOW) band power sums
    centroid = (energy * np.arange(WINDOW)).sum(axis=1) / energy.sum(axis=1)
    for kind_centroid in centroid:  # every kind, so the kinds' frames are aligned too
        assert abs(kind_centroid - (WINDOW - 1) / 2) <= MAX_CENTRE_ERROR_FRAMES


def test_event_windows_keep_file_order_and_map_labels(tmp_path: Path) -> None:
    events = [SprEvent(5000, 5500, "Fine Crackle"), SprEvent(1000, 2000, "Normal")]
    events.append(SprEvent(2500, 3000, "Wheeze+Crackle"))
    record = _record(tmp_path / "r.flac", events, label=POOR_QUALITY)

    def labels(classes: tuple[str, ...]) -> list[str]:
        windows = event_windows([record], classes, WINDOW, HOP, RATE_HZ, frame_samples=FRAME)
        assert [w.event_index for w in windows] == [0, 1, 2]
        assert all(w.record_label == POOR_QUALITY for w in windows)
        return [w.label for w in windows]

    assert labels(EVENT_LABELS) == ["Fine Crackle", "Normal", "Wheeze+Crackle"]
    assert labels(BINARY_LABELS) == ["Adventitious", "Normal", "Adventitious"]
    assert labels(ICBHI_LABELS) == ["crackle", "normal", "both"]
    windows = event_windows([record], EVENT_LABELS, WINDOW, HOP, RATE_HZ, frame_samples=FRAME)
    centre_ms = 5250  # first event: middle frame centred on 42000 samples
    assert windows[0].start_frame == round((centre_ms * 8 - FRAME // 2) / HOP - (WINDOW - 1) / 2)


def test_windows_past_the_recording_ends_are_padded_with_silence(noise_path: Path) -> None:
    store = FeatureStore(SPEC, ALL_KINDS)
    features = store.features(noise_path)
    n_frames = features.shape[-1]
    x = crop(features, -20, n_frames + 40, pad_value=store.pad_value)
    assert store.pad_value == pytest.approx(-23.02585)
    assert np.all(x[..., :20] == np.float32(store.pad_value))
    np.testing.assert_array_equal(x[..., 20 : 20 + n_frames], features)
    assert np.all(x[..., 20 + n_frames :] == np.float32(store.pad_value))
    assert np.all(crop(features, n_frames + 5, 10, pad_value=0.5) == 0.5)


def test_dataset_pads_an_event_near_the_start(tmp_path: Path, noise_path: Path) -> None:
    record = _record(noise_path, [SprEvent(100, 200, "Fine Crackle")])
    store = FeatureStore(SPEC, ("logmel",))
    (window,) = event_windows([record], EVENT_LABELS, WINDOW, HOP, RATE_HZ, frame_samples=FRAME)
    assert window.start_frame < 0
    x, _, _ = WindowDataset(store, [window], WINDOW, compute_quality=False)[0]
    assert torch.all(x[..., : -window.start_frame] == store.pad_value)
    assert torch.equal(
        x[0, :, -window.start_frame], torch.tensor(store.features(noise_path)[0, :, 0])
    )


# Window s covers ms [10 s, 10 s + 1022) (W = 100 frames, hop 10 ms, frame 32 ms).
OVERLAP_EVENTS = [
    SprEvent(7000, 9000, "Rhonchi"),  # 0
    SprEvent(0, 1200, "Normal"),  # 1
    SprEvent(1200, 2600, "Wheeze"),  # 2
    SprEvent(4000, 4100, "Fine Crackle"),  # 3: short, fully inside some windows
    SprEvent(9000, 9400, "Wheeze"),  # 4
]
OVERLAP_FRAMES = 997  # 10 s at 8 kHz
EXPECTED_BY_START = {
    0: ("Normal", None),
    50: ("Wheeze", 2),  # 322 ms: 23 % of the event, 31 % of the window
    100: ("Wheeze", 2),
    250: ("Normal", None),  # 100 ms of the wheeze: under 25 % of both
    350: ("Fine Crackle", 3),  # all of a 100 ms crackle, 10 % of the window
    450: ("Normal", None),
    600: ("Normal", None),  # 22 ms of the rhonchus
    650: ("Rhonchi", 0),
    850: ("Rhonchi", 0),  # rhonchus 500 ms beats wheeze 400 ms (both qualify)
    900: ("Wheeze", 4),
}


def _sliding(
    records: list[SprRecord], classes: tuple[str, ...], min_overlap: float = 0.25
) -> list[Window]:
    return sliding_windows(
        records,
        classes,
        WINDOW,
        50,
        n_frames_of=lambda _: OVERLAP_FRAMES,
        **GEOMETRY,
        min_overlap=min_overlap,
    )


def test_sliding_window_labels_follow_the_overlap_rule(tmp_path: Path) -> None:
    record = _record(tmp_path / "r.flac", OVERLAP_EVENTS)
    windows = _sliding([record], EVENT_LABELS)
    assert [w.start_frame for w in windows] == list(range(0, 901, 50))  # last reaches the end
    by_start = {w.start_frame: (w.label, w.event_index) for w in windows}
    assert {s: by_start[s] for s in EXPECTED_BY_START} == EXPECTED_BY_START
    strict = {w.start_frame: w.label for w in _sliding([record], EVENT_LABELS, min_overlap=0.5)}
    assert (strict[50], strict[350]) == ("Normal", "Fine Crackle")
    families = {w.start_frame: w.label for w in _sliding([record], RECORD_LABELS)}
    assert (families[50], families[350], families[0]) == ("CAS", "DAS", "Normal")


def test_poor_quality_records_label_every_window(tmp_path: Path) -> None:
    poor = _record(tmp_path / "p.flac", [SprEvent(0, 3000, "Wheeze")], POOR_QUALITY, "7_1_0_p1_2")
    good = _record(tmp_path / "g.flac", OVERLAP_EVENTS)
    for classes in (RECORD_LABELS, RECORD_LABELS_2_1, (*EVENT_LABELS, POOR_QUALITY)):
        windows = _sliding([poor, good], classes)
        poor_labels = {w.label for w in windows if w.recording_id == poor.record_id}
        assert poor_labels == {POOR_QUALITY}
        assert POOR_QUALITY not in {w.label for w in windows if w.recording_id != poor.record_id}
    without_class = _sliding([poor, good], EVENT_LABELS)
    assert {w.recording_id for w in without_class} == {good.record_id}


def test_icbhi_cycle_windows_and_label_maps(tmp_path: Path) -> None:
    cycles = (IcbhiCycle(0.5, 2.5, False, False), IcbhiCycle(2.5, 4.0, True, True))
    name = "101_1b1_Al_sc_Meditron"
    recording = IcbhiRecording(
        name, tmp_path / "x.flac", "101", "1b1", "Al", "sc", "Meditron", cycles
    )
    windows = icbhi_cycle_windows([recording], ICBHI_LABELS, WINDOW, **GEOMETRY)
    assert [(w.label, w.target, w.event_index) for w in windows] == [
        ("normal", 0, 0),
        ("both", 3, 1),
    ]
    assert (windows[0].record_label, windows[0].group) == ("both", "101")
    assert windows[0].start_frame == round((1.5 * RATE_HZ - FRAME // 2) / HOP - (WINDOW - 1) / 2)
    binary = icbhi_cycle_windows([recording], BINARY_LABELS, WINDOW, **GEOMETRY)
    assert [w.label for w in binary] == ["Normal", "Adventitious"]
    with pytest.raises(ValueError, match="no class"):
        icbhi_cycle_windows([recording], EVENT_LABELS, WINDOW, **GEOMETRY)


def test_map_label_only_in_well_defined_directions() -> None:
    assert map_label("Rhonchi", VOCAB_EVENT, VOCAB_ICBHI) == "wheeze"
    assert map_label("Coarse Crackle", VOCAB_EVENT, VOCAB_RECORD) == "DAS"
    assert map_label("Normal", VOCAB_EVENT, VOCAB_BINARY) == "Normal"
    assert map_label("crackle", VOCAB_ICBHI, VOCAB_BINARY) == "Adventitious"
    with pytest.raises(ValueError, match="no well-defined map"):
        map_label("crackle", VOCAB_ICBHI, VOCAB_EVENT)
    with pytest.raises(ValueError, match="not in"):
        map_label("crackle", VOCAB_EVENT, VOCAB_ICBHI)


# --- dataset, counts, statistics ----------------------------------------------------------------


def _event_dataset(
    tmp_path: Path, quality_fn: Callable[[np.ndarray, int], float] | None = None
) -> WindowDataset:
    records = [_wheeze_record(tmp_path, seed) for seed in (6, 7)]
    windows = event_windows(records, EVENT_LABELS, WINDOW, HOP, RATE_HZ, frame_samples=FRAME)
    return WindowDataset(FeatureStore(SPEC, ALL_KINDS), windows, WINDOW, quality_fn=quality_fn)


def test_dataset_items_have_fixed_shapes_and_dtypes(tmp_path: Path) -> None:
    seen: list[int] = []

    def quality_fn(samples: np.ndarray, rate_hz: int) -> float:
        seen.append(samples.shape[0])
        return 0.75

    dataset = _event_dataset(tmp_path, quality_fn)
    x, target, quality = dataset[1]
    assert (x.shape, x.dtype) == ((3, SPEC.n_bands, WINDOW), torch.float32)
    assert (target.dtype, target.shape, int(target)) == (torch.int64, (), dataset.windows[1].target)
    assert (quality.dtype, float(quality)) == (torch.float32, 0.75)
    assert seen == [(WINDOW - 1) * HOP + FRAME]  # the window's samples, all inside the audio
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    assert batch[0].shape == (2, 3, SPEC.n_bands, WINDOW)
    assert len(seen) == 2  # item 1's quality was kept, item 0's computed once
    unscored = WindowDataset(dataset.store, dataset.windows, WINDOW, compute_quality=False)
    assert math.isnan(float(unscored[0][2]))


def test_dataset_rejects_a_quality_outside_the_unit_interval(tmp_path: Path) -> None:
    dataset = _event_dataset(tmp_path, lambda samples, rate_hz: 1.5)
    with pytest.raises(ValueError, match=r"expected a number in \[0, 1\]"):
        dataset[0]


def test_feature_stats_match_the_recorded_frames(tmp_path: Path) -> None:
    dataset = _event_dataset(tmp_path)
    shifted = [Window(**{**w.__dict__, "start_frame": -30}) for w in dataset.windows]  # half pad
    mean, std = feature_stats(dataset.store, shifted, WINDOW)
    assert mean.shape == std.shape == (3, SPEC.n_bands)
    assert mean.dtype == std.dtype == np.float32
    frames = np.concatenate(
        [dataset.store.features(w.audio_path)[..., : WINDOW - 30] for w in shifted], axis=-1
    ).astype(np.float64)
    np.testing.assert_allclose(mean, frames.mean(axis=-1), rtol=1e-5)
    np.testing.assert_allclose(std, frames.std(axis=-1), rtol=1e-4)
    default_mean, _ = feature_stats(dataset)
    assert not np.allclose(default_mean, mean)  # the dataset's own windows were used


def test_class_counts_in_class_order(tmp_path: Path) -> None:
    windows = _sliding([_record(tmp_path / "r.flac", OVERLAP_EVENTS)], EVENT_LABELS)
    counts = class_counts(windows, EVENT_LABELS)
    assert (counts.dtype, counts.sum()) == (np.int64, len(windows))
    assert counts[EVENT_LABELS.index("Rhonchi")] == sum(w.label == "Rhonchi" for w in windows)
    with pytest.raises(ValueError, match="not in"):
        class_counts(windows, BINARY_LABELS)


# --- real SPRSound records ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SprRecord]:
    train = sprsound_root() / "train"
    if not train.is_dir():
        pytest.skip(f"SPRSound data not found at {train} (set LUNGWATCH_DATA_DIR)")
    split = tmp_path_factory.mktemp("sprsound")
    for record_id in (REAL_CAS, REAL_POOR):
        for suffix in (".json", ".flac"):
            (split / f"{record_id}{suffix}").symlink_to(train / f"{record_id}{suffix}")
    return {r.record_id: r for r in load_sprsound(split)}


@pytest.mark.requires_data
def test_real_event_windows_are_centred_in_file_order(real_records: dict[str, SprRecord]) -> None:
    record = real_records[REAL_CAS]
    windows = event_windows([record], EVENT_LABELS, 200, HOP, RATE_HZ, frame_samples=FRAME)
    assert [w.label for w in windows] == [e.type for e in record.events]
    assert [w.event_index for w in windows] == [0, 1, 2]
    for window, event in zip(windows, record.events, strict=True):
        centre_sample = (window.start_frame + (200 - 1) / 2) * HOP + FRAME // 2
        assert abs(centre_sample - (event.start_ms + event.end_ms) / 2 * 8) <= HOP / 2


@pytest.mark.requires_data
def test_real_records_through_the_dataset(
    tmp_path: Path, real_records: dict[str, SprRecord]
) -> None:
    store = FeatureStore(SPEC, ALL_KINDS, tmp_path / "cache")
    records = list(real_records.values())
    windows = sliding_windows(
        records, RECORD_LABELS, 200, 100, n_frames_of=store.n_frames, **GEOMETRY
    )
    for record in records:
        assert store.n_frames(record.audio_path) == store.features(record.audio_path).shape[-1]
    assert {w.label for w in windows if w.recording_id == REAL_POOR} == {POOR_QUALITY}
    assert {w.label for w in windows if w.recording_id == REAL_CAS} == {"CAS", "Normal"}
    x, _, _ = WindowDataset(store, windows, 200, compute_quality=False)[len(windows) - 1]
    assert x.shape == (3, SPEC.n_bands, 200)
    assert torch.isfinite(x).all()
    mean, std = feature_stats(store, windows, 200)
    assert np.all(std > 0)
    assert np.all(mean > store.pad_value)


@pytest.mark.requires_data
def test_malformed_wav_frame_count_matches_its_features() -> None:
    wav = sprsound_root() / "wav_quirks" / f"{REAL_POOR}.wav"
    if not wav.is_file():
        pytest.skip(f"{wav} not found")
    store = FeatureStore(SPEC, ("logmel", "cwt"))
    assert store.n_frames(wav) == store.features(wav).shape[-1]
