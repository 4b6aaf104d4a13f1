"""From a streaming model's per-frame probabilities to events: per-class hysteresis, minimum
duration and merge gap, breath phases (phase mode) or change-point boxes, and the alarm lifecycle
(onset -> ongoing -> ended, latching by priority, IEC 60601-1-8 style).

An event is the union of its frames' spans on the stream's sample timeline (:class:`FrameGrid`); its
``key``, ``"<type>@<start_sample>"``, is stable and deterministic. Merging comes before the
minimum-duration test: an event is announced (``onset``) only once it spans ``min_event_ms``, and a
shorter one makes no transition at all. Once the class stays off longer than ``merge_gap_ms`` the
event has ``ended`` at the end of its last active span, unless its priority latches and nobody
acknowledged it: then it reports ``ongoing`` with ``latched=True`` and that end, and ends only at
:meth:`FrameDetector.acknowledge`. The quality gate shares :class:`Lifecycle` and
:class:`EventTracker`. Phase mode and change-point boxes: docs/runtime.md ("Detector settings")."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
from numba import njit
from pydantic import NonNegativeFloat

from edge.bed.findings import FindingConfig
from edge.bed.rules import (
    DEFAULT_MERGE_GAP_MS,
    DEFAULT_MIN_EVENT_MS,
    DEFAULT_OFF_THRESHOLD,
    DEFAULT_ON_THRESHOLD,
    PRIORITIES,
    ClassRule,
    ClassThreshold,
    PhaseRule,
    TypePriority,
    check_priorities,
    check_thresholds,
)
from lungwatch.alarms import names
from lungwatch.config import Settings, check
from lungwatch.errors import ConfigError, LungwatchError
from lungwatch.events import DEFAULT_PRIORITIES as EVENT_PRIORITIES
from lungwatch.events import SOUND_TYPES, Priority
from lungwatch.labels import DETECTED_CLASSES

EventKind = Literal["physiological", "technical", "finding"]
State = Literal["onset", "ongoing", "ended"]
MS_PER_S = 1000.0


class DetectorError(LungwatchError, ValueError):
    """The detector was fed something of the wrong shape."""


def hysteresis_step(active: bool, value: float, on: float, off: float) -> bool:
    return value >= off if active else value >= on


DEFAULT_PRIORITIES = tuple(TypePriority(t, EVENT_PRIORITIES[t]) for t in SOUND_TYPES)


@dataclass(frozen=True)
class DetectorConfig(Settings):
    """A rule setting left None falls to the class's ``thresholds`` entry, then the top-level
    setting, then the default (:mod:`edge.bed.rules`); the manifest's fitted rules come in
    between on the device (:func:`edge.bed.chain.resolve_detector`, docs/runtime.md)."""

    on_threshold: float | None = None  # a class turns on at p >= this
    off_threshold: float | None = None  # and off at p < this
    thresholds: tuple[ClassThreshold, ...] = ()  # per-class overrides of the pair above
    min_event_ms: float | None = None  # shorter events are never announced
    merge_gap_ms: float | None = None  # an off..on gap up to this long continues the event
    ongoing_every_ms: NonNegativeFloat = 0.0  # repeat `ongoing` this often while active; 0: never
    default_priority: Priority = "medium"  # types not listed in `priorities`
    priorities: tuple[TypePriority, ...] = DEFAULT_PRIORITIES
    latching: tuple[Priority, ...] = ("high",)  # priorities that stay active until acknowledged
    phases: PhaseRule | None = None  # breath phases (docs/runtime.md); None: the hysteresis above
    findings: FindingConfig = field(default_factory=FindingConfig)  # unset rules: the manifest's

    def __post_init__(self) -> None:
        check_thresholds(self.on_threshold, self.off_threshold)
        types = [t.type for t in self.thresholds]
        dupes = sorted({t for t in types if types.count(t) > 1})
        check(not dupes, "thresholds", dupes, "a list naming each type once")
        for key in ("min_event_ms", "merge_gap_ms"):
            value = getattr(self, key)
            check(value is None or value >= 0.0, key, value, "a number >= 0")
        default = self.default_priority
        check(default in PRIORITIES, "default_priority", default, f"one of {PRIORITIES}")
        check_priorities(self.priorities, self.latching)

    def rule_of(self, type_: str) -> ClassRule:
        own = next((r for r in self.thresholds if r.type == type_), None)

        def pick(key: str, default: float) -> float:
            value = None if own is None else getattr(own, key)
            value = getattr(self, key) if value is None else value
            return default if value is None else float(value)

        on = pick("on_threshold", DEFAULT_ON_THRESHOLD)
        off = min(pick("off_threshold", DEFAULT_OFF_THRESHOLD), on)
        min_ms = pick("min_event_ms", DEFAULT_MIN_EVENT_MS)
        return ClassRule(on, off, min_ms, pick("merge_gap_ms", DEFAULT_MERGE_GAP_MS))


def priority_table(rules: tuple[TypePriority, ...], default: str) -> Callable[[str], str]:
    table = {rule.type: rule.priority for rule in rules}
    return lambda type_: table.get(type_, default)


def ms_to_samples(ms: float, sample_rate_hz: int) -> int:
    return round(ms * sample_rate_hz / MS_PER_S)


@dataclass(frozen=True)
class Transition:
    """One change of one event; ``end_sample`` is None while the condition lasts."""

    type: str
    kind: EventKind
    priority: Priority
    state: State
    start_sample: int
    end_sample: int | None
    confidence: float  # peak probability (or condition severity) so far
    key: str  # stable identity of the event: "<type>@<start_sample>"
    latched: bool = False
    reason: str = ""  # technical events: what was measured or reported
    ended_by: str = ""  # an ending not of the condition's own: "quality gate", "acknowledge", ...
    acknowledged_by: str = ""  # who acknowledged it (a signed command's user)


@dataclass
class _Event:
    type: str
    key: str
    priority: str
    start: int
    end: int
    peak: float
    reason: str
    latches: bool
    acknowledged: bool = False
    reported_end: int = 0  # where the last onset/ongoing was sent


class Lifecycle:
    def __init__(
        self,
        kind: EventKind,
        priority_of: Callable[[str], str],
        latching: tuple[str, ...],
        ongoing_every_samples: int = 0,
    ) -> None:
        self.kind: EventKind = kind
        self._priority_of = priority_of
        self._latching = frozenset(latching)
        self._every = ongoing_every_samples
        self._live: dict[str, _Event] = {}
        self._latched: dict[str, _Event] = {}
        self.pending: list[Transition] = []

    def onset(self, type_: str, start: int, end: int, peak: float, reason: str = "") -> str:
        """Announce an event; returns its key (the transition is in :attr:`pending`)."""
        priority = self._priority_of(type_)
        key = f"{type_}@{start}"
        while key in self._live or key in self._latched:  # the same start twice (a stall)
            key += "+"
        event = _Event(type_, key, priority, start, end, peak, reason, priority in self._latching)
        event.reported_end = end
        self._live[key] = event
        self.pending.append(self._transition(event, "onset", None))
        return key

    def take(self) -> list[Transition]:
        out, self.pending = self.pending, []
        return out

    def extend(self, key: str, end: int, peak: float) -> None:
        event = self._live[key]
        event.end, event.peak = end, max(event.peak, peak)
        if self._every > 0 and end - event.reported_end >= self._every:
            event.reported_end = end
            self.pending.append(self._transition(event, "ongoing", None))

    def close(self, key: str, end: int, peak: float | None = None) -> None:
        """The condition of ``key`` ended at ``end``: end it, or latch it."""
        event = self._live.pop(key)
        event.end = end
        if peak is not None:
            event.peak = max(event.peak, peak)
        if event.latches and not event.acknowledged:
            self._latched[key] = event
            self.pending.append(self._transition(event, "ongoing", end, latched=True))
        else:
            self.pending.append(self._transition(event, "ended", end))

    def acknowledge(self, what: str) -> None:
        """Acknowledge every event whose key, type or alarm condition (``CAS``, ...) is ``what``:
        latched ones end now, live ones will end on their own."""
        for event in self._live.values():
            if what in names(event.type, event.key):
                event.acknowledged = True
        self.release_latched([k for k, e in self._latched.items() if what in names(e.type, e.key)])

    def release_latched(self, keys: Sequence[str] | None = None) -> None:
        """End the latched events ``keys`` (None: every one)."""
        for key in list(self._latched) if keys is None else keys:
            event = self._latched.pop(key)
            self.pending.append(self._transition(event, "ended", event.end))

    @property
    def active_keys(self) -> tuple[str, ...]:
        return (*self._live, *self._latched)

    def _transition(
        self, event: _Event, state: State, end: int | None, latched: bool = False
    ) -> Transition:
        return Transition(
            type=event.type,
            kind=self.kind,
            priority=event.priority,  # type: ignore[arg-type]
            state=state,
            start_sample=event.start,
            end_sample=end,
            confidence=round(float(event.peak), 6),
            key=event.key,
            latched=latched,
            reason=event.reason,
        )


@dataclass
class _Candidate:
    start: int
    end: int
    peak: float
    reason: str
    key: str | None = None  # set once announced


class EventTracker:
    """Minimum duration and merge gap for one event type, fed one span at a time."""

    def __init__(
        self, type_: str, lifecycle: Lifecycle, min_samples: int, merge_gap_samples: int
    ) -> None:
        self.type = type_
        self._lifecycle = lifecycle
        self._min = min_samples
        self._gap = merge_gap_samples
        self._candidate: _Candidate | None = None

    def step(self, start: int, end: int, active: bool, confidence: float, reason: str = "") -> None:
        """Feed the span ``[start, end)``: whether the condition holds there, and how strongly."""
        c = self._candidate
        if c is not None and start - c.end > self._gap:  # only with irregular spans
            self.stop()
            c = None
        if not active:
            if c is not None and end - c.end > self._gap:  # no later span can merge
                self.stop()
            return
        if c is None:
            c = self._candidate = _Candidate(start, end, confidence, reason)
        else:
            c.end, c.peak = end, max(c.peak, confidence)
        if c.key is not None:
            self._lifecycle.extend(c.key, c.end, c.peak)
        elif c.end - c.start >= self._min:
            c.key = self._lifecycle.onset(self.type, c.start, c.end, c.peak, c.reason or reason)

    def stop(self) -> None:
        """End the current condition now (at the end of its last active span)."""
        c, self._candidate = self._candidate, None
        if c is not None and c.key is not None:
            self._lifecycle.close(c.key, c.end)


@dataclass(frozen=True)
class FrameGrid:
    """Where the model's output frames lie on a stream's sample timeline: frame ``j``'s span is
    centred on the middle of the front-end frames it summarises; the spans tile the timeline."""

    sample_rate_hz: int
    frame_samples: int  # output hop, samples
    offset_samples: int = 0

    @classmethod
    def of(
        cls, sample_rate_hz: int, hop_samples: int, frame_samples_fe: int, stride: int
    ) -> FrameGrid:
        """The grid of a model with ``stride`` front-end frames per output frame."""
        return cls(sample_rate_hz, stride * hop_samples, frame_samples_fe // 2 - hop_samples // 2)

    @property
    def hop_ms(self) -> float:
        return MS_PER_S * self.frame_samples / self.sample_rate_hz

    def start_sample(self, frame: int) -> int:
        return frame * self.frame_samples + self.offset_samples

    def end_sample(self, frame: int) -> int:
        """Exclusive end of frame ``frame``'s span."""
        return (frame + 1) * self.frame_samples + self.offset_samples


