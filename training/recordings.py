"""Whole recordings with strong frame targets, for the frame-level model.

    data = load_recordings(records, store, kinds, grid, stride)       # features in memory
    batch = collate([crop(item, rng, ...) for item in ...])              # training batches

Each :class:`Recording` holds its stacked features ``(K, F, T)`` (float16 in memory), its
frame targets and weights ``(O, N)`` at the model's output grid (``N = ceil(T / stride)``)
and its record label. A training example is the recording *as a stream that starts at a
random frame*: the model's state is zero at the example's first frame exactly as on a device
whose stream starts there, so no example needs context it cannot have. The model's
look-ahead is served by the recording's own later frames, and past its end by the flush
padding (:func:`flush_value`), which is also what the device feeds when a stream ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.detector import FrameGrid
from edge.labels import POOR_QUALITY
from training.datasets.icbhi import IcbhiRecording
from training.datasets.sprsound import SprRecord
from training.features_cache import FeatureStore, silence_value
from training.targets import OUTPUTS, cycle_targets, frame_targets

RECORD_OUTPUTS: tuple[str, ...] = ("CAS", "DAS", POOR_QUALITY)  # record head (multi-label)
CAS_OUTPUTS = ("Wheeze", "Rhonchi", "Stridor")
DAS_OUTPUTS = ("Fine Crackle", "Coarse Crackle")


@dataclass
class Recording:
    """One recording, ready for training or evaluation."""

    record_id: str
    patient_id: str
    label: str
    features: np.ndarray  # (K, F, T) float16
    targets: np.ndarray  # (O, N) float32
    weights: np.ndarray  # (O, N) float32
    events: tuple[tuple[float, float, str], ...]  # (start_s, end_s, type) as annotated
    # (O, N) float32: a teacher's frame probabilities (knowledge distillation), or None
    soft: np.ndarray | None = None

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
    record_targets: np.ndarray  # (B, len(RECORD_OUTPUTS))
    n_frames: int
    soft: np.ndarray | None = None  # (B, O, N) teacher probabilities, when any example has them
    soft_mask: np.ndarray | None = None  # (B, N): 1 where ``soft`` holds a teacher's output


def output_frames(n_input_frames: int, stride: int) -> int:
    """Output frames of a recording of ``n_input_frames`` front-end frames."""
    return -(-n_input_frames // stride)


def load_recordings(
    records: Sequence[SprRecord],
    store: FeatureStore,
    kinds: Sequence[str],
    grid: FrameGrid,
    stride: int,
    unannotated_weight: float = 0.5,
    record_aware: bool = False,
) -> list[Recording]:
    """Features (the chosen ``kinds`` of the store's stack) and targets of every record."""
    pick = [store.kinds.index(kind) for kind in kinds]
    out = []
    for record in records:
        features = store.features(record.audio_path)[pick].astype(np.float16)
        n = output_frames(features.shape[2], stride)
        events = tuple((e.start_ms / 1000.0, e.end_ms / 1000.0, e.type) for e in record.events)
        targets, weights = frame_targets(
            events, record.record_label, grid, n, unannotated_weight, record_aware
        )
        out.append(
            Recording(
                record.record_id, record.patient_id, record.record_label, features, targets,
                weights, events,
            )
        )  # fmt: skip
    return out


DEAD_BAND_STD = 0.5  # log units; SPRSound's bands above ~1 kHz: ~0.06 (16-bit dust)
DOMAIN_CLIP_STD = 4.0


def match_domain(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Features (K, F, T) of another recording set brought into a domain of per-band
    ``mean`` / ``std`` (K, F): dead bands set to the mean, the others clipped (see
    :func:`load_icbhi_recordings`)."""
    m, s = mean[:, :, None], np.asarray(std, np.float32)[:, :, None]
    clipped = np.clip(features, m - DOMAIN_CLIP_STD * s, m + DOMAIN_CLIP_STD * s)
    return np.where(s < DEAD_BAND_STD, m, clipped).astype(np.float32)


def icbhi_label(recording: IcbhiRecording) -> str:
    """The SPRSound-style record label of an ICBHI recording's cycles (for the record head)."""
    cas = any(c.wheezes for c in recording.cycles)
    das = any(c.crackles for c in recording.cycles)
    return {(False, False): "Normal", (True, False): "CAS", (False, True): "DAS"}.get(
        (cas, das), "CAS & DAS"
    )


def load_icbhi_recordings(
    recordings: Sequence[IcbhiRecording],
    store: FeatureStore,
    kinds: Sequence[str],
    grid: FrameGrid,
    stride: int,
    fill: np.ndarray,
    std: np.ndarray | None = None,
) -> list[Recording]:
    """ICBHI recordings as extra training material: cycle targets (:func:`cycle_targets`).

    The stored ICBHI files are zero between annotated cycles; front-end frames of pure digital
    silence are replaced by ``fill`` (K, F), the training mean, so the model never sees the
    log floor of audio that was never recorded (its targets there are unknown anyway).
    With ``std`` (K, F), the target domain's per-band spread (``fill`` its mean), the input is
    matched to that domain: bands whose spread is below :data:`DEAD_BAND_STD` carry nothing
    there (SPRSound's stethoscopes sit at the log floor above about 1 kHz, where ICBHI's
    microphones record tens of standard deviations above it) and are set to ``fill``; the
    other bands are clipped to ``fill`` ± :data:`DOMAIN_CLIP_STD` standard deviations.
    """
    pick = [store.kinds.index(kind) for kind in kinds]
    floor = silence_value(store.spec) + 1.0
    fill = np.asarray(fill, np.float32)
    out = []
    for rec in recordings:
        features = np.array(store.features(rec.audio_path)[pick], dtype=np.float32)
        silent = (features <= floor).all(axis=(0, 1))
        features[:, :, silent] = fill[:, :, None]
        if std is not None:
            features = match_domain(features, fill, std)
        n = output_frames(features.shape[2], stride)
        cycles = tuple((c.start_s, c.end_s, c.crackles, c.wheezes) for c in rec.cycles)
        targets, weights = cycle_targets(cycles, grid, n)
        out.append(
            Recording(
                f"icbhi/{rec.recording_id}", f"icbhi/{rec.patient_id}", icbhi_label(rec),
                features.astype(np.float16), targets, weights, (),
            )
        )  # fmt: skip
    return out


def flush_value(mean: np.ndarray) -> np.ndarray:
    """The padding frame after a stream's end: the per-kind, per-band training mean (K, F),
    which the model's input normalisation maps to zero."""
    return np.asarray(mean, dtype=np.float32)


def record_targets(targets: np.ndarray, label: str) -> np.ndarray:
    """Multi-label record target (CAS present, DAS present, Poor Quality) of frame targets."""
    cas = any(targets[OUTPUTS.index(name)].max(initial=0.0) >= 0.5 for name in CAS_OUTPUTS)
    das = any(targets[OUTPUTS.index(name)].max(initial=0.0) >= 0.5 for name in DAS_OUTPUTS)
    return np.array([cas, das, label == POOR_QUALITY], dtype=np.float32)


@dataclass(frozen=True)
class Example:
    """A stream of one recording from output frame ``first`` for ``n`` frames."""

    recording: Recording
    first: int
    n: int


def random_example(
    recording: Recording, rng: np.random.Generator, max_start_frames: int, max_frames: int
) -> Example:
    """The recording from a random output frame in ``[0, max_start_frames]`` (at most half
    its length), for at most ``max_frames`` frames."""
    n = recording.n_frames
    first = int(rng.integers(0, min(max_start_frames, n // 2) + 1))
    return Example(recording, first, min(n - first, max_frames))


def whole_example(recording: Recording) -> Example:
    return Example(recording, 0, recording.n_frames)


def collate(examples: Sequence[Example], stride: int, lookahead: int, flush: np.ndarray) -> Batch:
    """Stack examples; inputs run ``lookahead`` frames past each example (real audio where the
    recording goes on, the flush frame after its end) and padding is masked out."""
    longest = max(e.n for e in examples)
    first = examples[0].recording
    k, f = first.features.shape[:2]
    width = (longest + lookahead) * stride
    x = np.broadcast_to(flush[None, :, :, None], (len(examples), k, f, width)).copy()
    o = first.targets.shape[0]
    targets = np.zeros((len(examples), o, longest), np.float32)
    weights = np.zeros_like(targets)
    mask = np.zeros((len(examples), longest), np.float32)
    records = np.zeros((len(examples), len(RECORD_OUTPUTS)), np.float32)
    has_soft = any(e.recording.soft is not None for e in examples)
    soft = np.zeros_like(targets) if has_soft else None
    soft_mask = np.zeros_like(mask) if has_soft else None
    for b, e in enumerate(examples):
        rec = e.recording
        lo = e.first * stride
        hi = min(rec.features.shape[2], (e.first + e.n + lookahead) * stride)
        x[b, :, :, : hi - lo] = rec.features[:, :, lo:hi]
        targets[b, :, : e.n] = rec.targets[:, e.first : e.first + e.n]
        weights[b, :, : e.n] = rec.weights[:, e.first : e.first + e.n]
        mask[b, : e.n] = 1.0
        records[b] = record_targets(targets[b, :, : e.n], rec.label)
        if soft is not None and soft_mask is not None and rec.soft is not None:
            soft[b, :, : e.n] = rec.soft[:, e.first : e.first + e.n]
            soft_mask[b, : e.n] = 1.0
    return Batch(x, targets, weights, mask, records, longest, soft, soft_mask)
