"""One bed's chain: its front end, model state, quality gate and detector, in one object.

The model call is the only step outside the chain: the windows of :meth:`BedChain.push` go through
``infer_beds`` batched over every bed of a round, and each window's frames back to
:meth:`BedChain.take` (docs/runtime.md, "One bed's chain"). A config value either takes effect or is
refused with a line that names the manifest rule that decides instead (:func:`resolve_detector`,
:func:`resolve_gate`)."""

from __future__ import annotations

import dataclasses
import functools
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.bed.agebands import age_band
from edge.bed.breathing import BreathTracker, bands_read, tracker_spec
from edge.bed.breathing_state import Respiration, RespirationConfig
from edge.bed.detector import MS_PER_S, DetectorConfig, FrameDetector, FrameGrid, Transition
from edge.bed.domain import SilentBands
from edge.bed.findings import HELD_FAMILIES, FindingTracker
from edge.bed.gate import GateConfig, QualityGate
from edge.bed.pipeline import DEFAULT_PIECE_SAMPLES, StreamPipeline, WindowReady
from edge.bed.rules import SPAN_SETTINGS, ClassThreshold
from edge.bed.verdict import RollingVerdict, VerdictConfig, VerdictRule
from edge.features import FeatureSpec
from edge.inference.manifest import Manifest, StreamingInfo
from edge.inference.streaming import BedState, OutputFrames
from edge.sources.base import SourceChunk
from lungwatch.errors import ConfigError
from lungwatch.labels import POOR_QUALITY

DEFAULT_STATE_RESET_GAP_MS = 100.0  # a loss this long restarts a bed's model state


def resolve_detector(
    config: DetectorConfig, manifest: Manifest, source: str = "<config>"
) -> DetectorConfig:
    """The detector a bed runs: the manifest's fitted rules with ``config`` on top; what is
    refused and why: docs/runtime.md, "Detector settings: the manifest's rules and a config's"
    (:class:`ConfigError` naming ``source``)."""
    phases = config.phases if config.phases is not None else manifest.detector_phases
    framed = set(phases.frame_classes) if phases is not None else None  # None: every class
    if phases is not None:
        _refuse_span_settings(config, manifest, source, framed or set())
    named = {rule.type for rule in config.thresholds}
    fitted = []
    for raw in manifest.detector_rules:
        if raw["type"] in named:
            continue
        rule = ClassThreshold(raw["type"], float(raw["on_threshold"]))
        spans = framed is None or raw["type"] in framed  # the span settings apply to it
        if spans:
            rule = dataclasses.replace(
                rule,
                **{key: float(raw[key]) for key in SPAN_SETTINGS},  # type: ignore[arg-type]
            )
        keys = ("on_threshold", *SPAN_SETTINGS) if spans else ("on_threshold",)
        fitted.append(_with_settings(rule, {k: getattr(config, k) for k in keys}, manifest, source))
    resolved = dataclasses.replace(config, thresholds=config.thresholds + tuple(fitted))
    for rule in resolved.thresholds:
        _check_rule(resolved, rule.type, manifest, source)
    findings = resolved.findings.with_manifest(manifest.detector_findings)
    return dataclasses.replace(resolved, phases=phases, findings=findings)


def _refuse_span_settings(
    config: DetectorConfig, manifest: Manifest, source: str, framed: set[str]
) -> None:
    """Refuse span settings that apply to no class of ``framed`` (phase mode)."""
    rule = f"{manifest.path}: detector.phases, an event spans its whole breath phase"
    for key in SPAN_SETTINGS:
        if getattr(config, key) is not None and not framed:
            raise ConfigError(f"{source}: detector.{key} does not apply ({rule}); remove it")
    for own in config.thresholds:
        for key in SPAN_SETTINGS:
            if getattr(own, key) is not None and own.type not in framed:
                raise ConfigError(
                    f"{source}: detector.thresholds[{own.type}].{key} does not apply ({rule}); "
                    "remove it"
                )


