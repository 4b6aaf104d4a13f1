"""The training feature cache (training.data.features.FeatureStore) on real files: the one
front end's numbers, a disk entry reused by a new store, keyed on content and spec, a broken
entry recomputed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge.features import FeatureSpec, extract
from training.data.features import FeatureStore

SPEC = FeatureSpec(n_bands=24)


@pytest.fixture
def audio(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "a.flac"
    sf.write(path, (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)  # resampled
    return path


def test_features_are_the_front_ends_stacked_and_cropped(audio: Path, tmp_path: Path) -> None:
    store = FeatureStore(SPEC, ("logmel", "cwt"), tmp_path / "cache")
    x = store.features(audio)
    logmel = extract(store.samples(audio), SPEC)
    cwt = extract(store.samples(audio), SPEC.replace(kind="cwt"))
    assert x.shape == (2, 24, min(logmel.shape[0], cwt.shape[0]))  # cwt has fewer frames
    np.testing.assert_array_equal(x[0], logmel[: x.shape[2]].T)
    assert not x.flags.writeable


def test_a_new_store_reads_the_entry_and_keys_follow_content_and_spec(
    audio: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = FeatureStore(SPEC, ("logmel",), cache)
    x = first.features(audio)
    second = FeatureStore(SPEC, ("logmel",), cache)
    np.testing.assert_array_equal(second.features(audio), x)
    assert (first.computed, second.computed) == (1, 0)
    moved = tmp_path / "elsewhere.flac"
    shutil.copy(audio, moved)  # same bytes elsewhere: the same entry
    assert second.cache_key(moved) == second.cache_key(audio)
    other = FeatureStore(SPEC.replace(band_norm_s=4.0), ("logmel",), cache)
    assert other.cache_key(audio) != first.cache_key(audio)


def test_a_broken_entry_is_recomputed(audio: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    store = FeatureStore(SPEC, ("logmel",), cache, memory_items=0)
    x = store.features(audio)
    (entry,) = cache.glob("*.npy")
    entry.write_bytes(b"not numpy")
    np.testing.assert_array_equal(store.features(audio), x)
    assert store.computed == 2
    with pytest.raises(ValueError, match="kinds must be distinct names"):
        FeatureStore(SPEC, ("logmel", "logmel"))
