"""The ward's memory beyond the live state (a mixin of :class:`wardview.ward.Ward`):

- **summaries** (``…/<bed>/summary``, retained): a bed's display name and location, and its
  open alarms; an alarm a bed still holds that the view never saw (latched before the view
  started) is listed from the summary until its ``ended`` comes;
- **evidence** (``…/<bed>/evidence``): clips put together from their parts
  (:class:`lungwatch.clip.Assembler`), stored, and marked on the event and alarm rows of
  their episode;
- **history** (:class:`wardview.history.History`): every event, verdict, breathing
  reading (at most one a minute per bed, and every change of state), summary and clip goes to
  the store, and so does every change of an alarm condition (:meth:`Ward.save_alarms`); at
  start the ward is rebuilt from it (the alarm conditions as they were listed: alarming,
  escalated, acknowledged by whom, their episode counts; names, open episodes, each bed's
  last events, breathing and verdict), and the devices' retained messages bring it up to
  date: an episode restored as open that its bed's next summary does not list ended while
  the view was away.
"""

from __future__ import annotations

import threading
from typing import Any

from lungwatch.alarms import AlarmBook, ListedEpisode, listed_episode, open_rows
from lungwatch.clip import Assembler, EvidenceError
from lungwatch.events import FINDING_RATE_KEYS, Event, is_segment
from lungwatch.intake import MessageError
from wardview.beds import Bed, Device, event_row, show_respiration, verdict_view
from wardview.history import History, Restored, epoch_s

READING_EVERY_S = 60.0  # a bed's breathing and verdict are stored at most this often (and
# on a change of state or verdict)
# what is stored of a reading: the wire contract's fields, nothing a device added
STORED_FIELDS = {
    "verdict": ("verdict", "window_s", "utc"),
    "respiration": ("state", "rate_bpm", "confidence", "breaths", "age_band", "low_bpm",
                    "high_bpm", "reason", "utc", "last_breath_utc", *FINDING_RATE_KEYS),
}  # fmt: skip
IDENTITY = ("schema_version", "site", "device_id", "stream_id")
MAX_STORED_TEXT = 200  # a stored reading's longest text (a reason)
MAX_TEXT = 80  # a bed's name or location