def _with_settings(
    rule: ClassThreshold, settings: dict[str, float | None], manifest: Manifest, source: str
) -> ClassThreshold:
    given: dict[str, Any] = {k: v for k, v in settings.items() if v is not None}
    off = given.get("off_threshold", rule.off_threshold)
    on = given.get("on_threshold", rule.on_threshold)
    if off is not None and off > on:
        raise ConfigError(
            f"{source}: detector.on_threshold {on} lies below {rule.type}'s off_threshold "
            f"{off} ({manifest.path}: detector.thresholds); set detector.off_threshold too"
        )
    return dataclasses.replace(rule, **given)


def _check_rule(config: DetectorConfig, type_: str, manifest: Manifest, source: str) -> None:
    """Refuse an off-threshold above its on-threshold (the detector would cap it silently)."""
    own = next(r for r in config.thresholds if r.type == type_)
    off = own.off_threshold if own.off_threshold is not None else config.off_threshold
    if off is not None and off > config.rule_of(type_).on_threshold:
        raise ConfigError(
            f"{source}: detector.off_threshold {off} lies above {type_}'s on_threshold "
            f"{config.rule_of(type_).on_threshold} ({manifest.path} or detector.thresholds)"
        )


def resolve_gate(config: GateConfig, manifest: Manifest, source: str = "<config>") -> GateConfig:
    """Poor Quality hysteresis from ``config`` where set, else the manifest's, else 0.6 / 0.4."""
    on, off = config.poor_quality_on_threshold, config.poor_quality_off_threshold
    fitted = manifest.quality_thresholds
    if fitted is not None:
        on = fitted[0] if on is None else on
        off = fitted[1] if off is None else off
    if on is not None and off is not None and off > on:
        raise ConfigError(
            f"{source}: gate.poor_quality_off_threshold {off} lies above the on-threshold {on} "
            f"({manifest.path}: quality, or the config)"
        )
    return dataclasses.replace(config, poor_quality_on_threshold=on, poor_quality_off_threshold=off)


@dataclass(frozen=True)
class ChainSettings:
    """What every bed of one model shares."""

    spec: FeatureSpec
    kinds: tuple[str, ...]
    streaming: StreamingInfo
    outputs: tuple[str, ...]
    detector: DetectorConfig
    gate: GateConfig
    grid: FrameGrid
    silent_bands: SilentBands | None  # bands the training recordings hold no sound in
    reset_gap_samples: float  # a window missing this many samples restarts the model state
    conceal_samples: int  # shorter losses are concealed in the features (StreamPipeline)
    verdict: VerdictRule | None = None  # the rolling Task 2-2 verdict (None: off)
    respiration: RespirationConfig | None = None  # rate and apnoea (None: off)

    @functools.cached_property
    def level_bands(self) -> int | None:
        if self.respiration is None:
            return None
        return bands_read(self.respiration, tracker_spec(self.spec))

    @classmethod
    def of(
        cls,
        manifest: Manifest,
        detector: DetectorConfig | None = None,
        gate: GateConfig | None = None,
        state_reset_gap_ms: float = DEFAULT_STATE_RESET_GAP_MS,
        source: str = "<config>",
        verdict: VerdictConfig | None = None,
        respiration: RespirationConfig | None = None,
    ) -> ChainSettings:
        spec, info = manifest.feature_spec, manifest.streaming
        reset = state_reset_gap_ms * spec.sample_rate_hz / MS_PER_S
        silent = None
        if info.flush is not None:
            silent = SilentBands.of(spec, manifest.kinds, np.asarray(info.flush))
        return cls(
            spec=spec,
            kinds=manifest.kinds,
            streaming=info,
            outputs=manifest.outputs,
            detector=resolve_detector(detector or DetectorConfig(), manifest, source),
            gate=resolve_gate(gate or GateConfig(), manifest, source),
            grid=FrameGrid.of(
                spec.sample_rate_hz, spec.hop_samples, spec.frame_samples, info.stride
            ),
            silent_bands=silent,
            reset_gap_samples=reset,
            conceal_samples=min(round(reset), DEFAULT_PIECE_SAMPLES),
            verdict=VerdictRule.of(manifest.task_rules, verdict or VerdictConfig()),
            respiration=_respiration(respiration or RespirationConfig(), spec, source),
        )


