"""Events of whole recordings by the device's own path: :func:`detect_recordings` runs each
recording as one bed of a Monitor, exactly as the runtime runs a bed, fed in reads of
:data:`READ_SAMPLES` as a file source would, beds batched into one model call. Events come
back as ``{"start_s", "end_s", "type", "confidence"}`` on the recording's own timeline
(technical ones: ``reason`` instead of ``confidence``); ``keep_probs`` keeps the output frames
the challenge tasks are computed from (:mod:`training.scoring.tasks`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.audio import AUDIO_SUFFIXES, audio_files_under, read_audio
from edge.bed.breathing_state import RespirationConfig
from edge.bed.detector import DetectorConfig
from edge.bed.gate import GateConfig
from edge.bed.verdict import VerdictConfig
from edge.inference import BackendConfig
from edge.inference.streaming import OutputFrames
from edge.monitor import BedStep, Monitor, joined_frames
from lungwatch.errors import AudioError, ConfigError, LungwatchError

READ_SAMPLES = 8000  # samples per read from each recording (1 s at 8 kHz): unpaced, so any size
BEDS_AT_ONCE = 256  # recordings held in memory and batched together


class OfflineError(LungwatchError, ValueError):
    """Recordings that cannot be run (none, two with one name, an unreadable file)."""


@dataclass(frozen=True)
class RecordingEvents:
    physiological: list[dict[str, Any]] = field(default_factory=list)
    technical: list[dict[str, Any]] = field(default_factory=list)
    probs: np.ndarray | None = None  # (n, O) output frames, when kept
    error: str | None = None  # why the recording could not be read (skip_unreadable)
    verdict: str | None = None  # the bed's rolling verdict at the recording's end
    respiration: dict[str, Any] | None = None  # its breathing (BreathTracker.summary)
    # its finding episodes (edge.bed.findings): {"type": "CAS" | "DAS", "start_s", "end_s",
    # "confidence", "opened_s"} (opened_s: when the device announced it)
    findings: list[dict[str, Any]] = field(default_factory=list)


class FrameKeeper:
    """The runtime's ``on_frames`` hook: every bed's frames, in order, with ``perf_counter``."""

    def __init__(self) -> None:
        self.parts: dict[str, list[tuple[OutputFrames, float]]] = {}

    def __call__(self, stream: Any, frames: OutputFrames) -> None:
        if frames.probs.shape[0]:
            self.parts.setdefault(stream.id, []).append((frames, time.perf_counter()))

    def probs(self, stream_id: str, n_outputs: int) -> np.ndarray:
        """(n, O) of one bed; frames the model never described (a state reset) stay NaN."""
        return joined_frames([p for p, _ in self.parts.get(stream_id, [])], n_outputs, 0)[1]

    def times(self, stream_id: str) -> np.ndarray:
        """(n,) when each of one bed's frames arrived; NaN for those never described."""
        parts = self.parts.get(stream_id, [])
        end = max((p.first_frame + p.probs.shape[0] for p, _ in parts), default=0)
        out = np.full(end, np.nan, np.float64)
        for p, when in parts:
            out[p.first_frame : p.first_frame + p.probs.shape[0]] = when
        return out


