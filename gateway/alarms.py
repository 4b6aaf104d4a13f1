"""The site's alarm conditions to the hospital's alarm manager: one IHE PCD-04 report per change of
a condition (docs/gateway.md, "Alarm reports (PCD-04)": phases, states, restarts), followed with a
ward view's :class:`lungwatch.alarms.AlarmBook` fed by the same messages. What was last reported of
each condition is a note in the queue's file, so a restart neither repeats nor loses a report."""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from gateway.hl7 import AlertReport, Hl7Error
from lungwatch.alarms import (
    PRIORITY_RANK,
    AlarmBook,
    AlarmSettings,
    ListedEpisode,
    condition_of,
    condition_type,
    listed_episode,
    open_rows,
)
from lungwatch.events import KINDS, Event, utc_now

log = logging.getLogger(__name__)

NOTE_PREFIX = "alert/"  # the queue's notes of what was last reported, per condition
SETTLE_S = 30.0  # after a start: the retained summaries and kept messages arrive first
ACK_NAME_WAIT_S = 3.0  # an end acknowledged by nobody named waits this long for the device's ack

Key = tuple[str, str, str]  # device, bed, condition


@dataclass(frozen=True)
class Reported:
    """What the last report of a condition said (the queue's note)."""

    alert_id: str
    condition: str
    text: str
    kind: str
    priority: str
    alarm_state: str
    acknowledged_by: str | None
    first_onset_utc: str
    reports: int  # how many reports of this alert were queued


