"""The runtime's event messages: one per transition of a bed. :class:`EventOutbox`, the one
place that tracks each bed's open episodes, keeps them and the beds' summaries until
:meth:`EventOutbox.flush` (once per group of beds) hands them to the sinks: the events in one
call, in order, and no summary before the events of its bed made before it (a withdrawn
summary after its bed's last ends). The runtime calls it only under its own lock."""

from __future__ import annotations

from typing import Any

from edge.bed.detector import Transition
from edge.runtime.stream import Stream
from edge.sinks import Sink, publish_all, publish_summary
from lungwatch.alarms import names
from lungwatch.events import Event, utc_now

ACKNOWLEDGE = "acknowledge"  # the ended_by of an acknowledged event


class EventOutbox:
    def __init__(
        self, sink: Sink, site: str, device_id: str, model_id: str, model_sha256: str
    ) -> None:
        self.sink = sink
        self._identity = {"site": site, "device_id": device_id}
        self._model = {"model_id": model_id, "model_sha256": model_sha256}
        # events and (bed, summary or None: withdrawn) in the order they were made
        self._pending: list[Event | tuple[str, dict[str, Any] | None]] = []
        self._episodes: dict[str, dict[str, Event]] = {}  # bed -> key -> last message
        # bed -> keys of episodes held over a restart (edge.runtime.latched): no chain has
        # them; they end only by acknowledge (:meth:`end_carried`)
        self._carried: dict[str, set[str]] = {}
        self._acknowledged: dict[str, set[str]] = {}  # bed -> keys of live acknowledged ones
        # something may have changed which episodes need an acknowledgement (:meth:`held`)
        self.held_changed = True

    def emit(
        self, stream: Stream, transitions: list[Transition], quality: dict[str, Any] | None = None
    ) -> list[Event]:
        episodes = self._episodes.setdefault(stream.id, {})
        made = []
        for transition in transitions:
            event = self._event(stream, episodes.get(transition.key), transition, quality)
            if event.state == "ended":
                episodes.pop(transition.key, None)
                self._acknowledged.get(stream.id, set()).discard(transition.key)
            else:
                episodes[transition.key] = event
            made.append(self._add(stream, event))
        return made

    def open_episodes(self, stream_id: str) -> list[Event]:
        """A bed's open episodes (live or latched), each its last message, oldest first."""
        return list(self._episodes.get(stream_id, {}).values())

    def carry(self, stream: Stream, event: Event) -> Event:
        """Announce an alarm held over a restart (its last message before it): an
        ``ongoing`` of the same episode, latched and marked restored; open until acknowledged."""
        key = str(event.detail.get("key") or event.episode_id)
        detail = {**event.detail, "key": key, "latched": True, "restored": True}
        announced = event.ongoing(detail=detail)
        self._episodes.setdefault(stream.id, {})[key] = announced
        self._carried.setdefault(stream.id, set()).add(key)
        return self._add(stream, announced)

    def acknowledged(self, stream_id: str, target: str) -> None:
        """An acknowledge named ``target`` on the bed: its live episodes that match are
        acknowledged (they end on their own; none is held over a restart)."""
        for key, event in self._episodes.get(stream_id, {}).items():
            if matches(event, key, target) and not event.detail.get("latched"):
                self._acknowledged.setdefault(stream_id, set()).add(key)
                self.held_changed = True

    def end_carried(self, stream: Stream, target: str, user: str = "") -> list[Event]:
        """End the bed's held-over alarms that ``target`` names (key, type or condition)."""
        episodes, carried = self._episodes.get(stream.id, {}), self._carried.get(stream.id, set())
        made = []
        for key in sorted(k for k in carried if matches(episodes[k], k, target)):
            last = episodes.pop(key)
            carried.discard(key)
            detail = {**last.detail, "ended_by": ACKNOWLEDGE, "acknowledged_utc": utc_now()}
            if user:
                detail["acknowledged_by"] = user
            end_utc = str(last.detail.get("condition_end_utc") or last.start_utc)
            end_sample = last.detail.get("condition_end_sample")
            ended = last.ended(end_utc, end_sample if isinstance(end_sample, int) else None,
                               detail=detail)  # fmt: skip
            made.append(self._add(stream, ended))
        return made

    def held(self, stream_id: str, latching: frozenset[str]) -> list[tuple[str, Event]]:
        """The bed's open episodes that need an acknowledgement: latched ones, held-over ones,
        and live ones of a ``latching`` priority that nobody acknowledged."""
        acked = self._acknowledged.get(stream_id, set())
        carried = self._carried.get(stream_id, set())

        def needs_ack(key: str, event: Event) -> bool:
            if event.detail.get("latched") or key in carried:
                return True
            return event.priority in latching and key not in acked

        return [(k, e) for k, e in self._episodes.get(stream_id, {}).items() if needs_ack(k, e)]

    def latch_at_shutdown(self, stream: Stream, key: str, end_sample: int) -> Event:
        """A live episode still held when monitoring stopped: latched (its condition's end
        is where the audio stopped), to be held over the restart."""
        last = self._episodes[stream.id][key]
        detail = {**last.detail, "latched": True, "condition_end_sample": end_sample,
                  "condition_end_utc": stream.utc(end_sample),
                  "condition_end_reason": "monitoring stopped (device shutdown)"}  # fmt: skip
        event = self._episodes[stream.id][key] = last.ongoing(detail=detail)
        return self._add(stream, event)

    def _add(self, stream: Stream, event: Event) -> Event:
        self.held_changed = True
        stream.counters["events"] += 1
        self._pending.append(event)
        return event

    def open_events(self, stream_id: str) -> int:
        return len(self._episodes.get(stream_id, ()))

    def summary(self, stream_id: str, summary: dict[str, Any] | None) -> None:
        """A bed's summary (None: withdrawn), sent at the next :meth:`flush` after the events
        made before it."""
        self._pending.append((stream_id, summary))

    def flush(self) -> None:
        """The events in one call (one spool transaction); each bed's summary made before any
        of its events here goes ahead of them (the view names a bed before its first event),
        its last one made after them follows them (the ones between are superseded)."""
        pending, self._pending = self._pending, []
        events: list[Event] = []
        beds: set[str] = set()  # those with an event so far
        ahead: dict[str, dict[str, Any] | None] = {}
        behind: dict[str, dict[str, Any] | None] = {}
        for item in pending:
            if isinstance(item, Event):
                events.append(item)
                beds.add(item.stream_id)
            elif item[0] in beds:
                behind[item[0]] = item[1]
            else:
                ahead[item[0]] = item[1]
        for stream_id, summary in ahead.items():
            publish_summary(self.sink, stream_id, summary)
        if events:
            publish_all(self.sink, events)
        for stream_id, summary in behind.items():
            publish_summary(self.sink, stream_id, summary)

    def _event(
        self, stream: Stream, previous: Event | None, t: Transition, quality: dict[str, Any] | None
    ) -> Event:
        """The message for ``t`` (an ``ended`` with no onset opens and closes an episode at
        once); ``quality`` None keeps the episode's last measures."""
        detail = _detail(t)
        if previous is None:
            model = self._model if t.kind in ("physiological", "finding") else {}
            previous = Event.onset(
                **self._identity,
                stream_id=stream.id,
                type=t.type,
                priority=t.priority,
                start_utc=stream.utc(t.start_sample),
                start_sample=t.start_sample,
                model_id=model.get("model_id"),
                model_sha256=model.get("model_sha256"),
                confidence=_confidence(t),
                detail=_detail(t),
                quality=quality or {},
            )
            if t.state == "onset":
                return previous
        changes: dict[str, Any] = {"confidence": _confidence(t), "priority": t.priority}
        if quality is not None:
            changes["quality"] = quality
        if t.state == "ended":
            end = t.end_sample if t.end_sample is not None else t.start_sample
            if t.ended_by:
                detail["ended_by"] = t.ended_by
            if t.ended_by == ACKNOWLEDGE:
                detail["acknowledged_utc"] = utc_now()
                if t.acknowledged_by:
                    detail["acknowledged_by"] = t.acknowledged_by
            return previous.ended(stream.utc(end), end, detail=detail, **changes)
        if t.latched and t.end_sample is not None:  # condition over, alarm latched until ack
            detail.update(latched=True, condition_end_sample=t.end_sample)
            detail["condition_end_utc"] = stream.utc(t.end_sample)
        return previous.ongoing(detail=detail, **changes)


def _confidence(t: Transition) -> float | None:
    """The peak probability of a physiological event or finding episode, else None."""
    if t.kind not in ("physiological", "finding"):
        return None
    return float(min(max(t.confidence, 0.0), 1.0))


def _detail(t: Transition) -> dict[str, Any]:
    return {"key": t.key, "reason": t.reason} if t.reason else {"key": t.key}


def matches(event: Event, key: str, target: str) -> bool:
    """An acknowledge naming ``target`` covers this episode: its key, type or alarm condition."""
    return target in names(event.type, key)