def recordings_in(paths: Sequence[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in paths:
        if path.is_dir():
            files = audio_files_under(path)
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
    verdict: VerdictConfig | None = None,
    respiration: RespirationConfig | None = None,
    age_bands: Mapping[str, str] | None = None,
) -> dict[str, RecordingEvents]:
    """The config sections default to the manifest's rules, the backend to ONNX Runtime on CPU,
    one thread; ``age_bands``: record name -> band (the section's for the others). An unreadable
    recording raises ConfigError, or with ``skip_unreadable`` comes back with ``error`` set."""
    monitor = Monitor.load(
        Path(model_dir) / model_file,
        detector=detector,
        gate=gate,
        backend=backend or BackendConfig(providers=("cpu",), intra_op_threads=1, max_batch=64),
        source=str(Path(model_dir) / model_file),
        verdict=verdict,
        respiration=respiration,
    )
    names = sorted(recordings)
    out: dict[str, RecordingEvents] = {}
    with monitor:
        for start in range(0, len(names), BEDS_AT_ONCE):
            audio: dict[str, np.ndarray] = {}
            for name in names[start : start + BEDS_AT_ONCE]:
                try:
                    audio[name] = read_audio(
                        recordings[name], target_rate_hz=monitor.sample_rate_hz
                    ).samples
                except AudioError as exc:
                    if not skip_unreadable:
                        raise ConfigError(str(exc)) from None
                    out[name] = RecordingEvents(error=str(exc))
            out.update(_run(monitor, audio, keep_probs, age_bands or {}))
    return out


def _run(
    monitor: Monitor, audio: dict[str, np.ndarray], keep_probs: bool, age_bands: Mapping[str, str]
) -> dict[str, RecordingEvents]:
    beds = {name: monitor.open_bed(name, age_bands.get(name)) for name in audio}
    steps: dict[str, list[BedStep]] = {name: [] for name in audio}
    longest = max((a.shape[0] for a in audio.values()), default=0)
    for pos in range(0, longest, READ_SAMPLES):
        reads = {beds[n]: a[pos : pos + READ_SAMPLES] for n, a in audio.items() if pos < a.shape[0]}
        for bed, step in monitor.push(reads).items():
            steps[bed.id].append(step)
    for bed, step in monitor.close_beds(beds.values()).items():
        steps[bed.id].append(step)
    n_outputs = len(monitor.outputs)
    out = {}
    for name, found in steps.items():
        record = _events(found, n_outputs if keep_probs else None)
        for finding in record.findings:  # when the device announced it: the stream's place
            frame = finding.pop("opened_frame")
            at = None if frame is None else monitor.grid.end_sample(max(frame - 1, 0))
            finding["opened_s"] = None if at is None else round(at / monitor.sample_rate_hz, 4)
        breathing = beds[name].chain.breathing
        if breathing is not None:  # every analysis' reading once, as the stream gave them
            readings = list({id(s.respiration): s.respiration for s in found
                             if s.respiration is not None}.values())  # fmt: skip
            record = dataclasses.replace(record, respiration=breathing.summary(readings))
        out[name] = record
    return out


def _events(steps: list[BedStep], n_outputs: int | None) -> RecordingEvents:
    probs = None if n_outputs is None else joined_frames(steps, n_outputs, first=0)[1]
    record = RecordingEvents(probs=probs, verdict=steps[-1].verdict if steps else None)
    opened: dict[str, float] = {}  # a finding episode's key -> where the stream was at onset
    for step in steps:
        heard = step.first_frame + step.probs.shape[0]
        for e in step.events:
            if e.kind == "finding" and e.state == "onset":
                opened[e.key] = heard
    for event in (e for step in steps for e in step.events):
        if event.state != "ended" or event.end_s is None:
            continue
        confidence = round(min(max(float(event.confidence or 0.0), 0.0), 1.0), 4)
        if event.kind == "finding":
            record.findings.append({
                "type": event.type, "start_s": round(event.start_s, 4),
                "end_s": round(event.end_s, 4), "confidence": confidence,
                "events": int(event.reason.split()[0]) if event.reason else 0,
                "opened_frame": opened.get(event.key),
            })  # fmt: skip
            continue
        item: dict[str, Any] = {"start_s": round(event.start_s, 4), "end_s": round(event.end_s, 4)}
        item["type"] = event.type
        if event.kind == "physiological":
            item["confidence"] = confidence
            record.physiological.append(item)
        else:
            if event.reason:
                item["reason"] = event.reason
            record.technical.append(item)
    for rows in (record.physiological, record.technical, record.findings):
        rows.sort(key=lambda e: (e["start_s"], e["type"]))
    return record