ONSET, CLOSE = 0, 1  # transition kinds of the frame kernel


@njit(cache=True)
def _emit(out_i, out_p, count, kind, c, cand_start, cand_end, peak):
    """Write class ``c``'s transition to row ``count`` (see :func:`_track_frames`); the next row."""
    out_i[count, 0], out_i[count, 1] = kind, c
    out_i[count, 2], out_i[count, 3] = cand_start[c], cand_end[c]
    out_p[count] = peak[c]
    return count + 1


@njit(cache=True)
def _track_frames(
    probs, index, which, on, off, min_frames, gap_frames, first_frame,
    active, cand_start, cand_end, announced, peak, out_i, out_p,
):  # fmt: skip
    """Hysteresis, merge gap and minimum duration over ``probs`` (n, O) for the classes
    ``which`` (class ``c`` reads output ``index[c]``), updating the per-class arrays (C,) in
    place. Writes one row per transition to ``out_i`` (kind, class, first frame, last frame)
    and ``out_p`` (peak); returns the number of rows (at most 2 * n * C)."""
    count = 0
    for t in range(probs.shape[0]):
        j = first_frame + t
        for k in range(which.shape[0]):
            c = which[k]
            value = probs[t, index[c]]
            active[c] = value >= off[c] if active[c] else value >= on[c]
            if active[c]:
                if cand_start[c] >= 0 and j - cand_end[c] - 1 > gap_frames[c]:  # frames skipped
                    if announced[c]:
                        count = _emit(out_i, out_p, count, CLOSE, c, cand_start, cand_end, peak)
                    cand_start[c] = -1
                if cand_start[c] < 0:
                    cand_start[c], peak[c], announced[c] = j, value, False
                cand_end[c] = j
                peak[c] = max(peak[c], value)
                if not announced[c] and cand_end[c] - cand_start[c] + 1 >= min_frames[c]:
                    announced[c] = True
                    count = _emit(out_i, out_p, count, ONSET, c, cand_start, cand_end, peak)
            elif cand_start[c] >= 0 and j - cand_end[c] > gap_frames[c]:
                if announced[c]:
                    count = _emit(out_i, out_p, count, CLOSE, c, cand_start, cand_end, peak)
                cand_start[c], announced[c] = -1, False
    return count


