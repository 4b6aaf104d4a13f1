"""Multi-kind features of audio files from the one front end (:func:`edge.features.extract`),
cropped to the kind with fewest frames (look-ahead kinds such as ``cwt``). Disk cache: one ``.npy``
per file keyed by content, specs and kinds (never stale; the same audio hits wherever it lies),
written atomically; an unreadable or mis-shaped entry is recomputed."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from edge.audio import read_audio
from edge.features import FEATURE_KINDS, FeatureSpec, extract
from edge.inference.manifest import sha256_file

LOGGER = logging.getLogger(__name__)

#: Bump when the stored layout changes, so old entries are never read.
CACHE_FORMAT = 2  # 2: keyed on the file's content (1: its path, size and mtime)
DEFAULT_MEMORY_ITEMS = 128  # ~1.2 MB per 15 s record with 3 kinds x 64 bands
DEFAULT_SAMPLE_ITEMS = 8
FEATURES_NDIM = 3

_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> content digest


def content_digest(path: str | Path) -> str:
    """sha256 hex of the file's bytes, remembered per path, size and mtime (one read per file)."""
    file_path = Path(path).resolve()
    stat = file_path.stat()
    seen = (str(file_path), stat.st_size, stat.st_mtime_ns)
    digest = _DIGESTS.get(seen)
    if digest is None:
        digest = _DIGESTS[seen] = sha256_file(file_path)
    return digest


class _Lru(OrderedDict[str, np.ndarray]):
    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def take(self, key: str) -> np.ndarray | None:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def keep(self, key: str, value: np.ndarray) -> None:
        if self.capacity > 0:
            self[key] = value
            self.move_to_end(key)
            while len(self) > self.capacity:
                self.popitem(last=False)


class FeatureStore:
    """``cache_dir`` None: memory only; ``memory_items``: files kept in memory (0: none)."""

    def __init__(
        self,
        spec: FeatureSpec,
        kinds: tuple[str, ...],
        cache_dir: Path | None = None,
        memory_items: int = DEFAULT_MEMORY_ITEMS,
    ) -> None:
        if not kinds or len(set(kinds)) != len(kinds) or not set(kinds) <= set(FEATURE_KINDS):
            raise ValueError(f"kinds must be distinct names from {FEATURE_KINDS}, got {kinds!r}")
        if memory_items < 0:
            raise ValueError(f"memory_items must be >= 0, got {memory_items}")
        self.kinds = tuple(kinds)
        self.specs = tuple(spec.replace(kind=kind) for kind in self.kinds)
        self.spec = self.specs[0]
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.computed = 0  # entries computed (not found in memory or on disk)
        self._features = _Lru(memory_items)
        self._samples = _Lru(DEFAULT_SAMPLE_ITEMS)

    @property
    def sample_rate_hz(self) -> int:
        return self.spec.sample_rate_hz

    def cache_key(self, path: str | Path) -> str:
        identity = {
            "format": CACHE_FORMAT,
            "specs": [s.to_dict() for s in self.specs],
            "kinds": list(self.kinds),
            "content": content_digest(path),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def features(self, path: str | Path) -> np.ndarray:
        """Stacked features of an audio file: float32 ``(n_kinds, n_bands, n_frames)``,
        read-only (shared with the cache). Reading errors are :func:`read_audio`'s."""
        key = self.cache_key(path)
        stacked = self._features.take(key)
        if stacked is not None:
            return stacked
        stacked = self._load(key)
        if stacked is None:
            stacked = self._compute(path)
            self.computed += 1
            self._save(key, stacked)
        stacked.flags.writeable = False
        self._features.keep(key, stacked)
        return stacked

    def samples(self, path: str | Path) -> np.ndarray:
        """The audio as the front end sees it: float32 ``(n_samples,)`` at ``sample_rate_hz``."""
        key = self.cache_key(path)
        cached = self._samples.take(key)
        if cached is not None:
            return cached
        audio = read_audio(path, target_rate_hz=self.sample_rate_hz).samples
        audio.flags.writeable = False
        self._samples.keep(key, audio)
        return audio

    def _compute(self, path: str | Path) -> np.ndarray:
        audio = self.samples(path)
        per_kind = [extract(audio, spec) for spec in self.specs]
        common = min(frames.shape[0] for frames in per_kind)
        stacked = np.stack([frames[:common].T for frames in per_kind])
        return np.ascontiguousarray(stacked, dtype=np.float32)

    def _entry(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{key}.npy"

    def _load(self, key: str) -> np.ndarray | None:
        entry = self._entry(key)
        if entry is None or not entry.is_file():
            return None
        try:
            stacked = np.load(entry, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            LOGGER.warning("%s: unreadable feature cache entry, recomputing (%s)", entry, exc)
            return None
        expected = (len(self.kinds), self.spec.n_bands)
        if stacked.ndim != FEATURES_NDIM or stacked.shape[:2] != expected:
            found = stacked.shape
            LOGGER.warning("%s: cached shape %s, expected %s + (frames,)", entry, found, expected)
            return None
        return stacked if stacked.dtype == np.float32 else None

    def _save(self, key: str, stacked: np.ndarray) -> None:
        entry = self._entry(key)
        if entry is None:
            return
        fd, temp_name = tempfile.mkstemp(prefix=key, suffix=".tmp", dir=entry.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, stacked, allow_pickle=False)
            os.replace(temp_name, entry)
        finally:
            if os.path.exists(temp_name):
                os.unlink(temp_name)
