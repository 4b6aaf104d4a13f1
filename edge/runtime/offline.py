"""Events of whole recordings computed by the device's own path.

:func:`detect_recordings` runs recordings through exactly what a bed runs (file source,
ring buffer and streaming front end, the streaming model on the configured backend with its
state carried chunk to chunk, the quality gate, :class:`edge.bed.detector.FrameDetector` with the
manifest's fitted rules): one :class:`edge.runtime.loop.Runtime` with one bed per recording,
unpaced, no sinks but a collector. Each recording's physiological events come back as
``{"start_s", "end_s", "type", "confidence"}`` (types spelled as SPRSound spells them,
``start_s``/``end_s`` on the recording's own timeline, confidence the episode's peak
probability), and its technical events (``poor_signal``, ``silence``, ...) as
``{"start_s", "end_s", "type", "reason"}`` (reason: what the gate measured at onset).
With ``keep_probs=True`` each recording also keeps the model's output frames as the detector
saw them (``probs`` (n, O), row ``j`` = frame ``j`` of :class:`edge.bed.detector.FrameGrid`,
columns the manifest's ``outputs``): the challenge tasks are computed from them
(:mod:`training.scoring.tasks`).
``lungwatch detect --audio DIR`` (``training/detect.py``) writes them; the yardstick in
``../shared/tools`` scores the same events from a real ``lungwatch run``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.audio import AUDIO_SUFFIXES
from edge.bed.detector import DetectorConfig
from edge.bed.gate import GateConfig
from edge.errors import LungwatchError
from edge.events import Event
from edge.inference import BackendConfig
from edge.inference.streaming import OutputFrames
from edge.runtime.config import ModelConfig, RuntimeConfig, SinksConfig, StreamConfig

READ_SAMPLES = 8000  # samples per read from each recording (1 s at 8 kHz): unpaced, so any size


class OfflineError(LungwatchError, ValueError):
    """Recordings that cannot be run (none, two with one name, an unreadable file)."""


@dataclass(frozen=True)
class RecordingEvents:
    """What the device said about one recording."""

    physiological: list[dict[str, Any]] = field(default_factory=list)
    technical: list[dict[str, Any]] = field(default_factory=list)
    probs: np.ndarray | None = None  # (n, O) output frames, when kept
    error: str | None = None  # why the recording could not be read (skip_unreadable)


class FrameKeeper:
    """Every bed's output frames, in order, and when each arrived (``time.perf_counter``):
    the runtime's ``on_frames`` hook."""

    def __init__(self) -> None:
        self.parts: dict[str, list[tuple[OutputFrames, float]]] = {}

    def __call__(self, stream: Any, frames: OutputFrames) -> None:
        if frames.probs.shape[0]:
            self.parts.setdefault(stream.id, []).append((frames, time.perf_counter()))

    def _frames(self, stream_id: str) -> int:
        parts = self.parts.get(stream_id, [])
        return max((p.first_frame + p.probs.shape[0] for p, _ in parts), default=0)

    def probs(self, stream_id: str, n_outputs: int) -> np.ndarray:
        """(n, O) of one bed; frames the model never described (a state reset) stay NaN."""
        out = np.full((self._frames(stream_id), n_outputs), np.nan, np.float32)
        for p, _ in self.parts.get(stream_id, []):
            out[p.first_frame : p.first_frame + p.probs.shape[0]] = p.probs
        return out

    def times(self, stream_id: str) -> np.ndarray:
        """(n,) when each of one bed's frames arrived; NaN for those never described."""
        out = np.full(self._frames(stream_id), np.nan)
        for p, when in self.parts.get(stream_id, []):
            out[p.first_frame : p.first_frame + p.probs.shape[0]] = when
        return out