@njit(cache=True)
def _track_phases(
    probs, breath, index, which, thr, on, off, min_frames, first_frame, phase, sums,
    cand_start, cand_end, announced, peak, out_i, out_p,
):  # fmt: skip
    """Phase mode over ``probs`` (n, O): breath hysteresis on output ``breath``, per-class
    means over the open phase against ``thr``; ``phase`` = [open (0/1), first frame, frames so
    far] and ``sums`` carry the phase between calls; the rest as in :func:`_track_frames`."""
    count = 0
    for t in range(probs.shape[0]):
        j = first_frame + t
        b = probs[t, breath]
        if phase[0] == 1 and b < off:  # the phase ended with the previous frame
            for k in range(which.shape[0]):
                c = which[k]
                if announced[c]:
                    count = _emit(out_i, out_p, count, CLOSE, c, cand_start, cand_end, peak)
                    announced[c] = False
                    cand_start[c] = -1
            phase[0] = 0
        if phase[0] == 0:
            if b < on:
                continue
            phase[0], phase[1], phase[2] = 1, j, 0
            sums[:] = 0.0
        phase[2] += 1
        for k in range(which.shape[0]):
            c = which[k]
            sums[c] += probs[t, index[c]]
            mean = sums[c] / phase[2]
            cand_end[c] = j
            if announced[c]:
                peak[c] = max(peak[c], mean)
            elif phase[2] >= min_frames and mean >= thr[c]:
                announced[c] = True
                cand_start[c], peak[c] = phase[1], mean
                count = _emit(out_i, out_p, count, ONSET, c, cand_start, cand_end, peak)
    return count


