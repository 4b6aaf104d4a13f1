"""Stacked multi-kind features of audio files, cached on disk and in memory.

    store = FeatureStore(FeatureSpec(), kinds=("logmel", "gammatone", "cwt"), cache_dir=Path(...))
    x = store.features(path)        # (n_kinds, n_bands, n_frames) float32, read-only
    audio = store.samples(path)     # (n_samples,) float32 at spec.sample_rate_hz, read-only

Every kind is computed by the one front end, :func:`edge.features.extract`, on the audio read by
:func:`edge.audio.read_audio` at ``spec.sample_rate_hz``; ``spec.kind`` itself is ignored (each
kind uses ``spec.replace(kind=k)``). All kinds share the framing convention of
:mod:`edge.features.spec`, so frame ``t`` describes samples ``[t * hop, t * hop + frame)`` in
every kind; kinds with lookahead (``cwt``) yield fewer frames, and every kind is cropped to the
smallest count, so frame ``t`` means the same instant across the stack.

Disk cache: one ``.npy`` per file, named by a sha256 of the per-kind spec dicts, the kinds and
the sha256 of the file's bytes (and :data:`CACHE_FORMAT`), so a changed file or spec never hits
a stale entry, and the same audio hits its entry wherever it lies and whatever its
modification time (a data folder copied or synced again is not recomputed; each file's digest
is taken once per process while its path, size and ``mtime_ns`` stay the same). Entries are
written to a temporary file and moved into place with ``os.replace``, so concurrent writers
(data-loader workers, DDP ranks) never leave a partial file. An unreadable or mis-shaped entry
is recomputed and overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from edge.audio import read_audio
from edge.features import (
    FEATURE_KINDS,
    FeatureSpec,
    extract,
    lookahead_samples,
    n_frames,
    silence_value,
)
from edge.inference.manifest import sha256_file

LOGGER = logging.getLogger(__name__)

#: Bump when the stored layout changes, so old entries are never read.
CACHE_FORMAT = 2  # 2: keyed on the file's content (1: its path, size and mtime)
CACHE_SUFFIX = ".npy"
TEMP_SUFFIX = ".tmp"
DEFAULT_MEMORY_ITEMS = 128  # ~1.2 MB per 15 s record with 3 kinds x 64 bands
DEFAULT_SAMPLE_ITEMS = 8
FEATURES_NDIM = 3
QUALITY_OF_NO_AUDIO = 0.0  # a window with no recorded samples in it

#: quality_fn(samples (n,) float32, sample_rate_hz) -> score in [0, 1], 1 = good.
QualityFn = Callable[[np.ndarray, int], float]


@dataclass
class CacheStats:
    """How :meth:`FeatureStore.features` was answered since the store was made."""

    memory_hits: int = 0
    disk_hits: int = 0
    computed: int = 0


class _Lru:
    """A small least-recently-used map of cache key -> read-only array."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, key: str) -> np.ndarray | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: np.ndarray) -> None:
        if self.capacity <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> content digest


def content_digest(path: str | Path) -> str:
    """sha256 hex of the file's bytes, remembered while its path, size and mtime stay the same
    (so a store's repeated lookups read the file once)."""
    file_path = Path(path).resolve()
    stat = file_path.stat()
    seen = (str(file_path), stat.st_size, stat.st_mtime_ns)
    digest = _DIGESTS.get(seen)
    if digest is None:
        digest = _DIGESTS[seen] = sha256_file(file_path)
    return digest


def default_quality_fn() -> QualityFn:
    """``edge.bed.quality.quality_score``, imported only when a quality is needed."""
    try:
        from edge.bed.quality import quality_score
    except ImportError as exc:
        raise ImportError(
            "edge.bed.quality.quality_score is unavailable; pass quality_fn= or "
            "compute_quality=False"
        ) from exc
    return quality_score


def crop(
    features: np.ndarray, start_frame: int, window_frames: int, *, pad_value: float
) -> np.ndarray:
    """Frames ``[start_frame, start_frame + window_frames)`` of ``features``.

    Args:
        features: ``(n_kinds, n_bands, n_frames)``.
        pad_value: value of frames outside ``[0, n_frames)``; use ``FeatureStore.pad_value``
            (the feature value of silence, ``ln(log_offset)`` for log features), not 0.

    Returns:
        float32 ``(n_kinds, n_bands, window_frames)``, a new array.
    """
    if features.ndim != FEATURES_NDIM:
        raise ValueError(f"features must be (n_kinds, n_bands, n_frames), got {features.shape}")
    if window_frames < 1:
        raise ValueError(f"window_frames must be >= 1, got {window_frames}")
    out = np.full((*features.shape[:2], window_frames), pad_value, dtype=np.float32)
    lo, hi = max(start_frame, 0), min(start_frame + window_frames, features.shape[-1])
    if hi > lo:
        out[..., lo - start_frame : hi - start_frame] = features[..., lo:hi]
    return out


