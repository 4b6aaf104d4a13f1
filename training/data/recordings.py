"""Whole recordings with strong frame targets. A training example is the recording *as a stream
that starts at a random frame*: the model's state is zero there, as on a device whose stream
starts there, so no example needs context it cannot have. The look-ahead reads the recording's
later frames, and past its end the flush frame (:func:`flush_value`), as the device does."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edge.bed.detector import FrameGrid
from edge.features import FeatureSpec
from training.data.features import FeatureStore
from training.data.icbhi import IcbhiRecording
from training.data.sprsound import SprRecord
from training.data.targets import cycle_targets, frame_targets


@dataclass
class Recording:
    record_id: str
    patient_id: str
    label: str
    features: np.ndarray  # (K, F, T) float16
    targets: np.ndarray  # (O, N) float32
    weights: np.ndarray  # (O, N) float32
    events: tuple[tuple[float, float, str], ...]  # (start_s, end_s, type) as annotated
    soft: np.ndarray | None = None  # (O, N) float16 a teacher's outputs (distillation)

    @property
    def n_frames(self) -> int:
        return int(self.targets.shape[1])


@dataclass
class Batch:
    """Stacked examples, padded to the longest; ``mask`` (B, N) marks real output frames."""

    features: np.ndarray  # (B, K, F, (N + lookahead) * stride) float32
    targets: np.ndarray  # (B, O, N)
    weights: np.ndarray  # (B, O, N), zero on padding
    mask: np.ndarray  # (B, N)
    n_frames: int
    soft: np.ndarray | None = None  # (B, O, N) teacher outputs; None: no example has any
    soft_mask: np.ndarray | None = None  # (B, N) real frames with a teacher output


def output_frames(n_input_frames: int, stride: int) -> int:
    return -(-n_input_frames // stride)


def load_recordings(
    records: Sequence[SprRecord],
    store: FeatureStore,
    kinds: Sequence[str],
    grid: FrameGrid,
    stride: int,
    unannotated_weight: float = 0.5,
) -> list[Recording]:
    pick = [store.kinds.index(kind) for kind in kinds]
    out = []
    for record in records:
        features = store.features(record.audio_path)[pick].astype(np.float16)
        n = output_frames(features.shape[2], stride)
        events = tuple(record.events_s)
        targets, weights = frame_targets(events, record.record_label, grid, n, unannotated_weight)
        out.append(
            Recording(
                record.record_id, record.patient_id, record.record_label, features, targets,
                weights, events,
            )
        )  # fmt: skip
    return out


def load_icbhi_recordings(
    recordings: Sequence[IcbhiRecording],
    store: FeatureStore,
    kinds: Sequence[str],
    grid: FrameGrid,
    stride: int,
) -> list[Recording]:
    pick = [store.kinds.index(kind) for kind in kinds]
    out = []
    for rec in recordings:
        features = store.features(rec.audio_path)[pick].astype(np.float16)
        n = output_frames(features.shape[2], stride)
        cycles = [(c.start_s, c.end_s, c.crackles, c.wheezes) for c in rec.cycles]
        targets, weights = cycle_targets(cycles, grid, n)
        events = tuple(
            (c.start_s, c.end_s, t)
            for c in rec.cycles
            for t, on in (("Fine Crackle", c.crackles), ("Wheeze", c.wheezes))
            if on
        )
        out.append(Recording(rec.recording_id, rec.patient_id, "icbhi", features, targets,
                             weights, events))  # fmt: skip
    return out


def flush_value(mean: np.ndarray) -> np.ndarray:
    """The padding frame after a stream's end: the (K, F) training mean (zero once normalised)."""
    return np.asarray(mean, dtype=np.float32)


@dataclass(frozen=True)
class Example:
    """A stream of one recording from output frame ``first`` for ``n`` frames."""

    recording: Recording
    first: int
    n: int


def random_example(
    recording: Recording, rng: np.random.Generator, max_start_frames: int, max_frames: int
) -> Example:
    """From a random output frame ``<= min(max_start_frames, n // 2)``, ``<= max_frames`` long."""
    n = recording.n_frames
    first = int(rng.integers(0, min(max_start_frames, n // 2) + 1))
    return Example(recording, first, min(n - first, max_frames))


def whole_example(recording: Recording) -> Example:
    return Example(recording, 0, recording.n_frames)


def collate(
    examples: Sequence[Example],
    stride: int,
    lookahead: int,
    flush: np.ndarray,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Batch:
    """Inputs run ``lookahead`` frames past each example (module doc); padding is masked out.
    ``transform``: stored features -> model input (:class:`training.recipe.inputs.InputView`)."""
    longest = max(e.n for e in examples)
    first = examples[0].recording
    k, f = first.features.shape[:2]
    width = (longest + lookahead) * stride
    x = np.broadcast_to(flush[None, :, :, None], (len(examples), k, f, width)).copy()
    o = first.targets.shape[0]
    targets = np.zeros((len(examples), o, longest), np.float32)
    weights = np.zeros_like(targets)
    mask = np.zeros((len(examples), longest), np.float32)
    taught = any(e.recording.soft is not None for e in examples)
    soft = np.zeros_like(targets) if taught else None
    soft_mask = np.zeros_like(mask) if taught else None
    for b, e in enumerate(examples):
        rec = e.recording
        lo = e.first * stride
        hi = min(rec.features.shape[2], (e.first + e.n + lookahead) * stride)
        part = rec.features[:, :, lo:hi]
        x[b, :, :, : hi - lo] = part if transform is None else transform(part)
        targets[b, :, : e.n] = rec.targets[:, e.first : e.first + e.n]
        weights[b, :, : e.n] = rec.weights[:, e.first : e.first + e.n]
        mask[b, : e.n] = 1.0
        if soft is not None and soft_mask is not None and rec.soft is not None:
            soft[b, :, : e.n] = rec.soft[:, e.first : e.first + e.n]
            soft_mask[b, : e.n] = 1.0
    return Batch(x, targets, weights, mask, longest, soft, soft_mask)


def recording_seconds(n_frames: int, spec: FeatureSpec) -> float:
    samples = (n_frames - 1) * spec.hop_samples + spec.frame_samples
    return samples / spec.sample_rate_hz