BOX_NONE, BOX_OPEN, BOX_GAP = 0, 1, 2  # a box class's state in :func:`_track_boxes`


class BoxState(NamedTuple):
    """Per-class state of the change-point boxes, updated in place by :func:`_track_boxes`."""

    ring: np.ndarray  # (C, 2 * half) the last outputs
    sums: np.ndarray  # (C, 2) the older and newer halves' sums
    seen: np.ndarray  # frames so far
    steps: np.ndarray  # (C, 2) the filter at the two boundaries before the newest (NaN: none)
    state: np.ndarray  # BOX_*
    gap_end: np.ndarray  # the fall's boundary
    gap_min: np.ndarray  # the gap's lowest output
    gap_max: np.ndarray  # ... and its highest
    opened: np.ndarray  # the box's first rise while its start may still move (-1: settled)
    rise_step: np.ndarray  # the filter at that rise

    @classmethod
    def new(cls, classes: int, half: int) -> BoxState:
        return cls(
            np.zeros((classes, 2 * half)), np.zeros((classes, 2)), np.zeros(classes, np.int64),
            np.full((classes, 2), np.nan), np.zeros(classes, np.int64),
            np.zeros(classes, np.int64), np.zeros(classes), np.zeros(classes),
            np.full(classes, -1, np.int64), np.zeros(classes),
        )  # fmt: skip

    def reset(self) -> None:
        self.ring[:], self.sums[:], self.seen[:], self.steps[:] = 0.0, 0.0, 0, np.nan
        self.state[:], self.opened[:] = BOX_NONE, -1


