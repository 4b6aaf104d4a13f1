"""Finding episodes: a wheeze or a crackle is told to the ward once it recurs.

An **event** is one sound the detector heard; a **finding episode** is a run of recurring events of
one family (``CAS``, ``DAS``). Events are held until their family's episode opens and published as
its evidence; the rule and why: docs/events.md, "Finding episodes". The rule works on the events'
start times alone, so :func:`episode_members` (a whole recording, for fitting on the workstation)
and :class:`FindingTracker` (the stream, on the device) agree event for event. Each bed also keeps
its **finding rate** per family: the share of its monitored time in the last ``rate_window_s`` that
its published events of the family cover (PulmoTrack's wheeze rate: the share of breathing time with
wheeze)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import NonNegativeFloat, PositiveFloat

from lungwatch.config import Settings, check
from lungwatch.events import DEFAULT_PRIORITIES, PRIORITIES
from lungwatch.labels import HELD_FAMILIES  # the families' event types that wait for recurrence

FAMILY_OF: dict[str, str] = {t: f for f, types in HELD_FAMILIES.items() for t in types}
FINDING_KIND = "finding"
#: How much longer than its rule's ``resolve_s`` a stream waits before it ends an episode: an
#: event is announced a little after it starts (a wheeze box once its fall is seen), and one
#: that starts within ``resolve_s`` of the last still belongs to the episode.
SETTLE_S = 4.0


@dataclass(frozen=True)
class RecurrenceRule(Settings):
    """When one family's events become a finding episode."""

    events: int = 2  # this many events of the family ...
    within_s: NonNegativeFloat = 6.0  # ... with starts within this many seconds open an episode
    resolve_s: NonNegativeFloat | None = None  # ends this long after the last event; None: within_s

    def __post_init__(self) -> None:
        check(isinstance(self.events, int) and self.events >= 1, "events", self.events,
              "a whole number >= 1")  # fmt: skip

    @property
    def resolve(self) -> float:
        return self.within_s if self.resolve_s is None else self.resolve_s


@dataclass(frozen=True)
class FindingConfig(Settings):
    """The detector's ``findings`` section: one recurrence rule per family (None: the model
    manifest's, else :class:`RecurrenceRule`'s defaults). ``enabled`` None: on where a rule is
    known, so a model fitted before finding episodes publishes every event as heard."""

    enabled: bool | None = None  # false: every event is published as heard; true: on
    cas: RecurrenceRule | None = None
    das: RecurrenceRule | None = None
    rate_window_s: PositiveFloat = 300.0  # the finding rate's window

    @property
    def on(self) -> bool:
        if self.enabled is not None:
            return self.enabled
        return self.cas is not None or self.das is not None

    def rule(self, family: str) -> RecurrenceRule:
        got = self.cas if family == "CAS" else self.das
        return got if got is not None else RecurrenceRule()

    def with_manifest(self, rules: Mapping[str, Any] | None) -> FindingConfig:
        """The manifest's fitted rules (``{"CAS": {"events": 2, ...}}``) for families left unset."""
        if not rules:
            return self
        got = {f: RecurrenceRule(**r) for f, r in rules.items() if f in HELD_FAMILIES}
        return replace(
            self,
            cas=self.cas if self.cas is not None else got.get("CAS"),
            das=self.das if self.das is not None else got.get("DAS"),
        )


@dataclass(frozen=True)
class Span:
    """One event as the rule sees it (seconds or samples)."""

    start: float
    end: float


def episode_members(
    spans: Sequence[Span], rule: RecurrenceRule, scale: float = 1.0
) -> list[list[int]]:
    """The finding episodes of one family's events of a whole recording, each as indices into
    ``spans``. ``scale``: units per second of the spans' times."""
    order = sorted(range(len(spans)), key=lambda i: (spans[i].start, i))
    within, resolve = rule.within_s * scale, rule.resolve * scale
    episodes: list[list[int]] = []
    current: list[int] | None = None
    last_end = 0.0
    recent: deque[int] = deque()
    for i in order:
        s = spans[i]
        if current is not None and s.start - last_end > resolve:
            current = None
        if current is not None:
            current.append(i)
            last_end = max(last_end, s.end)
            continue
        recent.append(i)
        while recent and spans[recent[0]].start < s.start - within:
            recent.popleft()
        if len(recent) >= rule.events:
            current = list(recent)
            episodes.append(current)
            last_end = max(spans[j].end for j in current)
            recent.clear()
    return episodes


def kept_events(
    events: Sequence[Mapping[str, Any]], config: FindingConfig
) -> tuple[list[Mapping[str, Any]], list[dict[str, Any]]]:
    """A whole recording's events -> those published (a finding episode's, and every type of no held
    family) and the episodes (``opened_s``: the start of the event that opened it)."""
    if not config.on:
        return list(events), []
    kept = [e for e in events if str(e["type"]) not in FAMILY_OF]
    episodes: list[dict[str, Any]] = []
    for family in HELD_FAMILIES:
        mine = [e for e in events if FAMILY_OF.get(str(e["type"])) == family]
        spans = [Span(float(e["start_s"]), float(e["end_s"])) for e in mine]
        rule = config.rule(family)
        for members in episode_members(spans, rule):
            kept += [mine[i] for i in members]
            opener = members[min(rule.events, len(members)) - 1]
            episodes.append({
                "family": family,
                "start_s": min(spans[i].start for i in members),
                "end_s": max(spans[i].end for i in members),
                "events": len(members),
                "opened_s": spans[opener].start,
                "first_event_s": spans[members[0]].start,
            })  # fmt: skip
    kept.sort(key=lambda e: (float(e["start_s"]), str(e["type"])))
    episodes.sort(key=lambda e: (e["start_s"], e["family"]))
    return kept, episodes


