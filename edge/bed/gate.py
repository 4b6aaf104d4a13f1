"""The quality gate: technical events of one stream, and whether detection is suppressed.

Call :meth:`QualityGate.observe` on every chunk before ``pipeline.push``, and
:meth:`QualityGate.update` on every window after inference, before the detector reads
:attr:`QualityGate.suppressed` for the same window. Each technical type's condition, when it is
announced and when detection is suppressed: docs/events.md, "Technical types"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, NamedTuple

from pydantic import Field, NonNegativeFloat, PositiveFloat

from edge.bed.detector import (
    EventTracker,
    Lifecycle,
    Priority,
    Transition,
    hysteresis_step,
    ms_to_samples,
    priority_table,
)
from edge.bed.domain import SilentBands
from edge.bed.pipeline import WindowReady
from edge.bed.quality import CLIPPING_FRACTION_LIMIT, QUIET_DBFS
from edge.bed.rules import TypePriority, check_priorities, check_thresholds
from edge.sources.base import Notice, SourceChunk
from lungwatch.config import Settings, Share, check
from lungwatch.events import DEFAULT_PRIORITIES as EVENT_PRIORITIES

POOR_SIGNAL = "poor_signal"
OFF_BODY = "off_body"
CLIPPING = "clipping"
SILENCE = "silence"
INVALID_SAMPLES = "invalid_samples"
SIGNAL_GAP = "signal_gap"
SOURCE_STALLED = "source_stalled"
TECHNICAL_TYPES: tuple[str, ...] = (
    POOR_SIGNAL,
    OFF_BODY,
    CLIPPING,
    SILENCE,
    INVALID_SAMPLES,
    SIGNAL_GAP,
    SOURCE_STALLED,
)
_GAP_NOTICES = ("overflow", "signal_gap")
#: conditions in which the stethoscope hears nothing of the patient (a lost datagram, a gap
#: of less than half the hop, is not one of them)
LOST_SIGNAL_TYPES: tuple[str, ...] = (OFF_BODY, SILENCE, INVALID_SAMPLES)
DEFAULT_POOR_QUALITY_ON = 0.6  # the quality output's hysteresis when neither config nor manifest
DEFAULT_POOR_QUALITY_OFF = 0.4  # sets one
MOSTLY_MISSING = 0.5  # a hop missing more than this is not judged for level or spectrum

DEFAULT_TECHNICAL_PRIORITIES = tuple(TypePriority(t, EVENT_PRIORITIES[t]) for t in TECHNICAL_TYPES)


@dataclass(frozen=True)
class GateConfig(Settings):
    """Thresholds of the technical conditions (docs/events.md, "Technical types")."""

    # edge.bed.quality score below this: poor_signal
    poor_score_limit: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    # Poor Quality probability: on at >= on, off below off (None: edge.bed.chain.resolve_gate's)
    poor_quality_on_threshold: float | None = None
    poor_quality_off_threshold: float | None = None
    # hop RMS at or below this (dBFS): silence
    silence_dbfs: Annotated[float, Field(ge=-120.0, lt=0.0)] = QUIET_DBFS
    # clipped share of the hop
    clipping_fraction_limit: Annotated[float, Field(gt=0, le=1)] = CLIPPING_FRACTION_LIMIT
    max_missing_fraction: Share = 0.25  # suppress detection while a window misses more
    stall_timeout_s: PositiveFloat = 2.0  # no audio for longer: source_stalled
    min_condition_ms: NonNegativeFloat = 500.0  # clipping, silence must last this long
    # poor_signal must last this long: on validation 1 s keeps the Poor Quality records found
    # at 0.5 s and halves the good ones flagged (docs/models/sed-lab.md)
    poor_signal_min_ms: NonNegativeFloat = 1000.0
    clear_after_ms: NonNegativeFloat = 1000.0  # a condition back within this continues its event
    ongoing_every_ms: NonNegativeFloat = 0.0  # repeat `ongoing` this often while active; 0: never
    default_priority: Priority = "low"  # types not listed in `priorities`
    priorities: tuple[TypePriority, ...] = DEFAULT_TECHNICAL_PRIORITIES
    latching: tuple[Priority, ...] = ("high",)  # priorities that stay active until acknowledged

    def __post_init__(self) -> None:
        check_thresholds(
            self.poor_quality_on_threshold, self.poor_quality_off_threshold, "poor_quality_"
        )
        unknown = [rule.type for rule in self.priorities if rule.type not in TECHNICAL_TYPES]
        check(not unknown, "priorities", unknown, f"types among {TECHNICAL_TYPES}")
        check_priorities(self.priorities, self.latching)

    @property
    def poor_quality_thresholds(self) -> tuple[float, float]:
        """(on, off) of the quality output (off <= on)."""
        on = self.poor_quality_on_threshold
        on = DEFAULT_POOR_QUALITY_ON if on is None else on
        off = self.poor_quality_off_threshold
        return on, min(on, DEFAULT_POOR_QUALITY_OFF) if off is None else off


class _Reading(NamedTuple):
    """One technical condition in one hop; its reason is written only where it holds (a
    tracker reads it at an onset alone), so a quiet hop formats no text."""

    type: str
    active: bool
    reason: str = ""
    confidence: float = 1.0


class QualityGate:
    """Technical events of one stream; :attr:`suppressed` gates the physiological detector."""

    def __init__(
        self, config: GateConfig, sample_rate_hz: int, silent_bands: SilentBands | None = None
    ) -> None:
        self.config = config
        self.sample_rate_hz = sample_rate_hz
        self.silent_bands = silent_bands  # sound the training recordings lack (edge.bed.domain)
        self._lifecycle = Lifecycle(
            "technical",
            priority_table(config.priorities, config.default_priority),
            config.latching,
            ms_to_samples(config.ongoing_every_ms, sample_rate_hz),
        )
        slow = ms_to_samples(config.min_condition_ms, sample_rate_hz)
        gap = ms_to_samples(config.clear_after_ms, sample_rate_hz)
        minimum = {  # samples a condition must span before it is announced; others: at once
            POOR_SIGNAL: ms_to_samples(config.poor_signal_min_ms, sample_rate_hz),
            CLIPPING: slow,
            SILENCE: slow,
        }
        self._trackers = {
            t: EventTracker(t, self._lifecycle, minimum.get(t, 0), gap)
            for t in TECHNICAL_TYPES
            if t != SOURCE_STALLED
        }
        self._poor_model = False
        self._off_body = False  # as of the start of the next hop
        self._hop_notices: list[Notice] = []  # off-body and gap notices not yet judged
        self._gap_spans: list[tuple[int, int, str]] = []  # (start, end, kind) not all judged
        self._judged_end = 0  # end of the last window judged
        self._next_sample = 0
        self._last_audio_s: float | None = None
        self._disconnected = False
        self._stall_key: str | None = None
        self.suppressed = False
        # nothing of the patient is heard this hop: edge.bed.breathing calls no pause apnoea then
        self.signal_lost = False

    def update(
        self, window: WindowReady, poor_quality_prob: float | None = None
    ) -> list[Transition]:
        """Judge one window's last hop (its new audio, :class:`WindowReady`)."""
        readings = self._readings(window, poor_quality_prob)
        start, end = window.quality_start_sample, window.end_sample
        for r in readings:
            self._trackers[r.type].step(start, end, r.active, r.confidence, r.reason)
        self._judged_end = end
        if self._gap_spans:  # keep the gaps that reach past this window (or lie after it)
            self._gap_spans = [g for g in self._gap_spans if max(g[0] + 1, g[1]) > end]
        self.signal_lost = (
            any(r.active for r in readings if r.type in LOST_SIGNAL_TYPES)
            or window.hop_missing_fraction > MOSTLY_MISSING
            or self._stall_key is not None
        )
        self.suppressed = (
            any(r.active for r in readings if r.type != SIGNAL_GAP)
            or window.missing_fraction > self.config.max_missing_fraction
            or self._stall_key is not None
        )
        return self._lifecycle.take()

    def observe(self, chunk: SourceChunk, now_s: float) -> list[Transition]:
        """Take a chunk's notices and note that the source delivered (maybe empty) audio."""
        n = int(chunk.samples.shape[0])
        for notice in chunk.notices:
            self._notice(notice, now_s)
            if notice.kind in _GAP_NOTICES:  # its samples: at least the missing chunk it came with
                start = notice.sample_index
                end = start + int(notice.detail.get("missing_samples", 0))
                if chunk.missing:
                    end = max(end, chunk.first_sample + n)
                self._gap_spans.append((start, end, notice.kind))
        if n > 0:
            self._last_audio_s = now_s
            if not self._disconnected:
                self._end_stall(chunk.first_sample)
        self._next_sample = max(self._next_sample, chunk.first_sample + n)
        return self._lifecycle.take()

    def tick(self, now_s: float) -> list[Transition]:
        """Call periodically (also when no chunk comes): raises ``source_stalled``."""
        if self._last_audio_s is None:
            self._last_audio_s = now_s  # the clock starts with the first tick or chunk
        silent_s = now_s - self._last_audio_s
        if silent_s > self.config.stall_timeout_s and self._stall_key is None:
            self._start_stall(f"no audio for {silent_s:.1f} s")
        return self._lifecycle.take()

    def acknowledge(self, what: str) -> list[Transition]:
        self._lifecycle.acknowledge(what)
        return self._lifecycle.take()

    def finish(self) -> list[Transition]:
        """Report the gaps no window reached, then end every technical event (latched too)."""
        gaps = self._trackers[SIGNAL_GAP]
        for start, end, kind in self._gap_spans:
            start = max(start, self._judged_end)
            gaps.step(start, max(start, end), True, 1.0, f"{kind} reported by the source")
        self._gap_spans = []
        for tracker in self._trackers.values():
            tracker.stop()
        self._end_stall(self._next_sample)
        self._lifecycle.release_latched()
        return self._lifecycle.take()

    @property
    def active_keys(self) -> tuple[str, ...]:
        return self._lifecycle.active_keys

    def _readings(self, window: WindowReady, poor_prob: float | None) -> list[_Reading]:
        cfg, q = self.config, window.audio_quality
        judged = window.hop_missing_fraction <= MOSTLY_MISSING
        silence = judged and q.rms_dbfs <= cfg.silence_dbfs
        clipping = q.clipping_fraction >= cfg.clipping_fraction_limit
        was_poor = self._poor_model
        if poor_prob is not None:
            on, off = cfg.poor_quality_thresholds
            self._poor_model = hysteresis_step(self._poor_model, poor_prob, on, off)
        by_score = judged and not (silence or clipping) and q.score < cfg.poor_score_limit
        poor = by_score or self._poor_model
        poor_reason = ""
        if self._poor_model:
            poor_reason = f"model Poor Quality p={poor_prob:.2f}"
            # an event's reason is its first window's: the note is looked for only there
            if self.silent_bands is not None and not was_poor:
                note = self.silent_bands.describe(window.features)
                if note is not None:
                    poor_reason += "; " + note
        elif poor:
            poor_reason = f"quality score {q.score:.2f}, limited by {q.limiting_factor}"
        off_body, gap_notice = self._notices_before(window.end_sample)
        invalid = window.invalid_samples > 0
        gap = window.hop_missing_fraction > 0.0 or bool(gap_notice)
        return [
            _Reading(POOR_SIGNAL, poor, poor_reason, max(1.0 - q.score, poor_prob or 0.0)),
            _Reading(OFF_BODY, off_body, "device reports off body"),
            _Reading(
                CLIPPING,
                clipping,
                f"{q.clipping_fraction:.1%} of samples clipped" if clipping else "",
            ),
            _Reading(SILENCE, silence, f"level {q.rms_dbfs:.0f} dBFS" if silence else ""),
            _Reading(
                INVALID_SAMPLES,
                invalid,
                f"{window.invalid_samples} NaN/Inf samples replaced by zeros" if invalid else "",
            ),
            _Reading(
                SIGNAL_GAP,
                gap,
                (gap_notice or f"{window.hop_missing_fraction:.0%} of the hop missing")
                if gap
                else "",
            ),
        ]

    def _notice(self, notice: Notice, now_s: float) -> None:
        if notice.kind in _GAP_NOTICES or (
            notice.kind == "device_status" and "off_body" in notice.detail
        ):
            self._hop_notices.append(notice)  # judged with the hop it falls in
        elif notice.kind in ("disconnected", "stalled"):
            self._disconnected = notice.kind == "disconnected"
            if self._stall_key is None:
                self._next_sample = max(self._next_sample, notice.sample_index)
                self._start_stall(f"source reports {notice.kind}")
        elif notice.kind == "reconnected":
            self._disconnected = False
            self._last_audio_s = now_s
            self._end_stall(notice.sample_index)

    def _notices_before(self, end_sample: int) -> tuple[bool, str]:
        """Apply the notices of the hop ending at ``end_sample``: (off body at any time in
        it, its gap notice's reason or "")."""
        off_body, gap, later = self._off_body, "", []
        for notice in self._hop_notices:
            if notice.sample_index >= end_sample:
                later.append(notice)
            elif notice.kind == "device_status":
                self._off_body = bool(notice.detail["off_body"])
                off_body = off_body or self._off_body
            else:
                gap = f"{notice.kind} reported by the source"
        self._hop_notices = later
        return off_body, gap

    def _start_stall(self, reason: str) -> None:
        at = self._next_sample
        self._stall_key = self._lifecycle.onset(SOURCE_STALLED, at, at, 1.0, reason)
        self.suppressed = True

    def _end_stall(self, at_sample: int) -> None:
        if self._stall_key is not None:
            self._lifecycle.close(self._stall_key, max(at_sample, self._next_sample))
            self._stall_key = None