@njit(cache=True)
def _track_boxes(
    probs, index, which, thr, half, merge, first_frame, box, cand_start, cand_end, announced,
    peak, out_i, out_p,
):  # fmt: skip
    """Change-point boxes over ``probs`` (n, O) for the classes ``which``: a step filter of ``half``
    frames each side (frames before the stream's start count 0), its local maxima above 0 rises, its
    minima below 0 falls; a steeper rise within ``2 * half`` of the first moves the start there, as
    the offline boxes take the strongest change of a run. ``box`` is the classes' :class:`BoxState`;
    the rest, and the rows written, as in :func:`_track_frames`."""
    ring, sums, seen, steps, state, gap_end, gap_min, gap_max, opened, rise_step = box
    count = 0
    width = 2 * half
    for t in range(probs.shape[0]):
        j = first_frame + t
        for k in range(which.shape[0]):
            c = which[k]
            x = probs[t, index[c]]
            pos = seen[c] % width  # the oldest frame, leaving
            mid = (seen[c] + half) % width  # the frame passing from the newer half to the older
            sums[c, 0] += ring[c, mid] - ring[c, pos]
            sums[c, 1] += x - ring[c, mid]
            ring[c, pos] = x
            seen[c] += 1
            n = seen[c]
            if n < half:
                continue
            newest = (sums[c, 1] - sums[c, 0]) / half  # at the boundary before frame j + 1 - half
            if n == half:
                steps[c, 0], steps[c, 1] = np.nan, newest
                continue
            before, step = steps[c, 0], steps[c, 1]  # at the boundaries b - 1 and b
            steps[c, 0], steps[c, 1] = step, newest
            b = j - half  # the boundary judged: it lies before frame b
            xb = ring[c, (n - 1 - half) % width]  # frame b's output
            rise = step > 0 and (np.isnan(before) or step >= before) and step > newest
            fall = step < 0 and (np.isnan(before) or step < before) and step <= newest
            if state[c] == BOX_OPEN:
                if fall:
                    state[c], gap_end[c], gap_min[c], gap_max[c] = BOX_GAP, b, xb, xb
                    opened[c] = -1
                elif rise and opened[c] >= 0 and step > rise_step[c]:  # a steeper rise: the
                    cand_start[c], peak[c], rise_step[c] = b, xb, step  # box starts here
                else:
                    peak[c] = max(peak[c], xb)
                if opened[c] >= 0 and b - opened[c] >= width:
                    opened[c] = -1
            elif state[c] == BOX_GAP:
                if (rise or fall) and gap_min[c] >= merge * peak[c]:  # the box went on
                    peak[c] = max(peak[c], gap_max[c])
                    if rise:
                        state[c] = BOX_OPEN
                        peak[c] = max(peak[c], xb)
                    else:  # a later fall: the box ends there instead
                        gap_end[c], gap_min[c], gap_max[c] = b, xb, xb
                else:
                    gap_min[c] = min(gap_min[c], xb)
                    gap_max[c] = max(gap_max[c], xb)
                    if rise or gap_min[c] < merge * peak[c]:  # over: no rise can continue it
                        if announced[c]:
                            count = _emit(out_i, out_p, count, CLOSE, c, cand_start, cand_end, peak)
                        announced[c] = False
                        state[c] = BOX_NONE
            if state[c] == BOX_NONE and rise:
                state[c], cand_start[c], peak[c] = BOX_OPEN, b, xb
                opened[c], rise_step[c] = b, step
            if state[c] != BOX_NONE:
                cand_end[c] = b if state[c] == BOX_OPEN else gap_end[c] - 1
                if not announced[c] and opened[c] < 0 and peak[c] >= thr[c]:
                    announced[c] = True
                    count = _emit(out_i, out_p, count, ONSET, c, cand_start, cand_end, peak)
    return count


@dataclass(frozen=True)
class DetectedEvent:
    """One finished event on the stream's sample timeline (``end_sample`` exclusive)."""

    type: str
    start_sample: int
    end_sample: int
    confidence: float