class AlarmFollower:
    """``write(report, device, bed, queue key, note)`` queues one report and its note in one
    transaction (False: that queue key was queued before). Not thread-safe: the caller locks."""

    def __init__(
        self,
        settings: AlarmSettings,
        write: Callable[[AlertReport, str, str, str, tuple[str, str | None]], bool],
        notes: dict[str, str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.book = AlarmBook(settings)
        self._write, self._clock = write, clock
        self._reported: dict[Key, Reported] = {}
        for name, value in notes.items():
            if not name.startswith(NOTE_PREFIX):
                continue
            try:
                device, bed, condition = name[len(NOTE_PREFIX) :].split("/", 2)
                self._reported[(device, bed, condition)] = Reported(**json.loads(value))
            except (ValueError, TypeError) as exc:  # not what this version writes: said, left
                log.error("alarm note %r cannot be read (%s); its condition starts anew", name,
                          exc)  # fmt: skip
        self._settle_until = clock() + SETTLE_S if self._reported else 0.0
        self._listed: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._open: dict[tuple[str, str], set[str]] = {}  # episodes an event opened
        self._acked_by: dict[Key, str] = {}  # who acknowledged a condition the book dropped
        self._nameless: dict[Key, float] = {}  # ends acknowledged by nobody named: since
        self._unreportable: set[Key] = set()  # conditions whose report HL7 refused (logged once)
        self._gone: set[tuple[str, str]] = set()  # beds whose summary was withdrawn since the start
        self.stopped: set[str] = set()  # devices whose last status says they stopped cleanly
        self.counts = {"reports": 0}

    def event(self, event: Event) -> None:
        bed = (event.device_id, event.stream_id)
        if event.state == "ended":
            self._open.get(bed, set()).discard(event.episode_id)
        else:
            self._open.setdefault(bed, set()).add(event.episode_id)
        self.book.take(event, self._clock())

    def summary(self, device_id: str, stream_id: str, body: dict[str, Any] | None) -> None:
        """A bed's retained summary (None: withdrawn): open alarms the gateway has no event of
        are taken as listed episodes, and those that leave it end."""
        bed, now = (device_id, stream_id), self._clock()
        rows = open_rows(body) if body is not None else {}
        rows = {e: row for e, row in rows.items() if row["kind"] in KINDS}  # as events are
        before = self._listed.get(bed, {})
        opened = self._open.get(bed, set())
        for episode_id, row in rows.items():
            if episode_id not in opened and episode_id not in before:
                self.book.take(listed_episode(device_id, stream_id, row, "ongoing"), now)
        for episode_id, row in before.items():
            if episode_id not in rows and episode_id not in opened:
                self.book.take(listed_episode(device_id, stream_id, row, "ended"), now)
                key = (device_id, stream_id, condition_of(row["type"]))
                cond = self.book.get(key)
                if cond is not None and cond.acknowledged:  # on the device; by whom: the ack
                    self._acked_by.setdefault(key, cond.acknowledged_by)
        self._listed[bed] = rows
        if body is not None:
            self._gone.discard(bed)
        else:
            self._gone.add(bed)
            self.book.forget_bed(device_id, stream_id)
            self._listed.pop(bed, None)
            self._open.pop(bed, None)

    def device_status(self, device_id: str, stopped: bool) -> None:
        """A device's status: ``stopped`` where it is offline because it shut down cleanly (its
        streams ended, and their alarms with them: a restart's take-back passes over them)."""
        if stopped:
            self.stopped.add(device_id)
        else:
            self.stopped.discard(device_id)

    def ack(
        self, device_id: str, stream_id: str, target: str, user: str, utc: str | None = None
    ) -> None:
        """A device took an acknowledge of ``target`` by ``user`` at ``utc`` (its clock)."""
        now = self._clock()
        if self.book.find(device_id, stream_id, target) is None:
            key = (device_id, stream_id, condition_of(target))
            if key in self._nameless:  # its end waits for this name
                self._acked_by[key] = user
                return
            # one reported before a restart and not yet taken back: taken back now
            last = self._reported.get(key)
            if last is not None and last.acknowledged_by is None:
                self._take_back_one(key, last, now)
        cond = self.book.device_took_ack(device_id, stream_id, target, now, user, utc)
        if cond is not None and cond.acknowledged_by == user:
            self._acked_by[(device_id, stream_id, cond.condition)] = user

    def tick(self) -> int:
        """Queue a report for every condition that changed since its last one; how many."""
        now = self._clock()
        settling = now < self._settle_until
        if not settling and self._settle_until:
            self._settle_until = 0.0
            self._take_back(now)
        rows = {(r["device_id"], r["stream_id"], r["condition"]): r
                for r in self.book.conditions(now)}  # fmt: skip
        self.book.take_changed()  # the gateway keeps no store of the book: nothing to write
        queued = 0
        for key, row in rows.items():
            queued += self._guarded(key, functools.partial(self._compare, key, row, now))
        for key in [k for k in self._reported if k not in rows]:
            if not settling:  # acknowledged and over, or its bed gone
                last = self._reported[key]
                by = self._acked_by.get(key, last.acknowledged_by)
                nameless = by == "" and last.acknowledged_by is None  # nobody named yet
                if nameless and now - self._nameless.setdefault(key, now) < ACK_NAME_WAIT_S:
                    continue  # a moment for the device's ack message
                self._nameless.pop(key, None)
                ended = replace(last, alarm_state="inactive", acknowledged_by=by)
                queued += self._guarded(key, functools.partial(self._report, key, ended, "end"))
        self._acked_by = {k: v for k, v in self._acked_by.items() if k in self._nameless}
        return queued

    def _guarded(self, key: Key, report: Callable[[], int]) -> int:
        try:
            return report()
        except Hl7Error as exc:
            if key not in self._unreportable:
                log.error("alarm %r cannot be reported: %s", "/".join(key), exc)
            self._unreportable.add(key)
            self.counts["unreportable"] = len(self._unreportable)
        except Exception:  # the last guard: one condition never stops the site's reports
            self.counts["report_errors"] = self.counts.get("report_errors", 0) + 1
            log.error("alarm %s could not be reported", "/".join(key), exc_info=True)
        return 0

    def _compare(self, key: Key, row: dict[str, Any], now: float) -> int:
        acked = (row["acknowledged_by"] or "") if row["state"] != "alarming" else None
        if row["state"] == "ended":
            state = "inactive"
        elif row["state"] == "alarming" and not row["active"]:
            state = "latched"
        else:
            state = "active"
        last = self._reported.get(key)
        now_reported = Reported(
            alert_id=last.alert_id if last else uuid.uuid4().hex[:16].upper(),
            condition=row["condition"], text=row["text"], kind=row["kind"],
            priority=row["priority"], alarm_state=state, acknowledged_by=acked,
            first_onset_utc=last.first_onset_utc if last else row["first_onset_utc"],
            reports=last.reports if last else 0,
        )  # fmt: skip
        if last is None:
            return 0 if state == "inactive" else self._report(key, now_reported, "start")
        nameless = acked == "" and last.acknowledged_by is None  # acknowledged, nobody named
        if nameless and now - self._nameless.setdefault(key, now) < ACK_NAME_WAIT_S:
            return 0  # a moment for the device's ack message, which names who
        self._nameless.pop(key, None)
        renewed = row["first_onset_utc"] != last.first_onset_utc
        if renewed and acked is None and last.acknowledged_by is not None:
            # acknowledged, over, and started again: a new condition is a new alert
            ended = self._report(key, replace(last, alarm_state="inactive"), "end")
            fresh = replace(now_reported, alert_id=uuid.uuid4().hex[:16].upper(), reports=0,
                            first_onset_utc=row["first_onset_utc"])  # fmt: skip
            return ended + self._report(key, fresh, "start")
        if (last.priority, last.alarm_state, last.acknowledged_by) == (
            now_reported.priority, state, acked,
        ):  # fmt: skip
            return 0
        if state == "inactive":
            phase = "end"
        elif (acked is None) != (last.acknowledged_by is None):  # acknowledged, or raised again
            phase = "update"
        elif PRIORITY_RANK[now_reported.priority] < PRIORITY_RANK[last.priority]:
            phase = "escalate"
        elif PRIORITY_RANK[now_reported.priority] > PRIORITY_RANK[last.priority]:
            phase = "de-escalate"
        else:
            phase = "update"
        return self._report(key, now_reported, phase)

    def _report(self, key: Key, reported: Reported, phase: str) -> int:
        reported = replace(reported, reports=reported.reports + 1)
        report = AlertReport(
            reported.alert_id, reported.condition, reported.text, reported.kind,
            reported.priority, phase, reported.alarm_state, reported.acknowledged_by,
            reported.first_onset_utc, utc_now(),
        )  # fmt: skip
        ended = phase == "end"
        note = (NOTE_PREFIX + "/".join(key), None if ended else json.dumps(asdict(reported)))
        queue_key = f"alert/{reported.alert_id}/{reported.reports}"
        self._write(report, key[0], key[1], queue_key, note)
        if ended:
            self._reported.pop(key, None)
        else:
            self._reported[key] = reported
        self.counts["reports"] += 1
        return 1

    def _take_back(self, now: float) -> None:
        """After a restart's settling: conditions reported as alarming that the book does not
        hold are alarming again; acknowledged ones, those of a bed whose summary was withdrawn
        meanwhile (its stream ended) and those of a device that shut down are left to end."""
        held = {(c["device_id"], c["stream_id"], c["condition"])
                for c in self.book.conditions(now)}  # fmt: skip
        for key, last in self._reported.items():
            if key[:2] in self._gone or key[0] in self.stopped:  # its bed's stream ended
                continue
            if key not in held and last.acknowledged_by is None:
                self._take_back_one(key, last, now)

    def _take_back_one(self, key: Key, last: Reported, now: float) -> None:
        device, bed, condition = key
        episode = ListedEpisode(
            f"restored-{last.alert_id}", device, bed, condition_type(condition), last.kind,
            last.priority, "ongoing", last.first_onset_utc, {"key": condition},
        )  # fmt: skip
        self.book.take(episode, now)
        self.book.take(replace(episode, state="ended"), now)
        log.info("alarm %s of %s/%s taken back after the restart (%s)", condition, device, bed,
                 last.alert_id)  # fmt: skip