@dataclass
class _Family:
    rule: RecurrenceRule
    held: dict[str, list[Any]] = field(default_factory=dict)  # key -> its transitions so far
    recent: deque[tuple[int, str]] = field(default_factory=deque)  # (start, key) held onsets
    members: set[str] = field(default_factory=set)  # the open episode's events
    open_members: set[str] = field(default_factory=set)  # ... not ended yet
    episode: Any = None  # the open episode's onset transition, or None
    last_end: int = 0  # the end of its last event that ended
    peak: float = 0.0
    count: int = 0  # its events
    # the spans of the published events that ended within the finding rate's window
    ended: deque[tuple[int, int]] = field(default_factory=deque)


class FindingTracker:
    """One bed's finding episodes over the detector's transitions: ``take`` returns what the bed
    publishes, the episodes' own transitions (``kind`` :data:`FINDING_KIND`) among them;
    ``make(**fields)`` builds a transition of the detector's type."""

    def __init__(self, config: FindingConfig, rate_hz: int, make: Any) -> None:
        self.config = config
        self.rate_hz = rate_hz
        self._make = make
        self._families = {f: _Family(config.rule(f)) for f in HELD_FAMILIES}
        self.held_dropped = 0  # events heard but never part of an episode

    def take(self, transitions: Iterable[Any], now_sample: int) -> list[Any]:
        if not self.config.on:
            return list(transitions)
        out: list[Any] = []
        for t in transitions:
            family = FAMILY_OF.get(t.type) if t.kind == "physiological" else None
            if family is None:
                out.append(t)
                continue
            self._one(self._families[family], family, t, out)
        for family, f in self._families.items():
            quiet = f.episode is not None and not f.open_members
            if quiet and now_sample - f.last_end > (f.rule.resolve + SETTLE_S) * self.rate_hz:
                self._end(f, family, out)
        return out

    def finish(self, transitions: Iterable[Any], why: str) -> list[Any]:
        """The stream is over: the last transitions, then every open episode ends."""
        out = self.take(transitions, 0)
        for family, f in self._families.items():
            if f.episode is not None:
                self._end(f, family, out, why)
            self.held_dropped += len(f.held)
            f.held.clear()
            f.recent.clear()
        return out

    def _one(self, f: _Family, family: str, t: Any, out: list[Any]) -> None:
        rate = self.rate_hz
        quiet = f.episode is not None and not f.open_members
        if t.state == "onset" and quiet and t.start_sample - f.last_end > f.rule.resolve * rate:
            self._end(f, family, out)
        if t.key in f.members:
            self._publish(f, t, out)
            return
        if t.key in f.held:
            f.held[t.key].append(t)
            return
        if t.state != "onset":  # the rest of an event dropped unheard (it never recurred)
            return
        if f.episode is not None:  # the open episode goes on
            f.members.add(t.key)
            self._publish(f, t, out)
            return
        f.held[t.key] = [t]
        f.recent.append((t.start_sample, t.key))
        floor = t.start_sample - f.rule.within_s * rate
        while f.recent and f.recent[0][0] < floor:
            _, old = f.recent.popleft()
            if old in f.held:
                self.held_dropped += 1
                del f.held[old]
        if len(f.recent) < f.rule.events:
            return
        first = f.recent[0][0]
        f.episode = self._make(
            type=family, kind=FINDING_KIND, priority=finding_priority(family), state="onset",
            start_sample=first, end_sample=None, confidence=0.0,
            key=f"{family}@{first}",
        )  # fmt: skip
        f.last_end, f.peak, f.count = first, 0.0, 0
        released = [f.held.pop(k) for _, k in f.recent]
        f.recent.clear()
        opening: list[Any] = []
        for group in released:
            f.members.add(group[0].key)
            for x in group:
                self._publish(f, x, opening)
        f.episode = replace(f.episode, confidence=f.peak)
        out.append(f.episode)
        out.extend(opening)

    def _publish(self, f: _Family, t: Any, out: list[Any]) -> None:
        out.append(t)
        f.peak = max(f.peak, float(t.confidence))
        if t.state == "onset":
            f.count += 1
            f.open_members.add(t.key)
        if t.state == "ended":
            f.open_members.discard(t.key)
            end = int(t.end_sample if t.end_sample is not None else t.start_sample)
            f.last_end = max(f.last_end, end)
            f.ended.append((int(t.start_sample), end))
            floor = end - self.config.rate_window_s * self.rate_hz
            while f.ended and f.ended[0][1] <= floor:  # out of every later rate's window
                f.ended.popleft()

    def _end(self, f: _Family, family: str, out: list[Any], why: str = "") -> None:
        episode = f.episode
        f.episode = None
        f.members.clear()
        f.open_members.clear()
        out.append(
            replace(
                episode,
                state="ended",
                end_sample=max(f.last_end, episode.start_sample),
                confidence=f.peak,
                reason=f"{f.count} events",
                ended_by=why,
            )
        )

    def open_families(self) -> tuple[str, ...]:
        return tuple(fam for fam, f in self._families.items() if f.episode is not None)

    def rate(self, family: str, now_sample: int, monitored_samples: float) -> float | None:
        """0..1 (see the module doc); None before any monitored time."""
        if monitored_samples <= 0:
            return None
        floor = now_sample - self.config.rate_window_s * self.rate_hz
        covered = _union([(max(s, floor), e) for s, e in self._families[family].ended if e > floor])
        return min(1.0, covered / monitored_samples)


def _union(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for s, e in sorted(spans):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def finding_priority(family: str) -> str:
    """A finding episode's priority: the highest default of its family's held types."""
    return min((DEFAULT_PRIORITIES[t] for t in HELD_FAMILIES[family]), key=PRIORITIES.index)