@dataclass(frozen=True)
class WindowStep:
    frames: OutputFrames  # the output frames it made known (none past the stream's end)
    transitions: list[Transition]  # the gate's and the detector's, in order
    quality: dict[str, Any]  # the audio measures of the window's new audio
    flushed: bool  # a window of the end-of-stream flush (no new audio)
    verdict: str | None = None  # the bed's new verdict when this window changed it
    respiration: Respiration | None = None  # the bed's breathing when this window analysed it


class BedChain:
    """``model_state``: the carried model context that the batched model call reads and advances."""

    def __init__(
        self, settings: ChainSettings, age_band_name: str | None = None, stagger: int = 0
    ) -> None:
        """``age_band_name`` None: the respiration config's; ``stagger``: see ``BreathTracker``."""
        s = self.settings = settings
        frames = s.streaming.input_frames
        levels = None if s.respiration is None else tracker_spec(s.spec)
        self.pipeline = StreamPipeline(
            s.spec,
            s.kinds,
            frames,
            frames,
            conceal_max_samples=s.conceal_samples,
            level_spec=levels,
            level_bands=s.level_bands,
        )
        self.gate = QualityGate(s.gate, s.spec.sample_rate_hz, s.silent_bands)
        self.model_state = BedState(s.streaming)
        self.detector = FrameDetector(s.outputs, s.detector, s.grid)
        self.findings = FindingTracker(s.detector.findings, s.spec.sample_rate_hz, Transition)
        self._monitored: deque[tuple[int, int]] = deque([(0, 0)])  # (end, monitored frames so far)
        self._monitored_frames = 0
        self.verdict = None if s.verdict is None else RollingVerdict(s.verdict, s.outputs, s.grid)
        self.breathing = None
        if s.respiration is not None:
            band = age_band(age_band_name or s.respiration.age_band)
            self.breathing = BreathTracker(
                s.respiration, tracker_spec(s.spec), s.grid, band, stagger=stagger
            )
        self._poor = s.outputs.index(POOR_QUALITY) if POOR_QUALITY in s.outputs else None
        self.state_resets = 0
        self.flushed = False  # the stream's end was flushed: no more audio

    def push(self, chunk: SourceChunk, now_s: float) -> tuple[list[Transition], list[WindowReady]]:
        return self.gate.observe(chunk, now_s), self.pipeline.push(chunk)

    def take(self, window: WindowReady, out: OutputFrames) -> WindowStep:
        """A window's output frames through gate, detector, findings, verdict and breathing; a
        window that lost enough audio restarts the model state."""
        quality = window.audio_quality.to_dict()
        if window.padded_frames > 0:  # the end-of-stream flush: no new audio to judge
            keep = max(0, min(out.probs.shape[0], self.network_frames - out.first_frame))
            out = OutputFrames(out.first_frame, out.probs[:keep])
            found = self._findings(self.detector.update(out.first_frame, out.probs), out)
            found += self._breathe(window, False)
            return WindowStep(out, found, quality, True, self._verdict(out), self._reading())
        poor_prob = None
        if self._poor is not None and len(out.probs):
            poor_prob = float(out.probs[:, self._poor].mean())
        transitions = self.gate.update(window, poor_prob)
        suppressed = self.detector.suppress(self.gate.suppressed)
        transitions += _ended_by(suppressed, "quality gate")
        transitions += self.detector.update(out.first_frame, out.probs)
        transitions = self._findings(transitions, out)
        transitions += self._breathe(window, self.gate.signal_lost)
        missing = window.hop_missing_samples
        if missing > 0 and missing >= self.settings.reset_gap_samples:
            # the model must not bridge lost audio (the gate reports it): restart at the next chunk
            info = self.model_state.info
            self.model_state.reset((window.start_frame + info.input_frames) // info.stride)
            self.state_resets += 1
        return WindowStep(out, transitions, quality, False, self._verdict(out), self._reading())

    def _findings(self, transitions: list[Transition], out: OutputFrames) -> list[Transition]:
        """The window's transitions through the finding episodes; its frames count towards
        the finding rate's time unless detection was suppressed."""
        n = out.probs.shape[0]
        if n == 0:
            return self.findings.take(transitions, self._last_sample)
        end = self.settings.grid.end_sample(out.first_frame + n - 1)
        if not self.detector.suppressed:
            self._monitored_frames += n
        self._monitored.append((end, self._monitored_frames))
        floor = end - self.findings.config.rate_window_s * self.settings.spec.sample_rate_hz
        while len(self._monitored) > 1 and self._monitored[1][0] <= floor:
            self._monitored.popleft()
        return self.findings.take(transitions, end)

    @property
    def _last_sample(self) -> int:
        return self._monitored[-1][0]

    def finding_rates(self) -> dict[str, float | None]:
        """Each family's finding rate now (:mod:`edge.bed.findings`); None before monitored time."""
        if len(self._monitored) < 2:
            return dict.fromkeys(HELD_FAMILIES)
        (_, first), (end, last) = self._monitored[0], self._monitored[-1]
        samples = (last - first) * self.settings.grid.frame_samples
        return {f: self.findings.rate(f, end, samples) for f in HELD_FAMILIES}

    def _breathe(self, window: WindowReady, lost: bool) -> list[Transition]:
        if self.breathing is None:
            return []
        real = window.features.shape[2] - window.padded_frames
        return self.breathing.push(window.level_frames, real, lost)

    def _reading(self) -> Respiration | None:
        """The bed's breathing when the last window analysed it anew, else None."""
        tracker = self.breathing
        if tracker is None or tracker.readings_due == 0:
            return None
        tracker.readings_due = 0
        return tracker.reading

    def _verdict(self, out: OutputFrames) -> str | None:
        return None if self.verdict is None else self.verdict.update(out.first_frame, out.probs)

    def tick(self, now_s: float) -> list[Transition]:
        """The runtime's clock: a source that delivered nothing for too long has stalled."""
        return self.gate.tick(now_s)

    def flush(self) -> list[WindowReady]:
        """After the stream's last chunk: the windows that describe its last frames, fed with
        the manifest's flush frame (none without one or without audio)."""
        info = self.settings.streaming
        self.flushed = True
        if info.flush is None:
            return []
        through = (self.network_frames + info.lookahead_frames) * info.stride
        return self.pipeline.flush(np.asarray(info.flush, np.float32), through)

    def finish(self, why: str) -> list[Transition]:
        """Every open event ends (latched ones too), ``ended_by`` ``why``."""
        breathing = [] if self.breathing is None else self.breathing.finish()
        sounds = self.findings.finish(self.detector.finish(), why)
        return _ended_by(sounds + self.gate.finish() + breathing, why)

    def acknowledge(self, target: str) -> list[Transition]:
        """Acknowledge the events whose type or key is ``target``; latched ones end now."""
        sounds = self.findings.take(self.detector.acknowledge(target), self._last_sample)
        done = sounds + self.gate.acknowledge(target)
        if self.breathing is not None:
            done += self.breathing.acknowledge(target)
        return _ended_by(done, "acknowledge")

    @property
    def network_frames(self) -> int:
        """Output frames with real audio in them (the last may be partly padding)."""
        return -(-self.pipeline.frames_complete // self.settings.streaming.stride)


def _respiration(
    config: RespirationConfig, spec: FeatureSpec, source: str
) -> RespirationConfig | None:
    if not config.enabled:
        return None
    try:
        bands_read(config, tracker_spec(spec))
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc} (or set respiration.enabled: false)") from None
    return config


def _ended_by(transitions: list[Transition], why: str) -> list[Transition]:
    return [dataclasses.replace(t, ended_by=why) for t in transitions]
