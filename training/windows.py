"""Fixed-size model windows over cached features: per event, sliding, per ICBHI cycle.

A :class:`Window` names a recording and a ``start_frame``; the model input is
``crop(store.features(path), start_frame, window_frames)``, shape
``(n_kinds, n_bands, window_frames)``, padded with the feature value of silence where the
window runs past either end of the recording. Frames follow the framing convention of
:mod:`edge.features.spec`: frame ``t`` covers samples ``[t * hop, t * hop + frame)`` and is
centred on ``t * hop + frame // 2``, so a window of ``W`` frames starting at ``s`` covers samples
``[s * hop, (s + W - 1) * hop + frame)``.

Labels. Window labels are names in ``classes`` (the model's class list); ``target`` is the
index. SPRSound event types are mapped into ``classes`` by :func:`map_label`: the type itself
(Task 1-2), its Normal/Adventitious label (Task 1-1, 2-1), its record family CAS / DAS /
CAS & DAS (Task 2-2), or its ICBHI label. ICBHI cycle labels map only to ICBHI classes or to
Normal/Adventitious: an ICBHI ``crackle`` does not say fine or coarse (nor ``wheeze`` wheeze,
rhonchus or stridor), so the ICBHI -> SPRSound direction is not defined and cross-dataset
results are scored in the ICBHI vocabulary (map SPRSound labels and predictions with
``map_label(x, VOCAB_EVENT, VOCAB_ICBHI)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from edge.labels import (
    BINARY_LABELS,
    EVENT_LABELS,
    ICBHI_LABELS,
    NORMAL,
    POOR_QUALITY,
    RECORD_LABELS,
    icbhi_label,
    sound_class,
    to_binary,
    to_icbhi,
)
from training.datasets.icbhi import IcbhiRecording
from training.datasets.sprsound import SprRecord
from training.features_cache import FeatureStore, QualityFn, default_quality_fn
from training.features_cache import crop as crop  # re-exported: windows are cut with it

try:
    import torch
    from torch.utils.data import Dataset
except ImportError as exc:  # training needs torch; say what to install in one line
    raise ImportError("training.windows needs torch: pip install 'lungwatch[train]'") from exc

MS_PER_S = 1000.0
DEFAULT_MIN_OVERLAP = 0.25
ADVENTITIOUS = BINARY_LABELS[1]

VOCAB_EVENT = "sprsound_event"  # EVENT_LABELS
VOCAB_BINARY = "binary"  # BINARY_LABELS
VOCAB_RECORD = "sprsound_record"  # RECORD_LABELS
VOCAB_ICBHI = "icbhi"  # ICBHI_LABELS
VOCABULARIES: dict[str, tuple[str, ...]] = {
    VOCAB_EVENT: EVENT_LABELS,
    VOCAB_BINARY: BINARY_LABELS,
    VOCAB_RECORD: RECORD_LABELS,
    VOCAB_ICBHI: ICBHI_LABELS,
}


def _event_family(label: str) -> str:
    family = sound_class(label).family
    return NORMAL if family == "normal" else family


_LABEL_MAPS: dict[tuple[str, str], Callable[[str], str]] = {
    (VOCAB_EVENT, VOCAB_BINARY): to_binary,
    (VOCAB_EVENT, VOCAB_RECORD): _event_family,
    (VOCAB_EVENT, VOCAB_ICBHI): to_icbhi,
    (VOCAB_ICBHI, VOCAB_BINARY): lambda label: NORMAL if label == ICBHI_LABELS[0] else ADVENTITIOUS,
}


@dataclass(frozen=True)
class Window:
    """One model input: ``window_frames`` frames of one recording from ``start_frame``.

    ``start_frame`` may be negative or run past the end (padded with silence). ``group`` is
    the patient id (for patient-disjoint splits). ``quality`` is in [0, 1] or NaN when not yet
    computed (not part of equality). ``event_index`` is the annotated event's index in file
    order (SPRSound) or the cycle's index (ICBHI); None for windows not tied to one event.
    """

    recording_id: str
    audio_path: Path
    group: str
    start_frame: int
    label: str
    target: int
    quality: float = field(default=math.nan, compare=False)
    event_index: int | None = None
    record_label: str = ""


class _Grid(NamedTuple):
    """Frame geometry (samples) of the feature spec the windows are cut from."""

    frame_samples: int
    hop_samples: int
    sample_rate_hz: int

    def start_centred(self, centre_sample: float, window_frames: int) -> int:
        """Start frame of the window whose middle frame is centred on ``centre_sample``."""
        centre_frame = (centre_sample - self.frame_samples // 2) / self.hop_samples
        return math.floor(centre_frame - (window_frames - 1) / 2 + 0.5)

    def span(self, start_frame: int, window_frames: int) -> tuple[int, int]:
        """Samples ``[start, end)`` the window covers."""
        start = start_frame * self.hop_samples
        return start, start + (window_frames - 1) * self.hop_samples + self.frame_samples

    def ms_to_sample(self, ms: float) -> float:
        return ms * self.sample_rate_hz / MS_PER_S


def _grid(frame_samples: int, hop_samples: int, sample_rate_hz: int) -> _Grid:
    """A validated :class:`_Grid`."""
    _check_args(
        None, frame_samples=frame_samples, hop_samples=hop_samples, sample_rate_hz=sample_rate_hz
    )
    return _Grid(frame_samples, hop_samples, sample_rate_hz)


def map_label(label: str, from_vocab: str, to_vocab: str) -> str:
    """Map a label between vocabularies, only where the mapping is well defined.

    Defined: SPRSound event -> binary, record family, ICBHI (``edge.labels``); ICBHI -> binary;
    any vocabulary to itself. ICBHI -> SPRSound event/record is not (a crackle is not fine or
    coarse), so evaluate cross-dataset in the ICBHI vocabulary.

    Raises:
        ValueError: unknown vocabulary, a label not in ``from_vocab``, or an undefined direction.
    """
    for vocab in (from_vocab, to_vocab):
        if vocab not in VOCABULARIES:
            raise ValueError(f"unknown vocabulary {vocab!r}; known: {list(VOCABULARIES)}")
    if label not in VOCABULARIES[from_vocab]:
        raise ValueError(f"label {label!r} is not in {from_vocab} {VOCABULARIES[from_vocab]}")
    if from_vocab == to_vocab:
        return label
    mapping = _LABEL_MAPS.get((from_vocab, to_vocab))
    if mapping is None:
        raise ValueError(
            f"no well-defined map from {from_vocab} to {to_vocab}; defined: "
            f"{sorted(_LABEL_MAPS)}; score cross-dataset results in the {VOCAB_ICBHI} vocabulary"
        )
    return mapping(label)


def _class_of(label: str, vocab: str, classes: Sequence[str]) -> str:
    """The first of ``label`` and its maps out of ``vocab`` that is one of ``classes``."""
    if label in classes:
        return label
    for (source, _), mapping in _LABEL_MAPS.items():
        if source == vocab and mapping(label) in classes:
            return mapping(label)
    raise ValueError(f"{vocab} label {label!r} has no class in {tuple(classes)} (see map_label)")


def _check_args(classes: Sequence[str] | None, **positive: int) -> None:
    """Raise ValueError for empty/repeated ``classes`` or a size that is not a positive int."""
    if classes is not None and (not classes or len(set(classes)) != len(classes)):
        raise ValueError(f"classes must be non-empty and distinct, got {tuple(classes)}")
    for name, value in positive.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _make(
    record: SprRecord | IcbhiRecording,
    record_label: str,
    start: int,
    label: str,
    classes: Sequence[str],
    index: int | None,
) -> Window:
    """A window of an SPRSound record or an ICBHI recording."""
    recording_id = record.record_id if isinstance(record, SprRecord) else record.recording_id
    target = list(classes).index(label)
    group = record.patient_id
    return Window(
        recording_id, record.audio_path, group, start, label, target, math.nan, index, record_label
    )


def event_windows(
    records: Sequence[SprRecord],
    classes: Sequence[str],
    window_frames: int,
    hop_samples: int,
    sample_rate_hz: int,
    *,
    frame_samples: int,
) -> list[Window]:
    """SPRSound Task 1: one window per annotated event (file order), centred on the event.

    The window's middle frame is the frame centred nearest the event's centre sample,
    ``(start_ms + end_ms) / 2 * sample_rate_hz / 1000``; an event longer than the window is
    represented by its middle. Events of Poor Quality records are kept with their own type.

    Returns:
        Windows in record order, then file order of events (``event_index``).
    """
    _check_args(classes, window_frames=window_frames)
    grid = _grid(frame_samples, hop_samples, sample_rate_hz)
    windows = []
    for record in records:
        for index, event in enumerate(record.events):
            centre = grid.ms_to_sample((event.start_ms + event.end_ms) / 2.0)
            start = grid.start_centred(centre, window_frames)
            label = _class_of(event.type, VOCAB_EVENT, classes)
            windows.append(_make(record, record.record_label, start, label, classes, index))
    return windows


def sliding_windows(
    records: Sequence[SprRecord],
    classes: Sequence[str],
    window_frames: int,
    hop_frames: int,
    *,
    n_frames_of: Callable[[Path], int],
    frame_samples: int,
    hop_samples: int,
    sample_rate_hz: int,
    min_overlap: float = DEFAULT_MIN_OVERLAP,
) -> list[Window]:
    """Windows every ``hop_frames`` over whole SPRSound records (detection, record tasks).

    Starts are ``0, hop_frames, ...`` up to the first start whose window reaches the last frame
    (``n_frames_of(audio_path)``, e.g. ``FeatureStore.n_frames``). Label: among adventitious
    events whose overlap with the window covers >= ``min_overlap`` of the event or of the
    window, the one with the largest overlap (earliest in file order on ties, its index in
    ``event_index``); else Normal. Normal events never outvote adventitious ones, so a short
    crackle inside a long Normal phase still labels its window. Every window of a Poor
    Quality record is labelled Poor Quality if that is a class, else the record is skipped
    (its audio is unannotated, not normal).
    """
    _check_args(classes, window_frames=window_frames, hop_frames=hop_frames)
    if not 0.0 < min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}")
    grid = _grid(frame_samples, hop_samples, sample_rate_hz)
    windows = []
    for record in records:
        if record.record_label == POOR_QUALITY and POOR_QUALITY not in classes:
            continue
        last_start = max(n_frames_of(record.audio_path) - window_frames, 0)
        for start in range(0, last_start + hop_frames, hop_frames):
            if record.record_label == POOR_QUALITY:
                label, index = POOR_QUALITY, None
            else:
                span = grid.span(start, window_frames)
                label, index = _overlap_label(record, span, grid, classes, min_overlap)
            windows.append(_make(record, record.record_label, start, label, classes, index))
    return windows


def _overlap_label(
    record: SprRecord,
    span: tuple[int, int],
    grid: _Grid,
    classes: Sequence[str],
    min_overlap: float,
) -> tuple[str, int | None]:
    """``(class, event index)`` of a window covering samples ``span`` (see sliding_windows)."""
    best_overlap, best_index = 0.0, None
    for index, event in enumerate(record.events):
        if to_binary(event.type) == NORMAL:
            continue
        start, end = grid.ms_to_sample(event.start_ms), grid.ms_to_sample(event.end_ms)
        overlap = min(end, span[1]) - max(start, span[0])
        shortest = min(end - start, span[1] - span[0])
        if overlap >= min_overlap * shortest and overlap > best_overlap:
            best_overlap, best_index = overlap, index
    if best_index is None:
        return _class_of(NORMAL, VOCAB_EVENT, classes), None
    return _class_of(record.events[best_index].type, VOCAB_EVENT, classes), best_index


def icbhi_cycle_windows(
    recordings: Sequence[IcbhiRecording],
    classes: Sequence[str],
    window_frames: int,
    *,
    frame_samples: int,
    hop_samples: int,
    sample_rate_hz: int,
) -> list[Window]:
    """One window per ICBHI respiratory cycle, centred on it (``event_index`` = cycle index).

    ``classes`` is ``ICBHI_LABELS`` (4-class) or ``BINARY_LABELS``; SPRSound classes raise
    ValueError (see the module docstring). ``record_label`` is the recording's ICBHI label from
    whether any cycle has crackles / wheezes; ``group`` is the patient id.
    """
    _check_args(classes, window_frames=window_frames)
    grid = _grid(frame_samples, hop_samples, sample_rate_hz)
    windows = []
    for recording in recordings:
        cycles = recording.cycles
        summary = icbhi_label(any(c.crackles for c in cycles), any(c.wheezes for c in cycles))
        for index, cycle in enumerate(cycles):
            centre = (cycle.start_s + cycle.end_s) / 2.0 * sample_rate_hz
            label = _class_of(cycle.label, VOCAB_ICBHI, classes)
            start = grid.start_centred(centre, window_frames)
            windows.append(_make(recording, summary, start, label, classes, index))
    return windows


def class_counts(windows: Sequence[Window], classes: Sequence[str]) -> np.ndarray:
    """Windows per class: int64 ``(len(classes),)`` in class order; unknown labels raise."""
    counts = np.zeros(len(classes), dtype=np.int64)
    for window in windows:
        if window.label not in classes:
            raise ValueError(f"{window.recording_id}: label {window.label!r} not in {classes}")
        counts[list(classes).index(window.label)] += 1
    return counts


class WindowDataset(Dataset):
    """``(x, target, quality)`` per window: float32 ``(n_kinds, n_bands, window_frames)``,
    int64 scalar, float32 scalar (NaN if ``compute_quality`` is False and none was stored).

    Qualities are computed on first use and kept; call :meth:`qualities` before starting
    data-loader workers so they are computed once, not once per worker.
    """

    def __init__(
        self,
        store: FeatureStore,
        windows: Sequence[Window],
        window_frames: int,
        *,
        compute_quality: bool = True,
        quality_fn: QualityFn | None = None,
    ) -> None:
        _check_args(None, window_frames=window_frames)
        if not windows:
            raise ValueError("WindowDataset needs at least one window, got none")
        self.store = store
        self.windows = list(windows)
        self.window_frames = window_frames
        self.compute_quality = compute_quality
        self._quality_fn = quality_fn
        self._quality = np.array([w.quality for w in self.windows], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        window = self.windows[index]
        x = self.store.window(window.audio_path, window.start_frame, self.window_frames)
        quality = self.quality(index) if self.compute_quality else self._quality[index]
        return (
            torch.from_numpy(x),
            torch.tensor(window.target, dtype=torch.int64),
            torch.tensor(quality, dtype=torch.float32),
        )

    def quality(self, index: int) -> float:
        """Quality of window ``index``, computed (once) if not known."""
        if math.isnan(self._quality[index]):
            if self._quality_fn is None:
                self._quality_fn = default_quality_fn()
            window = self.windows[index]
            self._quality[index] = self.store.quality(
                window.audio_path, window.start_frame, self.window_frames, self._quality_fn
            )
        return float(self._quality[index])

    def qualities(self) -> np.ndarray:
        """Every window's quality, float64 ``(n_windows,)`` (computing missing ones)."""
        return np.array([self.quality(i) for i in range(len(self))])