class FeatureStore:
    """Features of audio files for several kinds, stacked and frame-aligned.

    Args:
        spec: the feature spec; its ``kind`` is replaced by each of ``kinds``.
        kinds: feature kinds in stacking order, each one of ``FEATURE_KINDS``, no repeats.
        cache_dir: folder of the disk cache (created if missing); ``None``: memory only.
        memory_items: how many files' features the in-memory LRU keeps (0 disables it).

    Raises:
        ValueError: ``kinds`` is empty, repeats a kind or names an unknown one, or
            ``memory_items`` is negative.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        kinds: tuple[str, ...],
        cache_dir: Path | None = None,
        memory_items: int = DEFAULT_MEMORY_ITEMS,
    ) -> None:
        _check_kinds(kinds)
        if memory_items < 0:
            raise ValueError(f"memory_items must be >= 0, got {memory_items}")
        self.kinds = tuple(kinds)
        self.specs = tuple(spec.replace(kind=kind) for kind in self.kinds)
        self.spec = self.specs[0]
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.memory_items = memory_items
        self.lookahead_samples = max(lookahead_samples(s) for s in self.specs)
        self.stats = CacheStats()
        self._features = _Lru(memory_items)
        self._samples = _Lru(DEFAULT_SAMPLE_ITEMS)

    def __getstate__(self) -> dict[str, object]:
        """Pickle (spawned data-loader workers) without the in-memory caches."""
        state = dict(self.__dict__)
        state["_features"] = _Lru(self.memory_items)
        state["_samples"] = _Lru(DEFAULT_SAMPLE_ITEMS)
        return state

    @property
    def sample_rate_hz(self) -> int:
        return self.spec.sample_rate_hz

    @property
    def n_bands(self) -> int:
        return self.spec.n_bands

    @property
    def pad_value(self) -> float:
        """Feature value of silence, used to pad windows beyond a recording's ends."""
        return silence_value(self.spec)

    def window(self, path: str | Path, start_frame: int, window_frames: int) -> np.ndarray:
        """``crop(self.features(path), ...)`` padded with :attr:`pad_value`."""
        return crop(self.features(path), start_frame, window_frames, pad_value=self.pad_value)

    def cache_key(self, path: str | Path) -> str:
        """sha256 hex of specs, kinds and the content digest of ``path`` (module doc)."""
        identity = {
            "format": CACHE_FORMAT,
            "specs": [s.to_dict() for s in self.specs],
            "kinds": list(self.kinds),
            "content": content_digest(path),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def features(self, path: str | Path) -> np.ndarray:
        """Stacked features of an audio file.

        Returns:
            float32, shape ``(n_kinds, n_bands, n_frames)``, read-only (shared with the cache);
            ``n_frames`` is the smallest frame count across kinds (see :meth:`n_frames`).

        Raises:
            AudioReadError, EmptyAudioError, InvalidAudioError: from :func:`read_audio`.
        """
        key = self.cache_key(path)
        cached = self._features.get(key)
        if cached is not None:
            self.stats.memory_hits += 1
            return cached
        stacked = self._load(key)
        if stacked is None:
            stacked = self._compute(path)
            self.stats.computed += 1
            self._save(key, stacked)
        else:
            self.stats.disk_hits += 1
        stacked.flags.writeable = False
        self._features.put(key, stacked)
        return stacked

    def samples(self, path: str | Path) -> np.ndarray:
        """The audio as the front end sees it: float32 ``(n_samples,)`` at ``sample_rate_hz``."""
        key = self.cache_key(path)
        cached = self._samples.get(key)
        if cached is not None:
            return cached
        audio = read_audio(path, target_rate_hz=self.sample_rate_hz).samples
        audio.flags.writeable = False
        self._samples.put(key, audio)
        return audio

    def n_frames(self, path: str | Path) -> int:
        """Frames :meth:`features` yields for ``path``, from the file header (no decoding).

        Falls back to decoding when libsndfile cannot read the header (malformed WAVs).
        """
        try:
            info = sf.info(str(path))
        except (sf.SoundFileError, RuntimeError, OSError):
            n_samples = self.samples(path).shape[0]
        else:
            n_samples = _resampled_length(int(info.frames), int(info.samplerate), self.spec)
        return n_frames(self.spec, n_samples, self.lookahead_samples)

    def frame_to_sample(self, frame: int) -> int:
        """First sample of frame ``frame`` (``frame * hop_samples``; may be negative)."""
        return int(frame) * self.spec.hop_samples

    def frame_centre_sample(self, frame: int) -> int:
        """Centre sample of frame ``frame`` (``frame * hop + frame_samples // 2``)."""
        return self.frame_to_sample(frame) + self.spec.frame_samples // 2

    def window_sample_range(self, start_frame: int, window_frames: int) -> tuple[int, int]:
        """Samples ``[start, end)`` that frames ``start_frame .. +window_frames`` describe."""
        start = self.frame_to_sample(start_frame)
        end = self.frame_to_sample(start_frame + window_frames - 1) + self.spec.frame_samples
        return start, end

    def quality(
        self, path: str | Path, start_frame: int, window_frames: int, quality_fn: QualityFn
    ) -> float:
        """Quality in [0, 1] of the recorded samples a window covers (0 if it covers none).

        Raises:
            ValueError: ``quality_fn`` returned something outside [0, 1] (or NaN).
        """
        audio = self.samples(path)
        start, end = self.window_sample_range(start_frame, window_frames)
        segment = audio[max(start, 0) : max(min(end, audio.shape[0]), 0)]
        if segment.size == 0:
            return QUALITY_OF_NO_AUDIO
        value = float(quality_fn(segment, self.sample_rate_hz))
        if not 0.0 <= value <= 1.0:
            raise ValueError(
                f"quality_fn gave {value} for {path} frames {start_frame}..+{window_frames}; "
                "expected a number in [0, 1]"
            )
        return value

    def precompute(self, paths: Iterable[str | Path], workers: int = 1) -> int:
        """Fill the disk cache for ``paths``; see :func:`precompute`."""
        return precompute(self, paths, workers)

    def _compute(self, path: str | Path) -> np.ndarray:
        """Run the front end once per kind and crop to the common frame count."""
        audio = self.samples(path)
        per_kind = [extract(audio, spec) for spec in self.specs]
        common = min(frames.shape[0] for frames in per_kind)
        stacked = np.stack([frames[:common].T for frames in per_kind])
        return np.ascontiguousarray(stacked, dtype=np.float32)

    def _entry(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{key}{CACHE_SUFFIX}"

    def _load(self, key: str) -> np.ndarray | None:
        """The disk entry for ``key``, or None if absent, unreadable or mis-shaped."""
        entry = self._entry(key)
        if entry is None or not entry.is_file():
            return None
        try:
            stacked = np.load(entry, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            LOGGER.warning("%s: unreadable feature cache entry, recomputing (%s)", entry, exc)
            return None
        expected = (len(self.kinds), self.n_bands)
        if stacked.ndim != FEATURES_NDIM or stacked.shape[:2] != expected:
            found = stacked.shape
            LOGGER.warning("%s: cached shape %s, expected %s + (frames,)", entry, found, expected)
            return None
        return stacked if stacked.dtype == np.float32 else None

    def _save(self, key: str, stacked: np.ndarray) -> None:
        """Write the entry atomically (temporary file in the cache folder + ``os.replace``)."""
        entry = self._entry(key)
        if entry is None:
            return
        fd, temp_name = tempfile.mkstemp(prefix=key, suffix=TEMP_SUFFIX, dir=entry.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, stacked, allow_pickle=False)
            os.replace(temp_name, entry)
        finally:
            if os.path.exists(temp_name):
                os.unlink(temp_name)


def _check_kinds(kinds: Sequence[str]) -> None:
    """Raise ValueError unless ``kinds`` is a non-empty tuple of distinct known kinds."""
    if not kinds:
        raise ValueError(f"kinds must name at least one of {FEATURE_KINDS}, got {kinds!r}")
    unknown = [kind for kind in kinds if kind not in FEATURE_KINDS]
    if unknown:
        raise ValueError(f"unknown feature kind(s) {unknown}; known: {FEATURE_KINDS}")
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds must not repeat, got {tuple(kinds)}")


def _resampled_length(n_samples: int, rate_hz: int, spec: FeatureSpec) -> int:
    """Length :func:`edge.audio.resample` gives: ``ceil(n * to / from)`` (n if rates match)."""
    if rate_hz == spec.sample_rate_hz:
        return n_samples
    divisor = math.gcd(rate_hz, spec.sample_rate_hz)
    up, down = spec.sample_rate_hz // divisor, rate_hz // divisor
    return -(-n_samples * up // down)


def _precompute_one(spec: FeatureSpec, kinds: tuple[str, ...], cache_dir: Path, path: str) -> int:
    """Worker: fill the disk cache for one file; returns its frame count."""
    store = FeatureStore(spec, kinds, cache_dir, memory_items=0)
    return int(store.features(path).shape[-1])


def precompute(store: FeatureStore, paths: Iterable[str | Path], workers: int = 1) -> int:
    """Fill ``store``'s disk cache for ``paths`` with ``workers`` processes (spawned).

    Returns:
        Number of files processed.

    Raises:
        ValueError: the store has no ``cache_dir`` or ``workers`` < 1.
    """
    if store.cache_dir is None:
        raise ValueError("precompute needs a FeatureStore with a cache_dir")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    unique = sorted({str(Path(p)) for p in paths})
    if workers == 1:
        for path in unique:
            store.features(path)
        return len(unique)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        jobs = [
            pool.submit(_precompute_one, store.spec, store.kinds, store.cache_dir, path)
            for path in unique
        ]
        for job in jobs:
            job.result()
    return len(unique)
