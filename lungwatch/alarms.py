"""Alarm conditions (the ward view's and the hospital gateway's): a bed's episodes grouped into one
condition per finding, which a nurse acknowledges. How a condition continues, alarms (latched at the
condition level, IEC 60601-1-8), re-alarms, escalates (never above :data:`ESCALATION_CEILING`), ends
and is ordered: docs/dashboard.md, "Active alarms". :meth:`AlarmCondition.record` and
:meth:`AlarmBook.restore` let a restarted view list what it listed."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from pydantic import NonNegativeFloat

from lungwatch.config import Settings
from lungwatch.events import PRIORITIES, Event, is_segment
from lungwatch.labels import FAMILY, FINDING_CLASS, family_of

PRIORITY_RANK = {p: i for i, p in enumerate(PRIORITIES)}
CONDITION_TEXT = {
    **{f.name: f.text for f in FAMILY.values()},
    "apnoea": "apnoea",
    "tachypnoea": "breathing fast",
    "bradypnoea": "breathing slow",
}
# (``verdict``: a bed's rolling verdict that a ward view lists beside its conditions)
STATE_RANK = {"alarming": 0, "verdict": 0, "acknowledged": 1, "ended": 2}
ESCALATION_CEILING = "medium"  # escalation lifts no condition above this (module doc)
LIFE_THREATENING = ("apnoea",)  # first within their priority in the ward order
MAX_RECORD_CLIPS = 16  # a condition's record keeps its newest clips' episodes
MAX_RETIRED = 100_000  # episodes of conditions that left the list, remembered
Key = tuple[str, str, str]  # device, bed, condition


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


Episode = Event | ListedEpisode  #: what the book reads: an event or one known only from a summary
MAX_LISTED = 256  # open alarms read of one bed's summary


def open_rows(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A summary's open alarms by episode id; rows whose id is no topic segment are passed over."""
    rows = body.get("open")
    if not isinstance(rows, list):
        raise ValueError("a summary lists its open alarms under 'open'")
    return {
        str(row["episode_id"]): summary_row(row)
        for row in rows[:MAX_LISTED]
        if isinstance(row, dict) and is_segment(row.get("episode_id"))
    }


def summary_row(row: dict[str, Any]) -> dict[str, Any]:
    """One open alarm of a bed's retained summary, its fields checked and bounded."""
    priority = row.get("priority") if row.get("priority") in PRIORITIES else "low"
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
    """A :func:`summary_row` as an episode (one that leaves the summary latched was
    acknowledged on the device: a latched episode ends no other way)."""
    detail = {"key": row["key"], "latched": row["latched"]}
    if state == "ended" and row["latched"]:
        detail["ended_by"] = "acknowledge"
    return ListedEpisode(row["episode_id"], device_id, stream_id, row["type"], row["kind"],
                         row["priority"], state, row["start_utc"], detail)  # fmt: skip


def condition_of(event_type: str) -> str:
    return family_of(event_type) or event_type


def condition_type(condition: str) -> str:
    """An event type of ``condition`` (a family's first: Wheeze, Fine Crackle)."""
    return FINDING_CLASS.get(condition, condition)


def names(event_type: str, key: str) -> tuple[str, str, str]:
    """What an acknowledge may name to reach an episode."""
    return (key, event_type, condition_of(event_type))


def condition_text(condition: str) -> str:
    return CONDITION_TEXT.get(condition, condition.replace("_", " "))


@dataclass(frozen=True)
class AlarmSettings(Settings):
    # acknowledged and continuing: a new episode this long after sounds
    realarm_s: NonNegativeFloat = 600.0
    escalate_after_s: NonNegativeFloat = 300.0  # unacknowledged this long: a priority up (0: never)
    hold_s: NonNegativeFloat = 0.0  # acknowledged and over: listed this long (then gone)
    # an episode this soon after the last one's end continues its condition (high: a new one)
    continues_s: NonNegativeFloat = 60.0


