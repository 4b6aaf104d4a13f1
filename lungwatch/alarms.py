"""Alarm conditions: what a nurse acknowledges, built from the episodes a bed publishes.

    condition_of("Fine Crackle")        # "DAS": the alarm condition an event type belongs to
    book = AlarmBook(AlarmSettings())
    book.take(event, now_s)             # every event message of the site, in order
    book.acknowledge("edge-1", "bed-3", "DAS", now_s, "nurse")
    book.conditions(now_s)              # one AlarmCondition per bed and condition, ward order

The MQTT stream carries **episodes**: every crackle heard in a breath phase is an episode with
its own onset and end (the wire contract, ``lungwatch.events``). A ward cannot work from those: a
bed with crackles raises one every few breaths. This layer, shared by the device (its
acknowledge matches a condition name) and the ward view (its alarm list), groups them as a
bedside monitor does, into one **alarm condition per bed and finding**:

- ``CAS`` (Wheeze, Rhonchi, Stridor and Wheeze+Crackle), ``DAS`` (Fine and Coarse Crackle),
  ``apnoea``, ``tachypnoea``, ``bradypnoea``, and each technical condition by its own type
  (``poor_signal``, ``off_body``, ``breath_signal_lost``, ...): :func:`condition_of`;
- a condition carries its first onset, its last episode, how many episodes it has had, the
  episodes still open on the device (live or latched) and which of them have a clip;
- its priority is the highest of its episodes'; while nobody acknowledges it, it rises one
  step (low -> medium -> high) every ``escalate_after_s`` (0: never). Technical conditions
  do not rise above medium (IEC 60601-1-8 keeps technical alarms apart from physiological
  ones);
- it is **alarming** from its first episode until a person acknowledges it, whether or not
  its episodes have ended meanwhile (latched at the condition level, as IEC 60601-1-8 latches
  an alarm signal); acknowledged, it stays listed and quiet while episodes of it are open,
  and a new episode raises it again only once ``realarm_s`` has passed since the
  acknowledgement (before that the episode is counted, not sounded), even if the condition
  left the list in between; an episode the device ended by an acknowledgement (another view's,
  or one before this view started) acknowledges its condition here too;
- once acknowledged and its episodes over it is ``ended``: listed ``hold_s`` (0 by default),
  then gone; acknowledging a condition whose episodes are over removes it at once.

Ward order (:func:`ward_order`): alarming, then acknowledged, then ended; within each, priority
(high first), then the newest episode first, so an apnoea that starts now lands on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from lungwatch.config import check
from lungwatch.events import is_segment

PRIORITIES = ("high", "medium", "low")
PRIORITY_RANK = {p: i for i, p in enumerate(PRIORITIES)}
CAS_TYPES = ("Wheeze", "Rhonchi", "Stridor", "Wheeze+Crackle")
DAS_TYPES = ("Fine Crackle", "Coarse Crackle")
CONDITION_TEXT = {
    "CAS": "wheezes (CAS)",
    "DAS": "crackles (DAS)",
    "apnoea": "apnoea",
    "tachypnoea": "breathing fast",
    "bradypnoea": "breathing slow",
}
# (``verdict``: a bed's rolling verdict that a ward view lists beside its conditions)
STATE_RANK = {"alarming": 0, "verdict": 0, "acknowledged": 1, "ended": 2}
TECHNICAL_CEILING = "medium"  # a technical condition does not escalate above this


class Episode(Protocol):
    """What the book reads of an episode's message: an :class:`~lungwatch.events.Event`, or a
    :class:`ListedEpisode` a bed's summary lists."""

    @property
    def episode_id(self) -> str: ...
    @property
    def device_id(self) -> str: ...
    @property
    def stream_id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def priority(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def start_utc(self) -> str: ...
    @property
    def detail(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ListedEpisode:
    """An open episode known only from its bed's retained summary (latched before the view
    started); ``state`` ``ended`` when the summary stopped listing it."""

    episode_id: str
    device_id: str
    stream_id: str
    type: str
    kind: str
    priority: str
    state: str
    start_utc: str
    detail: dict[str, Any]


MAX_LISTED = 256  # open alarms read of one bed's summary


def open_rows(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A bed's retained summary's open alarms (:func:`summary_row`) by episode id; rows
    without an episode id that is a topic segment are passed over."""
    rows = body.get("open")
    if not isinstance(rows, list):
        raise ValueError("a summary lists its open alarms under 'open'")
    return {
        str(row["episode_id"]): summary_row(row)
        for row in rows[:MAX_LISTED]
        if isinstance(row, dict) and is_segment(row.get("episode_id"))
    }


def summary_row(row: dict[str, Any]) -> dict[str, Any]:
    """One open alarm of a bed's retained summary, its fields checked and bounded (the ward
    view lists it as it lists an event's row)."""
    priority = row.get("priority") if row.get("priority") in ("high", "medium", "low") else "low"
    confidence = row.get("confidence")
    return {
        "id": f"summary:{row['episode_id']}", "episode_id": str(row["episode_id"]),
        "type": str(row.get("type", "?"))[:64], "kind": str(row.get("kind", "physiological")),
        "priority": priority, "state": "ongoing", "start_utc": str(row.get("start_utc", "")),
        "end_utc": None,
        "confidence": confidence if isinstance(confidence, int | float) else None,
        "key": str(row.get("key") or row.get("type", ""))[:128],
        "latched": bool(row.get("latched")), "ended_by": None, "acknowledged_utc": None,
        "condition_end_utc": None,
    }  # fmt: skip


def listed_episode(
    device_id: str, stream_id: str, row: dict[str, Any], state: str
) -> ListedEpisode:
    """A :func:`summary_row` as an episode of the alarm book (one that leaves the summary
    latched was acknowledged on the device: a latched episode ends no other way)."""
    detail = {"key": row["key"], "latched": row["latched"]}
    if state == "ended" and row["latched"]:
        detail["ended_by"] = "acknowledge"
    return ListedEpisode(row["episode_id"], device_id, stream_id, row["type"], row["kind"],
                         row["priority"], state, row["start_utc"], detail)  # fmt: skip


def condition_of(event_type: str) -> str:
    """The alarm condition of an event type (module doc): a family, a breathing finding or
    the technical type itself."""
    if event_type in CAS_TYPES:
        return "CAS"
    if event_type in DAS_TYPES:
        return "DAS"
    return event_type


def condition_type(condition: str) -> str:
    """An event type of ``condition`` (its family's first: Wheeze, Fine Crackle; a breathing
    finding's or technical condition's own type), for what is named by type: a finding's
    code, an episode filed under the condition."""
    return {"CAS": CAS_TYPES[0], "DAS": DAS_TYPES[0]}.get(condition, condition)


def names(event_type: str, key: str) -> tuple[str, str, str]:
    """What an acknowledge may name to reach an episode: its key, its type or its alarm
    condition."""
    return (key, event_type, condition_of(event_type))


def condition_text(condition: str) -> str:
    return CONDITION_TEXT.get(condition, condition.replace("_", " "))


@dataclass(frozen=True)
class AlarmSettings:
    """How conditions re-alarm, rise and leave (module doc); seconds."""

    realarm_s: float = 600.0  # after an acknowledgement, new episodes are quiet this long
    escalate_after_s: float = 300.0  # unacknowledged this long: one priority up (0: never)
    hold_s: float = 0.0  # acknowledged and its episodes over: listed this long (then gone)

    def __post_init__(self) -> None:
        check(self.realarm_s >= 0, "realarm_s", self.realarm_s, "a number >= 0 (seconds)")
        check(self.escalate_after_s >= 0, "escalate_after_s", self.escalate_after_s,
              "a number >= 0 (seconds; 0: never)")  # fmt: skip
        check(self.hold_s >= 0, "hold_s", self.hold_s, "a number >= 0 (seconds)")


@dataclass
class AlarmCondition:
    """One bed's alarm condition (module doc). Times ``*_s`` are the book's clock (seconds);
    ``*_utc`` the device's stamps of the episodes."""

    device_id: str
    stream_id: str
    condition: str
    kind: str  # physiological | technical
    base_priority: str  # the highest priority of its episodes
    first_onset_utc: str
    last_episode_utc: str
    raised_s: float  # when it last started alarming (escalation counts from here)
    last_episode_s: float
    episodes: int = 0
    open: dict[str, Episode] = field(default_factory=dict)  # episode id -> last message
    clips: list[str] = field(default_factory=list)  # episode ids with a clip, newest last
    acknowledged: bool = False  # since its last (re-)alarm
    acknowledged_s: float | None = None
    acknowledged_by: str = ""
    ended_s: float | None = None  # its last open episode ended (None: some are open)
    seen: set[str] = field(default_factory=set)  # every episode id it has counted
    version: int = 0  # bumped by every change (the view is cached per version and priority)
    _view: tuple[tuple[int, str], dict[str, Any]] | None = None

    @property
    def latched(self) -> bool:
        """Some open episode waits on the device for an acknowledgement."""
        return any(e.detail.get("latched") for e in self.open.values())

    @property
    def state(self) -> str:
        """``alarming`` (until acknowledged, whether or not episodes are open: latched at the
        condition level), ``acknowledged`` (episodes still open) or ``ended`` (acknowledged,
        its episodes over: listed ``hold_s``)."""
        if not self.acknowledged:
            return "alarming"
        return "acknowledged" if self.open else "ended"

    @property
    def condition_end_utc(self) -> str | None:
        """Where a latched episode's condition ended (None: none is latched)."""
        ends = [e.detail.get("condition_end_utc") for e in self.open.values()
                if e.detail.get("latched")]  # fmt: skip
        return max((str(e) for e in ends if e), default=None)

    def priority(self, now_s: float, settings: AlarmSettings) -> str:
        """The base priority, one step up per ``escalate_after_s`` while alarming (technical
        conditions no higher than medium)."""
        rank = PRIORITY_RANK[self.base_priority]
        if self.state == "alarming" and settings.escalate_after_s > 0:
            steps = int(max(0.0, now_s - self.raised_s) // settings.escalate_after_s)
            ceiling = PRIORITY_RANK[TECHNICAL_CEILING] if self.kind == "technical" else 0
            rank = max(min(rank, ceiling), rank - steps)
        return PRIORITIES[rank]

    def view(self, now_s: float, settings: AlarmSettings) -> dict[str, Any]:
        """The condition as the ward view shows and sends it (JSON-ready, a new dict)."""
        priority = self.priority(now_s, settings)
        if self._view is not None and self._view[0] == (self.version, priority):
            return dict(self._view[1])
        newest = max(self.open.values(), key=lambda e: e.start_utc, default=None)
        view = {
            "device_id": self.device_id,
            "stream_id": self.stream_id,
            "condition": self.condition,
            "key": self.condition,  # what an acknowledge names
            "text": condition_text(self.condition),
            "kind": self.kind,
            "priority": priority,
            "base_priority": self.base_priority,
            "escalated": priority != self.base_priority,
            "state": self.state,
            "latched": self.latched,
            "first_onset_utc": self.first_onset_utc,
            "last_episode_utc": self.last_episode_utc,
            "episodes": self.episodes,
            "open_episodes": sorted(self.open),
            "active": any(not e.detail.get("latched") for e in self.open.values()),
            "types": sorted({e.type for e in self.open.values()}),
            "episode_id": newest.episode_id if newest is not None else None,
            "condition_end_utc": self.condition_end_utc,
            "clips": len(self.clips),
            "clip_episode_id": self.clips[-1] if self.clips else None,
            "acknowledged_by": self.acknowledged_by or None,
        }
        self._view = ((self.version, priority), view)
        return dict(view)


def ward_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Condition views sorted for the ward: alarming first (then acknowledged, then ended),
    then priority, then the newest episode first, then place (stable sorts, least
    significant key first)."""
    out = sorted(rows, key=lambda r: (r["device_id"], r["stream_id"], r["condition"]))
    out.sort(key=lambda r: r["last_episode_utc"], reverse=True)
    out.sort(key=lambda r: (STATE_RANK[r["state"]], PRIORITY_RANK[r["priority"]]))
    return out


class AlarmBook:
    """The site's alarm conditions (module doc). Not thread-safe: the caller locks."""

    def __init__(self, settings: AlarmSettings | None = None) -> None:
        self.settings = settings or AlarmSettings()
        self._conditions: dict[tuple[str, str, str], AlarmCondition] = {}
        self._episode_condition: dict[str, tuple[str, str, str]] = {}
        self._acknowledged_s: dict[tuple[str, str, str], float] = {}  # the last per condition

    def take(self, event: Episode, now_s: float) -> AlarmCondition:
        """One event message (an episode's onset, update or end) into its condition."""
        key = (event.device_id, event.stream_id, condition_of(event.type))
        cond = self._conditions.get(key)
        new_episode = event.episode_id not in self._episode_condition
        if cond is None:
            cond = AlarmCondition(
                event.device_id, event.stream_id, key[2], event.kind, event.priority,
                event.start_utc, event.start_utc, now_s, now_s,
            )  # fmt: skip
            self._conditions[key] = cond
            acked = self._acknowledged_s.get(key)
            if acked is not None and now_s - acked < self.settings.realarm_s:
                cond.acknowledged, cond.acknowledged_s = True, acked
        self._episode_condition[event.episode_id] = key
        cond.version += 1
        if PRIORITY_RANK[event.priority] < PRIORITY_RANK[cond.base_priority]:
            cond.base_priority = event.priority
        if new_episode:
            cond.seen.add(event.episode_id)
            cond.episodes += 1
            cond.last_episode_s = now_s
            cond.last_episode_utc = max(cond.last_episode_utc, event.start_utc)
            if cond.acknowledged and self._may_realarm(cond, now_s):
                cond.acknowledged, cond.raised_s = False, now_s
                cond.acknowledged_s, cond.acknowledged_by = None, ""
        if event.state == "ended":
            cond.open.pop(event.episode_id, None)
            if event.detail.get("ended_by") == "acknowledge" and not cond.acknowledged:
                # acknowledged on the device (by another view, or before this one started)
                cond.acknowledged, cond.acknowledged_s = True, now_s
                cond.acknowledged_by = str(event.detail.get("acknowledged_by") or "")
                self._acknowledged_s[key] = now_s
        else:
            cond.open[event.episode_id] = event
        cond.ended_s = now_s if not cond.open else None
        return cond

    def _may_realarm(self, cond: AlarmCondition, now_s: float) -> bool:
        acked = cond.acknowledged_s
        return acked is None or now_s - acked >= self.settings.realarm_s

    def owner(self, episode_id: str) -> tuple[str, str] | None:
        """(device, bed) of the condition an episode belongs to; None: no such episode."""
        key = self._episode_condition.get(episode_id)
        return (key[0], key[1]) if key is not None else None

    def add_clip(self, episode_id: str) -> AlarmCondition | None:
        """An episode's clip arrived: listed on its condition (None: no such episode). Whose
        clip it may be is the caller's check (:meth:`owner`)."""
        key = self._episode_condition.get(episode_id)
        cond = self._conditions.get(key) if key is not None else None
        if cond is not None and episode_id not in cond.clips:
            cond.clips.append(episode_id)
            cond.version += 1
        return cond

    def find(self, device_id: str, stream_id: str, target: str) -> AlarmCondition | None:
        """The bed's condition that ``target`` names: the condition, or a type or key of
        one of its open episodes."""
        direct = self._conditions.get((device_id, stream_id, target))
        if direct is not None:
            return direct
        for (dev, bed, _), cond in self._conditions.items():
            if (dev, bed) != (device_id, stream_id):
                continue
            for event in cond.open.values():
                if target in (event.type, event.detail.get("key")):
                    return cond
        return None

    def acknowledge(
        self, device_id: str, stream_id: str, target: str, now_s: float, user: str = ""
    ) -> AlarmCondition | None:
        """A person acknowledged the condition ``target`` names (see :meth:`find`)."""
        cond = self.find(device_id, stream_id, target)
        if cond is None:
            return None
        cond.acknowledged, cond.acknowledged_s, cond.acknowledged_by = True, now_s, user
        cond.version += 1
        self._acknowledged_s[(device_id, stream_id, cond.condition)] = now_s
        if not cond.open:
            self._drop(cond)
        return cond

    def device_took_ack(
        self, device_id: str, stream_id: str, target: str, now_s: float, user: str
    ) -> AlarmCondition | None:
        """A device says it took an acknowledge of ``target`` by ``user`` (any view's, or
        one before this book started): the condition it names is acknowledged here too
        unless it already is. The condition, or None: no such condition."""
        cond = self.find(device_id, stream_id, target)
        if cond is not None and not cond.acknowledged:
            self.acknowledge(device_id, stream_id, target, now_s, user)
        return cond

    def forget_bed(self, device_id: str, stream_id: str) -> None:
        """The bed is gone (its stream ended): its conditions leave with it."""
        for cond in [c for c in self._conditions.values()
                     if (c.device_id, c.stream_id) == (device_id, stream_id)]:  # fmt: skip
            self._drop(cond)

    def conditions(self, now_s: float) -> list[dict[str, Any]]:
        """The listed conditions' views in :func:`ward_order` (ended ones past ``hold_s``
        are dropped first)."""
        self._expire(now_s)
        return ward_order([c.view(now_s, self.settings) for c in self._conditions.values()])

    def signature(self, now_s: float) -> tuple[tuple[str, ...], ...]:
        """What the list shows that time alone changes (each condition's priority and
        state): a caller pushes the list again when this changes."""
        self._expire(now_s)
        return tuple(
            (*key, c.priority(now_s, self.settings), c.state) for key, c in self._conditions.items()
        )

    def _expire(self, now_s: float) -> None:
        """Acknowledged conditions whose episodes are over leave ``hold_s`` after the last."""
        for cond in list(self._conditions.values()):
            if cond.state != "ended":
                continue
            over_s = now_s - max(cond.ended_s or now_s, cond.acknowledged_s or now_s)
            if over_s >= self.settings.hold_s:
                self._drop(cond)

    def _drop(self, cond: AlarmCondition) -> None:
        key = (cond.device_id, cond.stream_id, cond.condition)
        self._conditions.pop(key, None)
        for episode in cond.seen:
            self._episode_condition.pop(episode, None)
