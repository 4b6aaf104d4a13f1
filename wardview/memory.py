"""What the ward view keeps in its history store (nothing without one): events, summaries, clips
and alarm changes as they come; a bed's verdict and breathing on a change, else at most once a
minute by their own time (later only)."""

from __future__ import annotations

from typing import Any

from lungwatch.alarms import AlarmBook
from lungwatch.clip import Clip
from lungwatch.events import Event
from wardview.beds import RESPIRATION_FIELDS
from wardview.history import History, epoch_s

READING_EVERY_S = 60.0
# what is stored of a reading: the wire contract's fields, nothing a device added
STORED_FIELDS = {"verdict": ("verdict", "window_s", "utc"), "respiration": RESPIRATION_FIELDS}
IDENTITY = ("schema_version", "site", "device_id", "stream_id")
MAX_STORED_TEXT = 200  # a stored reading's longest text (a reason)


class Recorder:
    def __init__(self, history: History | None) -> None:
        self.history = history
        # (device, bed, kind) -> the time and state of the reading last stored
        self._stored_reading: dict[tuple[str, str, str], tuple[float, str]] = {}

    def event(self, event: Event) -> None:
        if self.history is not None:
            self.history.add_event(event)

    def summary(self, device_id: str, stream_id: str, body: dict[str, Any]) -> None:
        if self.history is not None:
            self.history.set_summary(device_id, stream_id, body)

    def clip(self, clip: Clip) -> None:
        if self.history is not None:
            self.history.add_clip(clip)

    def reading(self, device_id: str, stream_id: str, kind: str, body: dict[str, Any]) -> None:
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

    def alarms(self, book: AlarmBook) -> None:
        changed = book.take_changed()
        if self.history is None:
            return
        for key in sorted(changed):
            cond = book.get(key)
            if cond is None:
                self.history.drop_alarm(*key)
            else:
                self.history.set_alarm(*key, cond.record())