class _Collector:
    """A sink that keeps every event in memory (the runtime's :class:`edge.sinks.Sink`)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)

    def publish_metrics(self, stream_id: str, metrics: dict[str, Any]) -> None:
        pass

    def flush(self, timeout_s: float) -> bool:
        return True

    def close(self) -> None:
        pass


def recordings_in(paths: Sequence[Path]) -> dict[str, Path]:
    """Record name (file stem) -> audio file for files and folders (searched recursively for
    :data:`edge.audio.AUDIO_SUFFIXES`); two files with one stem are refused, naming both."""
    found: dict[str, Path] = {}
    for path in paths:
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
            )
            if not files:
                raise OfflineError(f"{path}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in it")
        elif path.is_file():
            files = [path]
        else:
            raise OfflineError(f"{path}: no such file or folder")
        for file in files:
            if file.stem in found and found[file.stem] != file:
                raise OfflineError(
                    f"two recordings named {file.stem!r}: {found[file.stem]} and {file}"
                )
            found[file.stem] = file
    if not found:
        raise OfflineError("no recordings given")
    return found


def detect_recordings(
    recordings: dict[str, Path],
    model_dir: Path,
    model_file: str,
    *,
    detector: DetectorConfig | None = None,
    gate: GateConfig | None = None,
    backend: BackendConfig | None = None,
    keep_probs: bool = False,
    skip_unreadable: bool = False,
) -> dict[str, RecordingEvents]:
    """Run every recording as one bed through the device path (module doc); record name ->
    its events. ``detector`` / ``gate`` / ``backend`` are the runtime config's sections
    (defaults: the runtime's defaults, so the manifest's fitted rules and quality thresholds
    apply); ``keep_probs`` keeps every recording's output frames.
    An unreadable recording fails the call (:class:`~edge.errors.ConfigError` naming it), or
    with ``skip_unreadable`` the others run and it comes back with no events and ``error``
    set."""
    from edge.runtime.loop import Runtime, open_model, open_streams

    names = sorted(recordings)
    streams = tuple(
        StreamConfig(
            id=f"rec-{i}",
            source=str(recordings[name]),
            realtime=False,
            loop=False,
            chunk_samples=READ_SAMPLES,
        )
        for i, name in enumerate(names)
    )
    config = RuntimeConfig(
        streams=streams,
        model=ModelConfig(dir=str(model_dir), file=model_file),
        backend=backend or BackendConfig(providers=("cpu",), intra_op_threads=1, max_batch=64),
        detector=detector or DetectorConfig(),
        gate=gate or GateConfig(),
        sinks=SinksConfig(stdout=False, jsonl=None, mqtt=False),
        idle_sleep_s=0.0,
    )
    source = f"{model_dir / model_file}"
    model = open_model(config, source)
    keeper = FrameKeeper() if keep_probs else None
    unopened: dict[int, str] | None = {} if skip_unreadable else None
    collector = _Collector()
    try:
        opened = open_streams(config, model, source, unopened)
        try:
            if opened:
                runtime = Runtime(config, model, opened, collector, on_frames=keeper)
                runtime.run(threading.Event())
        finally:
            for stream in opened:
                stream.source.close()
    finally:
        model.backend.close()
    rate = model.manifest.feature_spec.sample_rate_hz
    by_stream = {s.id: name for s, name in zip(streams, names, strict=True)}
    n_outputs = len(model.manifest.outputs)
    errors = {names[i]: message for i, message in (unopened or {}).items()}
    out = {
        name: RecordingEvents(error=errors[name])
        if name in errors
        else RecordingEvents(probs=None if keeper is None else keeper.probs(stream.id, n_outputs))
        for stream, name in zip(streams, names, strict=True)
    }
    for event in collector.events:
        if event.state != "ended" or event.start_sample is None or event.end_sample is None:
            continue
        item: dict[str, Any] = {
            "start_s": round(event.start_sample / rate, 4),
            "end_s": round(event.end_sample / rate, 4),
            "type": event.type,
        }
        record = out[by_stream[event.stream_id]]
        if event.kind == "physiological":
            item["confidence"] = round(float(event.confidence or 0.0), 4)
            record.physiological.append(item)
        else:
            if event.detail.get("reason"):
                item["reason"] = str(event.detail["reason"])
            record.technical.append(item)
    for record in out.values():
        record.physiological.sort(key=lambda e: (e["start_s"], e["type"]))
        record.technical.sort(key=lambda e: (e["start_s"], e["type"]))
    return out