@dataclass
class AlarmCondition:
    """One bed's alarm condition; ``*_s``: the book's clock (s), ``*_utc``: the device's stamps."""

    device_id: str
    stream_id: str
    condition: str
    kind: str  # physiological | technical
    base_priority: str  # the highest priority of its episodes
    first_onset_utc: str
    last_episode_utc: str
    raised_s: float  # when it last started alarming (escalation counts from here)
    last_episode_s: float
    raised_utc: str = ""  # the start of the episode that last raised it (the ward order)
    last_type: str = ""  # its newest episode's type (Stridor, Wheeze, ...)
    episodes: int = 0
    open: dict[str, Episode] = field(default_factory=dict)  # episode id -> last message
    clips: list[str] = field(default_factory=list)  # episode ids with a clip, newest last
    acknowledged: bool = False  # since its last (re-)alarm
    acknowledged_s: float | None = None
    acknowledged_by: str = ""
    ended_s: float | None = None  # when its last live episode ended (None: one is live)
    seen: set[str] = field(default_factory=set)  # every episode id it has counted
    current: set[str] = field(default_factory=set)  # episodes since it last started alarming
    # a restored record's open episodes not yet back: listed until the bed's summary says
    # whether the device still holds them
    held: set[str] = field(default_factory=set)
    alarm_utc: str = ""  # the newest episode that must be heard (a new life-threatening one)
    version: int = 0  # bumped by every change (the view is cached per version and priority)
    _view: tuple[tuple[int, str, str], dict[str, Any]] | None = None

    @property
    def key(self) -> Key:
        return (self.device_id, self.stream_id, self.condition)

    @property
    def latched(self) -> bool:
        """Some open episode waits on the device for an acknowledgement."""
        return any(e.detail.get("latched") for e in self.open.values())

    @property
    def live(self) -> bool:
        """Some open episode is still heard (not latched)."""
        return any(not e.detail.get("latched") for e in self.open.values())

    def continues(self, now_s: float, settings: AlarmSettings) -> bool:
        """A new episode now would belong to this condition."""
        if self.live:
            return True
        return self.ended_s is not None and now_s - self.ended_s < self.gap_s(settings)

    def gap_s(self, settings: AlarmSettings) -> float:
        """How long after its last live episode the condition continues."""
        urgent = self.base_priority == "high" or self.condition in LIFE_THREATENING
        return 0.0 if urgent else settings.continues_s

    def state(self, now_s: float, settings: AlarmSettings) -> str:
        """``alarming``, ``acknowledged`` (continuing, or an episode still held) or ``ended``."""
        if not self.acknowledged:
            return "alarming"
        held = self.open or self.held
        return "acknowledged" if held or self.continues(now_s, settings) else "ended"

    @property
    def condition_end_utc(self) -> str | None:
        """Where a latched episode's condition ended (None: none is latched)."""
        ends = [e.detail.get("condition_end_utc") for e in self.open.values()
                if e.detail.get("latched")]  # fmt: skip
        return max((str(e) for e in ends if e), default=None)

    def priority(self, now_s: float, settings: AlarmSettings) -> str:
        rank = PRIORITY_RANK[self.base_priority]
        if not self.acknowledged and settings.escalate_after_s > 0:
            steps = int(max(0.0, now_s - self.raised_s) // settings.escalate_after_s)
            rank = max(min(rank, PRIORITY_RANK[ESCALATION_CEILING]), rank - steps)
        return PRIORITIES[rank]

    def view(self, now_s: float, settings: AlarmSettings) -> dict[str, Any]:
        """The condition as the ward view shows and sends it (JSON-ready, a new dict)."""
        priority, state = self.priority(now_s, settings), self.state(now_s, settings)
        cached = (self.version, priority, state)
        if self._view is not None and self._view[0] == cached:
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
            "state": state,
            "latched": self.latched,
            "first_onset_utc": self.first_onset_utc,
            "last_episode_utc": self.last_episode_utc,
            "raised_utc": self.raised_utc or self.first_onset_utc,
            # what the page sounds anew: a new raise, or a new life-threatening episode
            "alarm_utc": max(self.raised_utc or self.first_onset_utc, self.alarm_utc),
            "life_threatening": self.condition in LIFE_THREATENING,
            "episodes": self.episodes,
            "open_episodes": sorted(self.open),
            "active": self.live,
            "types": sorted({e.type for e in self.open.values()}),
            "last_type": self.last_type,
            "episode_id": newest.episode_id if newest is not None else None,
            "condition_end_utc": self.condition_end_utc,
            "clips": len(self.clips),
            "clip_episode_id": self.clips[-1] if self.clips else None,
            "acknowledged_by": self.acknowledged_by or None,
        }
        self._view = (cached, view)
        return dict(view)

    def record(self) -> dict[str, Any]:
        """For a store (JSON-ready); open episodes' messages come back from events and summaries."""
        return {
            "condition": self.condition, "kind": self.kind,
            "base_priority": self.base_priority, "first_onset_utc": self.first_onset_utc,
            "last_episode_utc": self.last_episode_utc, "raised_utc": self.raised_utc,
            "last_type": self.last_type,
            "raised_s": self.raised_s, "last_episode_s": self.last_episode_s,
            "episodes": self.episodes, "acknowledged": self.acknowledged,
            "acknowledged_s": self.acknowledged_s, "acknowledged_by": self.acknowledged_by,
            "ended_s": self.ended_s, "open": sorted(set(self.open) | self.held),
            "current": sorted(self.current & (set(self.open) | self.held)),
            "clips": self.clips[-MAX_RECORD_CLIPS:],
        }  # fmt: skip


