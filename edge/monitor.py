"""The public streaming API: load a model once, push audio chunks for one bed or many (usage:
docs/runtime.md, "The Python API").

Every bed runs exactly what a bed of ``lungwatch run`` runs (:class:`edge.bed.chain.BedChain`).
A push may give nothing (the model describes audio in whole chunks) and never gives an output
twice; chunks of any size give the same events."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.bed.breathing_state import Respiration, RespirationConfig
from edge.bed.chain import DEFAULT_STATE_RESET_GAP_MS, BedChain, ChainSettings, WindowStep
from edge.bed.detector import DetectorConfig, FrameGrid, Transition
from edge.bed.gate import GateConfig
from edge.bed.pipeline import WindowReady
from edge.bed.verdict import VerdictConfig
from edge.inference import BackendConfig, open_backend
from edge.inference.base import Backend
from edge.inference.manifest import MANIFEST_NAME, Manifest, load_manifest, verify_file
from edge.inference.streaming import OutputFrames, infer_beds
from edge.sources.base import SourceChunk
from lungwatch.errors import ConfigError, LungwatchError

DEFAULT_MODEL = Path("models/sed")
PREFERRED_FILES = ("model.int8.onnx", "model.onnx")  # what a model folder runs, in order


class MonitorError(LungwatchError, ValueError):
    """The model cannot be opened, or a bed was fed something it cannot take."""


def resolve_model(model: str | Path) -> tuple[Path, str]:
    """A model folder or an artifact its manifest lists -> (folder, file name); a checkpoint is
    refused with the command that exports it."""
    path = Path(model)
    if path.suffix == ".pt":
        raise ConfigError(
            f"{path}: a training checkpoint; export it first (lungwatch export --checkpoint "
            f"{path} --out DIR) and give DIR"
        )
    folder = path if path.is_dir() else path.parent
    if not path.exists():
        raise ConfigError(f"{path}: no such model file or folder")
    files = load_manifest(folder / MANIFEST_NAME).runnable
    if path.is_dir():
        for name in PREFERRED_FILES:
            if name in files:
                return folder, name
        raise ConfigError(f"{folder / MANIFEST_NAME}: lists none of {', '.join(PREFERRED_FILES)}")
    if path.name not in files:
        raise ConfigError(
            f"{path}: not a model listed in {folder / MANIFEST_NAME} (lists {', '.join(files)})"
        )
    return folder, path.name


@dataclass(frozen=True)
class BedEvent:
    """One change of one event of a bed: ``state`` onset, ongoing or ended; times on the bed's
    own timeline (seconds since its first sample); ``end_s`` None while it lasts."""

    type: str  # "Fine Crackle", "Wheeze", ... or a technical type ("poor_signal", ...)
    kind: str  # "physiological" | "technical" | "finding" (a finding episode: edge.bed.findings)
    state: str  # "onset" | "ongoing" | "ended"
    priority: str
    start_s: float
    end_s: float | None
    confidence: float | None  # peak probability of a physiological event
    key: str  # stable identity: "<type>@<start sample>"
    reason: str = ""  # technical events: what the gate measured or the source reported
    latched: bool = False  # condition over, alarm held until acknowledged
    ended_by: str = ""  # an ending not of its own: "quality gate", "end of stream", ...

    @classmethod
    def of(cls, t: Transition, rate_hz: int) -> BedEvent:
        end = None if t.end_sample is None else t.end_sample / rate_hz
        physiological = t.kind in ("physiological", "finding")
        return cls(
            t.type, t.kind, t.state, t.priority, t.start_sample / rate_hz, end,
            t.confidence if physiological else None, t.key, t.reason, t.latched, t.ended_by,
        )  # fmt: skip


@dataclass(frozen=True)
class BedQuality:
    suppressed: bool  # physiological detection is held off (a technical condition holds)
    conditions: tuple[str, ...]  # the technical events open now ("poor_signal", ...)
    measures: dict[str, Any]  # the audio measures of the last window judged (edge.bed.quality)


@dataclass(frozen=True)
class BedStep:
    """What one push (or the close) of one bed gave."""

    events: list[BedEvent]
    first_frame: int  # output frame of probs[0] (monitor.grid: where a frame lies)
    probs: np.ndarray  # (n, O) the output frames made known, columns monitor.outputs; NaN
    # rows: frames the model never described (its state restarted after lost audio)
    quality: BedQuality
    verdict: str | None = None  # the bed's rolling verdict now (None: the model has no rule)
    respiration: Respiration | None = None  # the bed's breathing now (None: respiration off)


class Bed:
    def __init__(
        self, monitor: Monitor, bed_id: str, age_band: str | None = None, stagger: int = 0
    ) -> None:
        self.monitor, self.id = monitor, bed_id
        self.chain = BedChain(monitor.settings, age_band, stagger)
        self.samples = 0  # pushed so far: the next chunk's first sample
        self.closed = False
        self._measures: dict[str, Any] = {}

    def push(self, audio: np.ndarray) -> BedStep:
        """Feed a chunk of audio (1-D, float32 at ``monitor.sample_rate_hz``)."""
        return self.monitor.push({self: audio})[self]

    def close(self) -> BedStep:
        """The stream ended: its last frames are described and every open event ends."""
        return self.monitor.close_beds([self])[self]


class Monitor:
    def __init__(
        self, manifest: Manifest, model_file: str, backend: Backend, settings: ChainSettings
    ) -> None:
        self.manifest, self.model_file = manifest, model_file
        self.backend, self.settings = backend, settings
        self.sha256 = manifest.files[model_file].sha256

    @classmethod
    def load(
        cls,
        model: str | Path = DEFAULT_MODEL,
        *,
        detector: DetectorConfig | None = None,
        gate: GateConfig | None = None,
        backend: BackendConfig | None = None,
        state_reset_gap_ms: float = DEFAULT_STATE_RESET_GAP_MS,
        check_sha256: bool = True,
        source: str = "<config>",
        verdict: VerdictConfig | None = None,
        respiration: RespirationConfig | None = None,
    ) -> Monitor:
        """A model folder (its INT8 file, else FP32) or an artifact it lists, on ``backend``
        (default: ONNX Runtime on one CPU thread), with the manifest's fitted rules and the
        ``detector`` / ``gate`` settings given on top. Errors name ``source``."""
        folder, file = resolve_model(model)
        manifest = load_manifest(folder / MANIFEST_NAME)
        settings = ChainSettings.of(
            manifest, detector, gate, state_reset_gap_ms, source, verdict, respiration
        )
        path = manifest.file_path(file)
        if check_sha256:
            verify_file(manifest, path)
        opened = open_backend(backend or BackendConfig(), path)
        try:
            _check_backend(opened, manifest, path)
        except MonitorError:
            opened.close()
            raise
        return cls(manifest, file, opened, settings)

    @property
    def sample_rate_hz(self) -> int:
        return self.settings.spec.sample_rate_hz

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.settings.outputs

    @property
    def grid(self) -> FrameGrid:
        """Where output frame ``j`` lies on a bed's sample timeline."""
        return self.settings.grid

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    def open_bed(self, bed_id: str = "bed", age_band: str | None = None, stagger: int = 0) -> Bed:
        """A new bed at sample 0, model state zero. ``age_band``: one of
        :data:`edge.bed.agebands.AGE_BAND_NAMES` (None: the respiration config's); ``stagger``:
        its index among beds that start together, so their breath analyses spread over time."""
        return Bed(self, bed_id, age_band, stagger)

    def process(self, ready: Sequence[tuple[BedChain, WindowReady]]) -> list[WindowStep]:
        """The windows of many beds through the model in one batched call; one step per
        window, in order. A bed's windows must be consecutive in ``ready``."""
        frames = infer_beds(self.backend, [(chain.model_state, w.features) for chain, w in ready])
        return [chain.take(w, out) for (chain, w), out in zip(ready, frames, strict=True)]

    def push(self, chunks: Mapping[Bed, np.ndarray]) -> dict[Bed, BedStep]:
        """A chunk for each of several beds, their windows in one model call."""
        now = time.monotonic()
        transitions: dict[Bed, list[Transition]] = {}
        windows: dict[Bed, list[WindowReady]] = {}
        for bed, audio in chunks.items():
            chunk = self._chunk(bed, audio)
            transitions[bed], windows[bed] = bed.chain.push(chunk, now)
            bed.samples += chunk.samples.shape[0]
        return self._steps(transitions, windows)

    def close_beds(self, beds: Iterable[Bed]) -> dict[Bed, BedStep]:
        """End several beds' streams (see :meth:`Bed.close`), their last windows in one call."""
        beds = [bed for bed in beds if not bed.closed]
        steps = self._steps({bed: [] for bed in beds}, {bed: bed.chain.flush() for bed in beds})
        for bed in beds:
            bed.closed = True
            ended = [BedEvent.of(t, self.sample_rate_hz) for t in bed.chain.finish("end of stream")]
            steps[bed].events.extend(ended)
            steps[bed] = _with_quality(steps[bed], bed)
        return steps

    def _chunk(self, bed: Bed, audio: np.ndarray) -> SourceChunk:
        if bed.monitor is not self:
            raise MonitorError(f"bed {bed.id!r} belongs to another Monitor")
        if bed.closed:
            raise MonitorError(f"bed {bed.id!r} is closed; open a new bed for a new stream")
        samples = np.asarray(audio)
        if samples.ndim != 1 or not np.issubdtype(samples.dtype, np.number):
            raise MonitorError(
                f"bed {bed.id!r}: audio must be a 1-D array of numbers (mono, "
                f"{self.sample_rate_hz} Hz), got {samples.dtype} of shape {samples.shape}"
            )
        return SourceChunk(samples=samples.astype(np.float32, copy=False), first_sample=bed.samples)

    def _steps(
        self, transitions: dict[Bed, list[Transition]], windows: dict[Bed, list[WindowReady]]
    ) -> dict[Bed, BedStep]:
        rate = self.sample_rate_hz
        events = {bed: [BedEvent.of(t, rate) for t in found] for bed, found in transitions.items()}
        frames: dict[Bed, list[OutputFrames]] = {bed: [] for bed in events}
        owners = [bed for bed, found in windows.items() for _ in found]
        ready = [(bed.chain, w) for bed, found in windows.items() for w in found]
        for bed, step in zip(owners, self.process(ready), strict=True):
            events[bed] += [BedEvent.of(t, rate) for t in step.transitions]
            frames[bed].append(step.frames)
            if not step.flushed:
                bed._measures = step.quality
        n_outputs = len(self.outputs)
        steps = {}
        for bed in events:
            first, probs = joined_frames(frames[bed], n_outputs)
            steps[bed] = _with_quality(BedStep(events[bed], first, probs, _NO_QUALITY), bed)
        return steps

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the model (its beds cannot be pushed afterwards)."""
        self.backend.close()


_NO_QUALITY = BedQuality(False, (), {})


def _with_quality(step: BedStep, bed: Bed) -> BedStep:
    gate = bed.chain.gate
    conditions = tuple(sorted({key.split("@", 1)[0] for key in gate.active_keys}))
    quality = BedQuality(gate.suppressed, conditions, dict(bed._measures))
    verdict = None if bed.chain.verdict is None else bed.chain.verdict.label
    breathing = bed.chain.breathing
    respiration = None if breathing is None else breathing.reading
    return BedStep(step.events, step.first_frame, step.probs, quality, verdict, respiration)


def joined_frames(
    parts: Sequence[OutputFrames | BedStep], n_outputs: int, first: int | None = None
) -> tuple[int, np.ndarray]:
    """Consecutive output frames as one (n, O) array from frame ``first`` (None: the first
    part's) and that frame; frames no part holds (a state restart) are NaN rows."""
    parts = [p for p in parts if p.probs.shape[0]]
    if first is None:
        first = parts[0].first_frame if parts else 0
    end = max((p.first_frame + p.probs.shape[0] for p in parts), default=first)
    out = np.full((end - first, n_outputs), np.nan, np.float32)
    for p in parts:
        out[p.first_frame - first : p.first_frame - first + p.probs.shape[0]] = p.probs
    return first, out


def _check_backend(backend: Backend, manifest: Manifest, path: Path) -> None:
    if tuple(backend.input_shape) != tuple(manifest.input_shape):
        raise MonitorError(
            f"{path}: model input {backend.input_shape} differs from the manifest's "
            f"{manifest.input_shape}"
        )
    info = manifest.streaming
    expected = (info.state_size, (len(manifest.outputs), info.chunk_frames))
    if (backend.state_size, backend.output_shape) != expected:
        raise MonitorError(
            f"{path}: model state {backend.state_size} and outputs {backend.output_shape} "
            f"differ from the manifest's"
        )