class FrameDetector:
    """One stream's physiological events: the outputs in :data:`DETECTED_CLASSES` (not Breath, Poor
    Quality). Durations are whole frames of ``grid.hop_ms`` (rounded, at least one)."""

    def __init__(self, outputs: Sequence[str], config: DetectorConfig, grid: FrameGrid) -> None:
        self.outputs, self.config, self.grid = tuple(outputs), config, grid
        unknown = [t.type for t in config.thresholds if t.type not in self.outputs]
        if unknown:
            raise ConfigError(
                f"detector.thresholds: {unknown[0]!r} is not a model output {outputs}"
            )
        self._index = np.array(
            [i for i, name in enumerate(self.outputs) if name in DETECTED_CLASSES], np.int64
        )
        self.types = tuple(self.outputs[i] for i in self._index)
        rules = [config.rule_of(t) for t in self.types]
        self._on = np.array([r.on_threshold for r in rules], np.float64)
        self._off = np.array([r.off_threshold for r in rules], np.float64)
        hop = grid.hop_ms
        self._min = np.array([max(1, round(r.min_event_ms / hop)) for r in rules], np.int64)
        self._gap = np.array([round(r.merge_gap_ms / hop) for r in rules], np.int64)
        self._lifecycle = Lifecycle(
            "physiological",
            priority_table(config.priorities, config.default_priority),
            config.latching,
            ms_to_samples(config.ongoing_every_ms, grid.sample_rate_hz),
        )
        n = len(self.types)
        self._active = np.zeros(n, np.bool_)
        self._start = np.full(n, -1, np.int64)
        self._end = np.zeros(n, np.int64)
        self._announced = np.zeros(n, np.bool_)
        self._peak = np.zeros(n, np.float64)
        self._keys: list[str | None] = [None] * n
        self._out_i = np.zeros((0, 4), np.int64)
        self._out_p = np.zeros(0, np.float64)
        self.suppressed = False
        self._phases = phases = config.phases
        framed, lead = self.types, 0  # no phases: every class by its own hysteresis
        boxed: tuple[str, ...] = ()
        if phases is not None:
            if phases.output not in self.outputs:
                raise ConfigError(
                    f"detector.phases.output: {phases.output!r} is not a model output {outputs}"
                )
            self._breath = self.outputs.index(phases.output)
            self._phase_min = max(1, round(phases.min_phase_ms / hop))
            self._phase = np.zeros(3, np.int64)  # open, first frame, frames so far
            self._sums = np.zeros(n, np.float64)
            framed, boxed = phases.frame_classes, phases.box_classes
            lead = ms_to_samples(phases.lead_ms, grid.sample_rate_hz)
            self._half = max(1, round(phases.box_filter_ms / 2 / hop))
            self._box_merge = phases.box_merge
            self._boxes = BoxState.new(n, self._half)
            self._last_frame = -1
        self._by_frames = np.array([c for c, t in enumerate(self.types) if t in framed], np.int64)
        self._by_boxes = np.array([c for c, t in enumerate(self.types) if t in boxed], np.int64)
        self._by_phases = np.array(
            [c for c, t in enumerate(self.types) if t not in framed and t not in boxed], np.int64
        )
        own = (*framed, *boxed)
        self._lead = np.array([0 if t in own else lead for t in self.types], np.int64)
        self._last_end = np.zeros(n, np.int64)  # end sample of each class's previous event

    def update(self, first_frame: int, probs: np.ndarray) -> list[Transition]:
        """Feed output frames ``first_frame, first_frame + 1, ...``: ``probs`` (n, n_outputs)."""
        p = np.asarray(probs, dtype=np.float32)
        if p.ndim != 2 or p.shape[1] != len(self.outputs):
            raise DetectorError(f"expected (n, {len(self.outputs)}) probabilities, got {p.shape}")
        if self.suppressed or p.shape[0] == 0:
            return self._lifecycle.take()
        rows = 4 * p.shape[0] * len(self.types)  # both kernels' rows at most
        if self._out_i.shape[0] < rows:
            self._out_i = np.zeros((rows, 4), np.int64)
            self._out_p = np.zeros(rows, np.float64)
        count = 0
        if self._by_frames.size:
            count = _track_frames(
                p, self._index, self._by_frames, self._on, self._off, self._min, self._gap,
                first_frame, self._active, self._start, self._end, self._announced, self._peak,
                self._out_i, self._out_p,
            )  # fmt: skip
        if self._phases is not None and self._by_phases.size:
            count += _track_phases(
                p, self._breath, self._index, self._by_phases, self._on,
                self._phases.on_threshold, self._phases.off_threshold, self._phase_min,
                first_frame, self._phase, self._sums, self._start, self._end, self._announced,
                self._peak, self._out_i[count:], self._out_p[count:],
            )  # fmt: skip
        if self._by_boxes.size:  # only in phase mode
            count += _track_boxes(
                p, self._index, self._by_boxes, self._on, self._half, self._box_merge,
                first_frame, self._boxes, self._start, self._end, self._announced, self._peak,
                self._out_i[count:], self._out_p[count:],
            )  # fmt: skip
            self._last_frame = first_frame + p.shape[0] - 1
        for row in range(count):
            kind, c, first, last = (int(v) for v in self._out_i[row])
            self._apply(kind, c, first, last, float(self._out_p[row]))
        for c, key in enumerate(self._keys):
            if key is not None:
                self._lifecycle.extend(key, self.grid.end_sample(int(self._end[c])), self._peak[c])
        return self._lifecycle.take()

    def _apply(self, kind: int, c: int, first: int, last: int, peak: float) -> None:
        end = self.grid.end_sample(last)
        if kind == ONSET:
            start = max(
                self.grid.start_sample(first) - int(self._lead[c]), int(self._last_end[c]), 0
            )
            self._keys[c] = self._lifecycle.onset(self.types[c], start, end, peak)
        else:
            key, self._keys[c] = self._keys[c], None
            if key is not None:
                self._lifecycle.close(key, end, peak)
            self._last_end[c] = end

    def suppress(self, active: bool) -> list[Transition]:
        """While suppressed no event starts; entering suppression ends the open ones."""
        if active and not self.suppressed:
            self._close_all()
        self.suppressed = active
        return self._lifecycle.take()

    def acknowledge(self, what: str) -> list[Transition]:
        self._lifecycle.acknowledge(what)
        return self._lifecycle.take()

    def finish(self) -> list[Transition]:
        """The stream is over: end every event, latched ones included."""
        self._close_all()
        self._lifecycle.release_latched()
        return self._lifecycle.take()

    @property
    def active_keys(self) -> tuple[str, ...]:
        return self._lifecycle.active_keys

    def _close_all(self) -> None:
        if self._by_boxes.size:
            # an open box runs to the last frame heard (a box in its gap ends at its fall)
            open_ = self._by_boxes[self._boxes.state[self._by_boxes] == BOX_OPEN]
            self._end[open_] = max(self._last_frame, 0)
            for c in open_.tolist():  # its start not settled yet: not announced yet
                if not self._announced[c] and self._peak[c] >= self._on[c]:
                    self._announced[c] = True
                    self._apply(ONSET, c, int(self._start[c]), int(self._end[c]), self._peak[c])
        for c in range(len(self.types)):
            if self._announced[c]:
                self._apply(CLOSE, c, int(self._start[c]), int(self._end[c]), self._peak[c])
        self._active[:] = False
        self._start[:] = -1
        self._announced[:] = False
        if self._phases is not None:
            self._phase[:] = 0
            self._boxes.reset()


def detect_events(
    probs: np.ndarray, outputs: Sequence[str], config: DetectorConfig, grid: FrameGrid
) -> list[DetectedEvent]:
    """The device's finished events of a whole recording's probabilities (n, n_outputs), by start;
    rows with a NaN (never described by the model: a state reset) are not fed, as on the device."""
    detector = FrameDetector(outputs, dataclasses.replace(config, latching=()), grid)
    p = np.asarray(probs)
    if p.ndim == 2 and not np.isfinite(p).all():
        real = np.isfinite(p).all(axis=1).astype(np.int8)
        edges = np.flatnonzero(np.diff(np.r_[0, real, 0]))  # starts and ends of the runs
        transitions = []
        for first, end in zip(edges[::2], edges[1::2], strict=True):
            transitions += detector.update(int(first), p[first:end])
    else:  # update names a wrong shape
        transitions = detector.update(0, p)
    transitions += detector.finish()
    events = [
        DetectedEvent(t.type, t.start_sample, int(t.end_sample), t.confidence)
        for t in transitions
        if t.state == "ended" and t.end_sample is not None
    ]
    return sorted(events, key=lambda e: (e.start_sample, e.type))