class WardMemory:
    """See the module doc. Needs the attributes :class:`~wardview.ward.Ward` sets."""

    lock: threading.RLock
    devices: dict[str, Device]
    history: History | None
    clips: set[str]
    assembler: Assembler
    book: AlarmBook
    clock: Any
    _dirty_beds: set[tuple[str, str]]
    _dirty_alarms: bool
    _stored_reading: dict[tuple[str, str, str], tuple[float, str]]

    def _place(self, device_id: str, stream_id: str) -> tuple[Device, Bed]:
        raise NotImplementedError  # the Ward's

    def store_failed(self, why: str, reason: str = "not_stored") -> None:
        raise NotImplementedError  # the Ward's

    def _remember(self, event_id: str) -> None:
        raise NotImplementedError  # the Ward's

    def _summary(self, device_id: str, stream_id: str, body: dict[str, Any]) -> None:
        if body.get("stream_id") != stream_id or not isinstance(body.get("open"), list):
            raise MessageError(f"summary must be for {stream_id!r} and list its open alarms")
        _, bed = self._place(device_id, stream_id)
        bed.name, bed.location = _text(body.get("name")), _text(body.get("location"))
        rows = open_rows(body)
        before, bed.summary_open = bed.summary_open, rows
        now = self.clock()
        # what is over first (an acknowledged apnoea's end before a new one it lists)
        for episode_id in bed.restored - set(rows):  # ended while the view was away
            event = bed.open.pop(episode_id, None)
            if event is not None:
                self.book.take(_ended(event), now)
        bed.restored &= set(rows)
        for episode_id, row in before.items():  # no longer held (their ended went by)
            if episode_id not in rows and episode_id not in bed.open:
                self.book.take(listed_episode(device_id, stream_id, row, "ended"), now)
        for episode_id, row in rows.items():  # alarms the view has no message of
            if episode_id not in bed.open and episode_id not in before:
                self.book.take(listed_episode(device_id, stream_id, row, "ongoing"), now)
        self.book.release_held(device_id, stream_id)  # what a restored alarm held and is gone
        if self.history is not None:
            self.history.set_summary(device_id, stream_id, body)
        self._dirty_beds.add((device_id, stream_id))
        self._dirty_alarms = True

    def _withdraw_summary(self, device_id: str, stream_id: str) -> None:
        bed = self.devices[device_id].beds.get(stream_id) if device_id in self.devices else None
        if bed is not None:
            now = self.clock()
            for episode_id, row in bed.summary_open.items():
                if episode_id not in bed.open:
                    self.book.take(listed_episode(device_id, stream_id, row, "ended"), now)
            bed.summary_open = {}
            for episode_id in bed.restored:  # the stream ended: the device holds none of them
                event = bed.open.pop(episode_id, None)
                if event is not None:
                    self.book.take(_ended(event), now)
            bed.restored = set()
            self.book.release_held(device_id, stream_id)
            self._dirty_beds.add((device_id, stream_id))
            self._dirty_alarms = True

    def _evidence(self, device_id: str, stream_id: str, body: dict[str, Any]) -> None:
        if (body.get("device_id"), body.get("stream_id")) != (device_id, stream_id):
            raise MessageError(f"evidence must be for {device_id!r}/{stream_id!r}")
        try:
            clip = self.assembler.take(body)
        except EvidenceError as exc:
            raise MessageError(str(exc)) from None
        if clip is None:
            return
        owner = self.book.owner(clip.episode_id)
        if owner is not None and owner != (device_id, stream_id):
            raise MessageError(
                f"evidence for episode {clip.episode_id} of {owner[0]}/{owner[1]}: a device "
                "sends clips of its own beds' episodes only"
            )
        self.clips.add(clip.episode_id)
        self.book.add_clip(clip.episode_id)
        if self.history is not None:
            self.history.add_clip(clip)
        self._dirty_beds.add((device_id, stream_id))
        self._dirty_alarms = True

    def _store_event(self, event: Event) -> None:
        if self.history is not None:
            self.history.add_event(event)

    def _store_reading(
        self, device_id: str, stream_id: str, kind: str, body: dict[str, Any]
    ) -> None:
        """A verdict or breathing reading on a change of verdict or state, else at most once a
        minute (by its own time, later only); its contract's fields only, short text."""
        if self.history is None:
            return
        at = epoch_s(body.get("utc")) or 0.0
        state = str(body.get("verdict" if kind == "verdict" else "state"))
        last = self._stored_reading.get((device_id, stream_id, kind))
        if last is not None and (at < last[0] or (last[1] == state and
                                                  at - last[0] < READING_EVERY_S)):  # fmt: skip
            return
        self._stored_reading[(device_id, stream_id, kind)] = (at, state)
        kept = {key: body[key] for key in (*IDENTITY, *STORED_FIELDS[kind]) if key in body}
        for key, value in kept.items():
            if isinstance(value, str) and len(value) > MAX_STORED_TEXT:
                kept[key] = value[:MAX_STORED_TEXT]
        self.history.add_reading(device_id, stream_id, kind, kept)

    def restore(self, restored: Restored) -> None:
        """Rebuild the ward from the store (module doc)."""
        with self.lock:
            for device_id, stream_id, record in restored.alarms:
                try:
                    self._place(device_id, stream_id)  # the bed, within the caps
                    self.book.restore(device_id, stream_id, record)
                except (MessageError, ValueError, KeyError, TypeError) as exc:
                    cond = record.get("condition") if isinstance(record, dict) else None
                    self.store_failed(f"alarm {cond!r} of {device_id}/{stream_id} kept in the "
                                      f"history could not be listed again: {exc}")  # fmt: skip
            for device_id, stream_id, summary in restored.summaries:
                if is_segment(device_id) and is_segment(stream_id):
                    _, bed = self._place(device_id, stream_id)
                    bed.name, bed.location = (
                        _text(summary.get("name")),
                        _text(summary.get("location")),
                    )
            for event in restored.recent:
                _, bed = self._place(event.device_id, event.stream_id)
                bed.events.appendleft(event_row(event, 0.0))
            for event in restored.open_events:
                _, bed = self._place(event.device_id, event.stream_id)
                bed.open[event.episode_id] = event
                bed.restored.add(event.episode_id)
                self.book.take(event, self.clock())
            for device_id, stream_id, kind, body in restored.readings:
                _, bed = self._place(device_id, stream_id)
                if kind == "respiration":  # stored as received, checked then
                    show_respiration(bed, body)
                elif kind == "verdict":
                    bed.verdict = verdict_view(body)
            self.clips |= restored.clips
            for episode_id in restored.clips:
                self.book.add_clip(episode_id)
            # the messages already taken (a broker's or a device spool's repeat after the
            # restart is one), and episodes whose condition is over: their late end is nothing
            for event_id in restored.event_ids:
                self._remember(event_id)
            self.book.retire(restored.episode_ids)
            self._dirty_alarms = True


def _text(value: object) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) and value.isprintable() and value else None


def _ended(event: Event) -> ListedEpisode:
    """The end of an episode that ended while the view was away (its bed no longer holds it;
    a latched one was acknowledged on the device)."""
    detail = dict(event.detail)
    if detail.get("latched"):
        detail["ended_by"] = "acknowledge"
    return ListedEpisode(event.episode_id, event.device_id, event.stream_id, event.type,
                         event.kind, event.priority, "ended", event.start_utc,
                         detail)  # fmt: skip