def ward_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Condition views in ward order (stable sorts, least significant key first)."""
    out = sorted(rows, key=lambda r: (r["device_id"], r["stream_id"], r["condition"]))
    out.sort(key=lambda r: r["raised_utc"], reverse=True)
    out.sort(key=lambda r: (STATE_RANK[r["state"]], PRIORITY_RANK[r["priority"]],
                            not r["life_threatening"]))  # fmt: skip
    return out


class AlarmBook:
    """The site's alarm conditions. Not thread-safe: the caller locks."""

    def __init__(self, settings: AlarmSettings | None = None) -> None:
        self.settings = settings or AlarmSettings()
        self._conditions: dict[Key, AlarmCondition] = {}
        self._episode_condition: dict[str, Key] = {}
        self._beds: dict[tuple[str, str], set[Key]] = {}  # a bed's conditions
        self._changed: set[Key] = set()  # changed or gone since :meth:`take_changed`
        # episodes of conditions over and off the list, the newest kept (:meth:`retire`)
        self._retired: OrderedDict[str, None] = OrderedDict()

    def take(self, event: Episode, now_s: float) -> AlarmCondition | None:
        """Every event message of the site, in order (None: a late end, which changes nothing)."""
        key = (event.device_id, event.stream_id, condition_of(event.type))
        cond = self._conditions.get(key)
        new_episode = event.episode_id not in self._episode_condition
        if new_episode and event.episode_id in self._retired:
            if event.state == "ended":
                return None  # a repeat, or a late end: its condition was over and left
            del self._retired[event.episode_id]  # the device holds it again: counted anew
        # a high or life-threatening episode is heard even in a condition acknowledged and
        # continuing: a stridor among acknowledged wheezes, a new apnoea
        urgent = event.priority == "high" or key[2] in LIFE_THREATENING
        if cond is None:
            # a finding episode's condition is a physiological one, as its events' are
            kind = "physiological" if event.kind == "finding" else event.kind
            cond = AlarmCondition(
                event.device_id, event.stream_id, key[2], kind, event.priority,
                event.start_utc, event.start_utc, now_s, now_s, event.start_utc,
            )  # fmt: skip
            self._conditions[key] = cond
            self._beds.setdefault(key[:2], set()).add(key)
        elif new_episode and cond.acknowledged and not cond.continues(now_s, self.settings):
            self._renew(cond, event, now_s)  # acknowledged and over: a new condition
        self._episode_condition[event.episode_id] = key
        self._changed.add(key)
        cond.version += 1
        if PRIORITY_RANK[event.priority] < PRIORITY_RANK[cond.base_priority]:
            cond.base_priority = event.priority
        if new_episode:
            cond.seen.add(event.episode_id)
            cond.current.add(event.episode_id)
            cond.episodes += 1
            cond.last_episode_s = now_s
            if event.start_utc >= cond.last_episode_utc or not cond.last_type:
                cond.last_type = event.type
            cond.last_episode_utc = max(cond.last_episode_utc, event.start_utc)
            if cond.acknowledged and (urgent or self._may_realarm(cond, now_s)):
                self._raise(cond, event, now_s)
            if key[2] in LIFE_THREATENING:
                cond.alarm_utc = max(cond.alarm_utc, event.start_utc)
        cond.held.discard(event.episode_id)
        if event.state == "ended":
            cond.open.pop(event.episode_id, None)
            acknowledged_here = event.detail.get("ended_by") == "acknowledge"
            if acknowledged_here and not cond.acknowledged and event.episode_id in cond.current:
                # acknowledged on the device (by another view, or before this one started);
                # an episode of an earlier alarm of the condition acknowledges nothing now
                cond.acknowledged, cond.acknowledged_s = True, now_s
                cond.acknowledged_by = str(event.detail.get("acknowledged_by") or "")
        else:
            cond.open[event.episode_id] = event
        if cond.live:
            cond.ended_s = None
        elif cond.ended_s is None:
            cond.ended_s = now_s
        return cond

    def _renew(self, cond: AlarmCondition, event: Episode, now_s: float) -> None:
        self._raise(cond, event, now_s)
        cond.base_priority, cond.first_onset_utc = event.priority, event.start_utc
        cond.last_episode_utc, cond.episodes, cond.clips = event.start_utc, 0, []

    @staticmethod
    def _raise(cond: AlarmCondition, event: Episode, now_s: float) -> None:
        cond.acknowledged, cond.raised_s, cond.raised_utc = False, now_s, event.start_utc
        cond.acknowledged_s, cond.acknowledged_by = None, ""
        cond.current = {event.episode_id}  # the alarm from here on

    def _may_realarm(self, cond: AlarmCondition, now_s: float) -> bool:
        acked = cond.acknowledged_s
        return acked is None or now_s - acked >= self.settings.realarm_s

    def owner(self, episode_id: str) -> tuple[str, str] | None:
        """(device, bed) of the condition an episode belongs to; None: no such episode."""
        key = self._episode_condition.get(episode_id)
        return (key[0], key[1]) if key is not None else None

    def add_clip(self, episode_id: str) -> AlarmCondition | None:
        """A clip arrived (None: no such episode); the caller checks whose (:meth:`owner`)."""
        key = self._episode_condition.get(episode_id)
        cond = self._conditions.get(key) if key is not None else None
        if cond is not None and episode_id not in cond.clips:
            cond.clips.append(episode_id)
            cond.version += 1
            self._changed.add(cond.key)
        return cond

    def find(self, device_id: str, stream_id: str, target: str) -> AlarmCondition | None:
        """The bed's condition ``target`` names, or whose open episode's type or key it is."""
        direct = self._conditions.get((device_id, stream_id, target))
        if direct is not None:
            return direct
        for key in self._beds.get((device_id, stream_id), ()):
            cond = self._conditions[key]
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
        self._changed.add(cond.key)
        if cond.state(now_s, self.settings) == "ended":
            self._drop(cond)
        return cond

    def device_took_ack(
        self,
        device_id: str,
        stream_id: str,
        target: str,
        now_s: float,
        user: str,
        utc: str | None = None,
    ) -> AlarmCondition | None:
        """A device took ``user``'s acknowledge (any view's) of ``target`` at ``utc`` (its clock):
        acknowledged here too unless older than the last raise, so it quiets no newer alarm."""
        cond = self.find(device_id, stream_id, target)
        if cond is None:
            return None
        if cond.acknowledged:
            if not cond.acknowledged_by and user:  # acknowledged on the device, now by whom
                cond.acknowledged_by = user
                cond.version += 1
                self._changed.add(cond.key)
            return cond
        if utc is not None and cond.raised_utc and utc < cond.raised_utc:
            return cond
        self.acknowledge(device_id, stream_id, target, now_s, user)
        return cond

    def retire(self, episode_ids: list[str]) -> None:
        """Episodes of conditions that are over (a restarted view's stored events): a late
        or repeated end of one of them starts nothing."""
        for episode in episode_ids:
            if episode not in self._episode_condition:
                self._retired[episode] = None
        while len(self._retired) > MAX_RETIRED:
            self._retired.popitem(last=False)

    def release_held(self, device_id: str, stream_id: str) -> None:
        """The bed's device said which episodes it holds (its summary, or its withdrawal):
        episodes a restored condition held that did not come back are gone."""
        for key in self._beds.get((device_id, stream_id), ()):
            cond = self._conditions[key]
            if cond.held:
                cond.held = set()
                cond.version += 1
                self._changed.add(key)

    def forget_bed(self, device_id: str, stream_id: str) -> None:
        """The bed is gone (its stream ended): its conditions leave with it."""
        for key in list(self._beds.get((device_id, stream_id), ())):
            self._drop(self._conditions[key])

    def conditions(self, now_s: float) -> list[dict[str, Any]]:
        self._expire(now_s)
        return ward_order([c.view(now_s, self.settings) for c in self._conditions.values()])

    def signature(self, now_s: float) -> dict[Key, tuple[str, str]]:
        """What the list shows that time alone changes (each condition's priority and
        state): a caller pushes the list again when this changes."""
        self._expire(now_s)
        return {
            key: (c.priority(now_s, self.settings), c.state(now_s, self.settings))
            for key, c in self._conditions.items()
        }

    def take_changed(self) -> set[Key]:
        """The conditions changed or gone since the last call (a store writes them)."""
        changed, self._changed = self._changed, set()
        return changed

    def get(self, key: Key) -> AlarmCondition | None:
        return self._conditions.get(key)

    def restore(self, device_id: str, stream_id: str, record: dict[str, Any]) -> AlarmCondition:
        """A condition as :meth:`AlarmCondition.record` kept it (ValueError, KeyError or
        TypeError: not such a record); its open episodes come back as their messages do."""
        cond = AlarmCondition(
            device_id, stream_id, str(record["condition"]), str(record["kind"]),
            str(record["base_priority"]), str(record["first_onset_utc"]),
            str(record["last_episode_utc"]), float(record["raised_s"]),
            float(record["last_episode_s"]), raised_utc=str(record.get("raised_utc") or ""),
            last_type=str(record.get("last_type") or ""), episodes=int(record["episodes"]),
        )  # fmt: skip
        if cond.base_priority not in PRIORITY_RANK:
            raise ValueError(f"priority {cond.base_priority!r}")
        cond.acknowledged = bool(record["acknowledged"])
        acked, ended = record.get("acknowledged_s"), record.get("ended_s")
        cond.acknowledged_s = float(acked) if acked is not None else None
        cond.acknowledged_by = str(record.get("acknowledged_by") or "")
        cond.ended_s = float(ended) if ended is not None else None
        cond.clips = [str(c) for c in record.get("clips", [])][-MAX_RECORD_CLIPS:]
        key = cond.key
        cond.held = {str(e) for e in record.get("open", [])}
        cond.seen = cond.held | set(cond.clips)
        cond.current = {str(e) for e in record.get("current", [])}
        if cond.ended_s is None:  # it had live episodes: over unless they come back open
            cond.ended_s = cond.last_episode_s
        self._conditions[key] = cond
        self._beds.setdefault(key[:2], set()).add(key)
        for episode_id in cond.seen:
            self._episode_condition[episode_id] = key
        return cond

    def _expire(self, now_s: float) -> None:
        """Ended conditions leave ``hold_s`` after the later of their end and acknowledgement."""
        for cond in list(self._conditions.values()):
            if cond.state(now_s, self.settings) != "ended":
                continue
            over_at = max((cond.ended_s or now_s) + cond.gap_s(self.settings),
                          cond.acknowledged_s or now_s)  # fmt: skip
            if now_s - over_at >= self.settings.hold_s:
                self._drop(cond)

    def _drop(self, cond: AlarmCondition) -> None:
        key = cond.key
        self._conditions.pop(key, None)
        bed = self._beds.get(key[:2])
        if bed is not None:
            bed.discard(key)
            if not bed:
                del self._beds[key[:2]]
        self._changed.add(key)
        for episode in cond.seen:
            self._episode_condition.pop(episode, None)
        self.retire(list(cond.seen))