def feature_stats(
    source: FeatureStore | WindowDataset,
    windows: Sequence[Window] | None = None,
    window_frames: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-(kind, band) mean and std over the recorded frames of training windows.

    Padding is excluded; frames shared by overlapping windows count once per window (as the
    model sees them). Statistics are merged per window in float64 (Chan et al.).

    Args:
        source: a store (then ``windows`` and ``window_frames`` are required) or a dataset
            (defaults: its windows and window size).

    Returns:
        ``(mean, std)``, float32 ``(n_kinds, n_bands)`` each; std is the population std.
    """
    store = source.store if isinstance(source, WindowDataset) else source
    if isinstance(source, WindowDataset):
        windows = source.windows if windows is None else windows
        window_frames = source.window_frames if window_frames is None else window_frames
    if windows is None or window_frames is None:
        raise ValueError("feature_stats(store, ...) needs windows and window_frames")
    count, mean, m2 = 0, 0.0, 0.0
    for window in sorted(windows, key=lambda w: str(w.audio_path)):
        features = store.features(window.audio_path)
        lo = max(window.start_frame, 0)
        hi = min(window.start_frame + window_frames, features.shape[-1])
        if hi <= lo:
            continue
        part = features[..., lo:hi].astype(np.float64)
        n, part_mean = hi - lo, part.mean(axis=-1)
        part_m2 = ((part - part_mean[..., None]) ** 2).sum(axis=-1)
        delta, total = part_mean - mean, count + n
        mean = mean + delta * n / total
        m2 = m2 + part_m2 + delta**2 * count * n / total
        count = total
    if count == 0:
        raise ValueError(f"feature_stats: the {len(windows)} windows cover no recorded frames")
    std = np.sqrt(np.asarray(m2) / count)
    return np.asarray(mean, dtype=np.float32), std.astype(np.float32)
