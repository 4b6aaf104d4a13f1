"""The ward's state, built only from the published topics (docs/dashboard.md; "Hardening": what
is rejected, and the caps): devices, beds (:mod:`wardview.beds`) and the site's alarm conditions
(:mod:`lungwatch.alarms`), whose rows draw each bed's card. :meth:`Ward.restore` rebuilds it from
the history store; the devices' retained messages bring it up to date. A message that cannot be
used is counted per reason (:data:`~lungwatch.intake.REASONS`). Memory is bounded whatever names
a publisher picks: topic segments are checked and the caps applied before anything is created.
Thread-safe: the methods other threads call take :attr:`Ward.lock`."""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from lungwatch.alarms import (
    AlarmBook,
    condition_of,
    listed_episode,
    open_rows,
    ward_order,
)
from lungwatch.clip import Assembler, EvidenceError
from lungwatch.events import (
    DEVICE_STREAM,
    FINDING_RATE_KEYS,
    SHUTDOWN_REASON,
    TOPIC_ROOT,
    Event,
    EventError,
    Respiration,
    Status,
    ack_of,
    format_utc,
    is_number,
    is_segment,
    parse_utc,
)
from lungwatch.intake import MessageError, parse_message
from wardview.beds import (
    READ_WAIT_BEHIND_MS,
    Bed,
    Device,
    bed_state,
    event_row,
    read_wait_view,
    show_respiration,
    verdict_view,
)
from wardview.config import DashboardConfig
from wardview.history import History, Restored
from wardview.memory import Recorder

log = logging.getLogger("lungwatch.dashboard")

# (levels, last) of the topics the view reads
KINDS = {(5, "status"), (5, "metrics"), (6, "event"), (6, "live"), (6, "verdict"),
         (6, "respiration"), (6, "summary"), (6, "evidence"), (6, "ack"),
         (6, "health")}  # fmt: skip
FEED_BEHIND_S = 120.0  # a hospital feed with messages waiting and no acceptance this long
MAX_FEEDS = 16  # hospital gateways a view follows
RETAINED_PER_BED = ("verdict", "respiration", "summary")  # an empty payload withdraws them
VERDICT_LABELS = ("assessing", "Normal", "CAS", "DAS", "CAS & DAS", "Poor Quality")
SEEN_IDS = 100_000  # event ids remembered for deduplication
EXCERPT_CHARS = 160
REASON_CHARS = 300  # the longest reason kept in last_rejected
MAX_TEXT = 80  # a bed's name or location
ACK_LATE_S = 15.0  # an acknowledge the device has not confirmed this long: the page says so
STOPPED_END = "device shut down"  # ended_by of an episode the view ends for its stopped device
END_OF_STREAM = "end of stream"  # ended_by of a latched episode its device's stream end released


class Ward:
    def __init__(
        self,
        site: str,
        config: DashboardConfig | None = None,
        *,
        history: History | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        alarms_every_s: float = 0.0,
    ) -> None:
        """``alarms_every_s``: the alarm list goes out with the changes at most this often (a busy
        ward changes it with every event)."""
        self.site = site
        self.config = config = config or DashboardConfig()
        self.book = AlarmBook(config.alarms)
        self.recorder = Recorder(history)
        self.clips: set[str] = set()  # episodes whose evidence clip is in the store
        self.assembler = Assembler()
        self.clock, self.monotonic = clock, monotonic
        self.lock = threading.RLock()
        self.devices: dict[str, Device] = {}
        self.counts = {"messages": 0, "events": 0, "rejected": 0, "duplicates": 0, "probes": 0}
        self.rejected_reasons: dict[str, int] = {}  # reason (intake.REASONS) -> count
        self.last_rejected: str | None = None
        self.faults: dict[str, str] = {}  # the view's own technical alarms: stopped thread -> why
        self.feeds: dict[str, str | None] = {}  # gateway -> what is wrong; None: followed, well
        self.broker: dict[str, Any] = {"address": None, "connected": False,
                                       "state": "disconnected", "quiet_s": None,
                                       "refused": None}  # fmt: skip
        self._connected_s: float | None = None  # monotonic; None: not connected
        self._heard_s = 0.0  # monotonic: the last message or probe back
        self.pending_acks: dict[tuple[str, str, str], float] = {}  # (device, bed, target) -> s
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._dirty_devices: set[str] = set()
        self._dirty_beds: set[tuple[str, str]] = set()
        self._dirty_alarms = False
        self._alarm_signature: tuple[Any, ...] = ({}, ())  # an empty book's
        # each bed's rows of the alarm list last made: its card is drawn from them
        self._bed_rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.alarms_every_s = alarms_every_s
        self._alarms_sent_s = -math.inf
        self._status_sent: dict[str, Any] | None = None
        self._live: list[dict[str, Any]] = []
        self._trend: list[dict[str, Any]] = []  # breathing readings for the cards' trends
        self._trend_seq = 0  # the last reading's number: a snapshot holds those up to it

    def handle(self, topic: str, payload: bytes, retained: bool = False) -> bool:
        """False if the message could not be used. Never raises: no message may stop the feed."""
        with self.lock:
            self.counts["messages"] += 1
            self._heard_s = self.monotonic()
            try:
                self._dispatch(topic, payload)
            except (MessageError, EventError) as exc:  # EventError: the wire contract's check
                self._reject(topic, payload, getattr(exc, "reason", "invalid"), str(exc))
                return False
            except Exception as exc:  # a bug or a case not foreseen: count it, keep going
                log.error("handling a message on %s failed", topic, exc_info=True)
                self._reject(topic, payload, "internal_error", f"{type(exc).__name__}: {exc}")
                return False
            device = self.devices.get(topic.split("/")[3])
            if device is not None:
                device.seen_s = self._heard_s
                if device.silent:
                    self._set_silent(device, False)
            return True

    def store_failed(self, why: str, reason: str = "not_stored") -> None:
        """A thread of the view failed at something and goes on: counted like a rejection."""
        with self.lock:
            self._reject("view", b"", reason, why)

    def thread_failed(self, name: str, why: str) -> None:
        """A thread stopped unasked: a technical alarm on every page until the view restarts."""
        with self.lock:
            self.faults[name] = why[:REASON_CHARS]
            self._dirty_alarms = True

    def _reject(self, topic: str, payload: bytes, reason: str, why: str) -> None:
        self.counts["rejected"] += 1
        self.rejected_reasons[reason] = self.rejected_reasons.get(reason, 0) + 1
        why = why if len(why) <= REASON_CHARS else why[: REASON_CHARS - 3] + "..."
        self.last_rejected = f"{reason}: {topic[:REASON_CHARS]}: {why}"
        excerpt = payload[:EXCERPT_CHARS].decode("utf-8", "replace")
        log.warning("rejected message on %s (%s): %s: %r", topic, reason, why, excerpt)
        self._dirty_alarms = True  # the counts travel with the alarms

    def _dispatch(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if parts[:2] != TOPIC_ROOT.split("/") or len(parts) not in (5, 6) or parts[2] != self.site:
            raise MessageError(f"not a topic of site {self.site!r}")
        device_id, kind = parts[3], parts[-1]
        if (len(parts), kind) not in KINDS:
            raise MessageError(f"unknown topic kind {kind!r}")
        for name, segment in zip(("device", "stream"), parts[3:-1], strict=False):
            if not is_segment(segment):
                shown = segment[:80] + ("..." if len(segment) > 80 else "")
                raise MessageError(f"the topic's {name} {shown!r} is not a topic segment")
        if kind == "health":
            self._feed_health(device_id, parts[4], payload)
            return
        if kind in RETAINED_PER_BED and not payload:  # withdrawn: the bed's stream ended
            self._withdraw(kind, device_id, parts[4])
            return
        body = parse_message(payload, self.config.max_message_bytes, self.config.max_json_depth)
        if kind != "event":  # an event's identity is checked with its stream
            _require_identity(body, self.site, "device_id", device_id)
        # to _<kind>(device[, stream], body); KINDS admits no other kind
        getattr(self, "_live_point" if kind == "live" else f"_{kind}")(*parts[3:-1], body)

    def _status(self, device_id: str, body: dict[str, Any]) -> None:
        status = Status.from_dict(body)
        self._admit(device_id)
        device = self._device(device_id)
        device.online = status.state == "online"
        device.reason, device.status_utc = status.reason, status.utc
        device.commands = status.commands  # None: a device that does not say (older ones)
        self._dirty_devices.add(device_id)
        self._dirty_beds.update((device_id, b) for b in device.beds)
        self._dirty_alarms = True
        if status.state == "offline" and status.reason == SHUTDOWN_REASON:
            self._stopped(device, status.utc)  # not the last will: its alarms may go on

    def _stopped(self, device: Device, utc: str) -> None:
        """The device shut down cleanly at ``utc`` (its clock): its streams ended, and with them
        every episode it does not hold over its restart (a runtime with an alarm store keeps its
        unacknowledged alarms and lists them in the bed's retained summary). Those still open
        here (their ``ended`` went by while the view was away) end now, in the history too, so
        that a restart does not list them again; one the bed's summary lists, or that started
        after ``utc`` (a newer run's, were an old status late), is left, with any acknowledge
        waiting for the device. An end acknowledges nothing: a condition nobody acknowledged
        stays listed until someone does. Bounded by the beds' caps (max_beds_per_device,
        max_open_episodes_per_bed)."""
        stopped = parse_utc(utc)

        def ends(event: Event, held: dict[str, dict[str, Any]]) -> bool:
            try:
                started_after = parse_utc(event.start_utc) > stopped
            except EventError:
                started_after = False
            return event.episode_id not in held and not started_after

        for bed in device.beds.values():
            for event in [e for e in bed.open.values() if ends(e, bed.summary_open)]:
                detail = {**event.detail, "ended_by": STOPPED_END}
                self._take(bed, event.ended(utc, event.start_sample, detail=detail))
            self.book.release_held(device.device_id, bed.stream_id)

    def _feed_health(self, place: str, name: str, payload: bytes) -> None:
        """A hospital feed's problems: a technical alarm on every page; empty: stop following it."""
        if place != "gateway":
            raise MessageError("health messages come from lungwatch/v1/<site>/gateway/<name>")
        if not payload:
            self.feeds.pop(name, None)
            self._dirty_alarms = True
            return
        if name not in self.feeds and len(self.feeds) >= MAX_FEEDS:
            raise MessageError(f"more than {MAX_FEEDS} hospital gateways", "over_limit")
        body = parse_message(payload, self.config.max_message_bytes, self.config.max_json_depth)
        _require_identity(body, self.site, "gateway", name)
        state, queues = body.get("state"), body.get("queues")
        if state not in ("up", "down") or not isinstance(queues, dict) or len(queues) > 4:
            raise MessageError("health needs a state (up, down) and at most 4 queues")
        now = _utc(body.get("utc"))
        problems = []
        if state == "down":
            problems.append(f"down ({str(body.get('reason', ''))[:80]})")
        if body.get("storing") is False:
            problems.append("its queue takes no writes (a full disk?)")
        for route, queue in queues.items():
            if not (isinstance(queue, dict) and all(
                    isinstance(queue.get(k), int) for k in ("queued", "refused"))):  # fmt: skip
                raise MessageError(f"health queue {str(route)[:40]!r} needs queued and refused")
            route = str(route)[:16]
            if queue["refused"] > 0:
                problems.append(f"{route}: {queue['refused']} messages set aside "
                                "(lungwatch gateway --status, --resend)")  # fmt: skip
            last = _utc(queue.get("last_ack_utc")) or _utc(body.get("since_utc"))
            behind_s = (now - last).total_seconds() if now and last else 0.0
            if queue["queued"] > 0 and behind_s > FEED_BEHIND_S:
                problems.append(f"{route}: {queue['queued']} messages waiting, nothing accepted "
                                f"for {behind_s / 60.0:.0f} min")  # fmt: skip
        said = f"hospital feed {name}: " + "; ".join(problems) if problems else None
        if self.feeds.get(name, "") != said:
            self.feeds[name] = said[:REASON_CHARS] if said else None
            self._dirty_alarms = True

    def _metrics(self, device_id: str, body: dict[str, Any]) -> None:
        stream_id, metrics = body.get("stream_id"), body.get("metrics")
        if not is_segment(stream_id) or not isinstance(metrics, dict):
            raise MessageError("metrics needs a stream_id segment and a metrics object")
        device, bed = self._place(device_id, str(stream_id))
        spooled = metrics.get("mqtt_spooled")
        if isinstance(spooled, int) and not isinstance(spooled, bool):
            device.spooled = spooled
        wait = metrics.get("read_wait_ms_p99")  # null: no read of this bed measured it
        bed.read_wait_ms_p99 = float(wait) if is_number(wait) else None
        limit = metrics.get("read_wait_warn_ms")  # null or absent: the device does not say
        device.read_wait_limit_ms = READ_WAIT_BEHIND_MS
        if is_number(limit) and limit > 0:
            device.read_wait_limit_ms = float(limit)
        device.metrics_utc = str(body.get("utc"))
        self._dirty_devices.add(device_id)

    def _event(self, device_id: str, stream_id: str, body: dict[str, Any]) -> None:
        event = Event.from_dict(body)
        if (event.site, event.device_id, event.stream_id) != (self.site, device_id, stream_id):
            raise MessageError(f"event {event.id} is for {event.device_id}/{event.stream_id}")
        if event.id in self._seen:
            self.counts["duplicates"] += 1
            return
        owner = self.book.owner(event.episode_id)
        if owner is not None and owner != (device_id, stream_id):  # its clip, its alarm row
            raise MessageError(
                f"episode {event.episode_id} is {owner[0]}/{owner[1]}'s: a device sends its "
                "own beds' episodes only", "foreign_episode"
            )  # fmt: skip
        _, bed = self._place(device_id, stream_id)
        opened = event.state != "ended" and event.episode_id not in bed.open
        if opened and len(bed.open) >= self.config.max_open_episodes_per_bed:
            raise MessageError(
                f"episode {event.episode_id} would be one open episode of "
                f"{device_id}/{stream_id} over dashboard.max_open_episodes_per_bed "
                f"({self.config.max_open_episodes_per_bed})",
                "over_limit",
            )
        self._remember(event.id)
        self.counts["events"] += 1
        self._take(bed, event)

    def _take(self, bed: Bed, event: Event) -> None:
        """An event into the history, the alarm list and its bed: one received, or the end the
        view gives an episode of a device that shut down (:meth:`_stopped`) or that its bed's
        summary no longer lists (:meth:`_list_open`)."""
        device_id, stream_id = bed.device_id, bed.stream_id
        self.recorder.event(event)
        self.book.take(event, self.clock())
        bed.restored.discard(event.episode_id)
        if event.state == "ended":
            bed.open.pop(event.episode_id, None)
            bed.summary_open.pop(event.episode_id, None)
            for target in (event.type, event.detail.get("key"), condition_of(event.type)):
                self.pending_acks.pop((device_id, stream_id, str(target)), None)
        else:
            bed.open[event.episode_id] = event
        bed.events.appendleft(event_row(event, self.clock()))
        self._dirty_beds.add((device_id, stream_id))
        self._dirty_alarms = True

    def _verdict(self, device_id: str, stream_id: str, body: dict[str, Any]) -> None:
        if body.get("stream_id") != stream_id or body.get("verdict") not in VERDICT_LABELS:
            raise MessageError(
                f"verdict must be for {stream_id!r} and one of {', '.join(VERDICT_LABELS)}"
            )
        _, bed = self._place(device_id, stream_id)
        bed.verdict = verdict_view(body)
        self.recorder.reading(device_id, stream_id, "verdict", body)
        self._dirty_beds.add((device_id, stream_id))
        self._dirty_alarms = True

    def _live_point(self, device_id: str, stream_id: str, body: dict[str, Any]) -> None:
        if body.get("stream_id") != stream_id:
            raise MessageError(f"live.stream_id must be {stream_id!r}")
        classes, score = body.get("classes"), body.get("quality_score")
        if not isinstance(classes, dict) or not all(
            isinstance(k, str) and _is_probability(v) for k, v in classes.items()
        ):
            raise MessageError("live.classes must map class names to numbers in [0, 1]")
        if score is not None and not _is_probability(score):
            raise MessageError(f"live.quality_score must be a number in [0, 1], got {score!r}")
        point = {"utc": str(body.get("utc")), "classes": classes, "quality_score": score}
        _, bed = self._place(device_id, stream_id)
        bed.live.append(point)
        self._live.append({"device_id": device_id, "stream_id": stream_id, "point": point})

    def _respiration(self, device_id: str, stream_id: str, body: dict[str, Any]) -> None:
        if body.get("stream_id") != stream_id:
            raise MessageError(f"respiration must be for {stream_id!r}")
        Respiration.from_dict(body)
        _, bed = self._place(device_id, stream_id)
        if show_respiration(bed, body):
            point = {k: v for k, v in bed.rate_trend[-1].items() if k != "state"}
            self._trend_seq += 1
            self._trend.append({"device_id": device_id, "stream_id": stream_id, "point": point,
                                "seq": self._trend_seq})  # fmt: skip
        self.recorder.reading(device_id, stream_id, "respiration", body)
        self._dirty_beds.add((device_id, stream_id))

    def _summary(self, device_id: str, stream_id: str, body: dict[str, Any]) -> None:
        if body.get("stream_id") != stream_id or not isinstance(body.get("open"), list):
            raise MessageError(f"summary must be for {stream_id!r} and list its open alarms")
        _, bed = self._place(device_id, stream_id)
        bed.name, bed.location = _text(body.get("name")), _text(body.get("location"))
        self._list_open(bed, open_rows(body), body.get("utc"))
        self.recorder.summary(device_id, stream_id, body)

    def _list_open(
        self,
        bed: Bed,
        rows: dict[str, dict[str, Any]],
        utc: object = None,
        withdrawn: bool = False,
    ) -> None:
        """The episodes the bed's device holds: its summary's ``rows`` (sent at ``utc``, its
        clock), or none (``withdrawn``: the stream ended). A restored episode it no longer holds
        ended while the view was away: it ends here, in the history too (:meth:`_take`), so
        that a restart does not list it again. A latched one that leaves a summary was
        acknowledged on the device; one whose stream ended was not (the end of stream released
        it), and its condition stays listed until someone acknowledges it."""
        device_id, stream_id = bed.device_id, bed.stream_id
        before, bed.summary_open = bed.summary_open, rows
        now = self.clock()
        why = END_OF_STREAM if withdrawn else "acknowledge"
        # what is over first (an acknowledged apnoea's end before a new one it lists)
        for episode_id in bed.restored - set(rows):  # ended while the view was away
            event = bed.open.get(episode_id)
            if event is not None:
                self._take(bed, _ended(event, _end_utc(event.start_utc, utc, now), why))
        bed.restored &= set(rows)
        for episode_id, row in before.items():  # no longer held (their ended went by)
            if episode_id not in rows and episode_id not in bed.open:
                listed = listed_episode(device_id, stream_id, row, "ended")
                if withdrawn and listed.detail.get("ended_by"):
                    listed = replace(listed, detail={**listed.detail, "ended_by": why})
                self.book.take(listed, now)
        for episode_id, row in rows.items():  # alarms the view has no message of
            if episode_id not in bed.open and episode_id not in before:
                self.book.take(listed_episode(device_id, stream_id, row, "ongoing"), now)
        self.book.release_held(device_id, stream_id)  # what a restored alarm held and is gone
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
        self.recorder.clip(clip)
        device = self.devices.get(device_id)
        if device is not None and stream_id in device.beds:  # else its card comes with its bed
            self._dirty_beds.add((device_id, stream_id))
        self._dirty_alarms = True

    def restore(self, restored: Restored) -> None:
        with self.lock:
            for device_id, stream_id, record in restored.alarms:
                try:
                    self._place(device_id, stream_id)  # the bed, within the caps
                    self.book.restore(device_id, stream_id, record)
                except (MessageError, ValueError, KeyError, TypeError) as exc:
                    cond = record.get("condition") if isinstance(record, dict) else None
                    self.store_failed(f"alarm {cond!r} of {device_id}/{stream_id} kept in the "
                                      f"history could not be listed again: {exc}")  # fmt: skip
            for device_id, stream_id, body in restored.summaries:
                if is_segment(device_id) and is_segment(stream_id):
                    _, bed = self._place(device_id, stream_id)
                    bed.name, bed.location = _text(body.get("name")), _text(body.get("location"))
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

    def _withdraw(self, kind: str, device_id: str, stream_id: str) -> None:
        """A bed's retained verdict, breathing or summary is gone; a bed not known stays unknown."""
        bed = self.devices[device_id].beds.get(stream_id) if device_id in self.devices else None
        if bed is None:
            return
        if kind == "summary":  # the stream ended: the device holds none of its alarms
            self._list_open(bed, {}, withdrawn=True)
            return
        setattr(bed, kind, None)  # its verdict or respiration
        self._dirty_beds.add((device_id, stream_id))
        if kind == "verdict":
            self._dirty_alarms = True

    def _admit(self, device_id: str, stream_id: str | None = None) -> None:
        """MessageError ``over_limit`` when a new device or bed would be one over its cap."""
        device = self.devices.get(device_id)
        if device is None and len(self.devices) >= self.config.max_devices:
            raise MessageError(
                f"device {device_id!r} would be one over dashboard.max_devices "
                f"({self.config.max_devices})",
                "over_limit",
            )
        beds = device.beds if device is not None else {}
        new_bed = stream_id is not None and stream_id not in beds
        if new_bed and len(beds) >= self.config.max_beds_per_device:
            raise MessageError(
                f"bed {stream_id!r} would be one of device {device_id!r} over "
                f"dashboard.max_beds_per_device ({self.config.max_beds_per_device})",
                "over_limit",
            )

    def _place(self, device_id: str, stream_id: str) -> tuple[Device, Bed]:
        self._admit(device_id, stream_id)
        device = self._device(device_id)
        bed = device.beds.get(stream_id)
        if bed is None:
            bed = device.beds[stream_id] = Bed(
                device_id,
                stream_id,
                deque(maxlen=self.config.events_per_bed),
                deque(maxlen=self.config.live_points),
            )
            self._dirty_devices.add(device_id)
            self._dirty_beds.add((device_id, stream_id))
        return device, bed

    def _device(self, device_id: str) -> Device:
        device = self.devices.get(device_id)
        if device is None:
            device = self.devices[device_id] = Device(device_id)
            self._dirty_devices.add(device_id)
        return device

    def _remember(self, event_id: str) -> None:
        self._seen[event_id] = None
        if len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)

    def _ack(self, device_id: str, stream_id: str, body: dict[str, Any]) -> None:
        """The device took an acknowledge (this view's or another's): acknowledged here too."""
        if body.get("stream_id") != stream_id:
            raise MessageError(f"ack must be for {stream_id!r}, got {body.get('stream_id')!r}")
        target, user, utc = ack_of(body)
        seen = f"ack:{device_id}/{stream_id}/{target}/{user}/{utc}"
        if seen in self._seen:  # QoS 1 may deliver it twice
            self.counts["duplicates"] += 1
            return
        self._remember(seen)
        cond = self.book.device_took_ack(device_id, stream_id, target, self.clock(), user, utc)
        named = cond.condition if cond is not None else target
        for key in {target, named}:
            self.pending_acks.pop((device_id, stream_id, key), None)
        self._dirty_alarms = True

    def set_broker(self, address: str, connected: bool) -> None:
        """The dashboard's own connection to the broker."""
        with self.lock:
            self._connected_s = self.monotonic() if connected else None
            self.broker["address"] = address
            self._update_broker()

    def set_refused(self, topics: list[str]) -> None:
        """The topics the broker refused the view; while any is, its state is ``refused``."""
        with self.lock:
            refused = f"not allowed to read {', '.join(topics)}" if topics else None
            if refused != self.broker["refused"]:
                self.broker["refused"] = refused
                self._dirty_alarms = True
            self._update_broker()

    def probe_returned(self) -> None:
        """The dashboard's own probe came back through the broker."""
        with self.lock:
            self.counts["probes"] += 1
            self._heard_s = self.monotonic()
            if self.broker["state"] == "stale":
                self._update_broker()

    def check_liveness(self) -> None:
        """Devices silent and the broker stale after ``stale_after_s``; called periodically; only
        transitions reach the browsers (docs/dashboard.md)."""
        with self.lock:
            now, stale_s = self.monotonic(), self.config.stale_after_s
            for device in self.devices.values():
                quiet = device.seen_s is not None and now - device.seen_s > stale_s
                silent = device.online is not False and quiet
                if silent != device.silent:
                    self._set_silent(device, silent)
            self._update_broker()
            # conditions rise (escalation) and leave (hold_s) with time alone: pushed too
            now_s = self.clock()
            late = tuple(sorted(k for k, t in self.pending_acks.items() if now_s - t > ACK_LATE_S))
            signature = (self.book.signature(now_s), late)
            if signature != self._alarm_signature:
                self._alarm_signature = signature
                self._dirty_alarms = True
            self.save_alarms()

    def save_alarms(self) -> None:
        """The alarm conditions changed since the last call, to the history store."""
        with self.lock:
            self.recorder.alarms(self.book)

    def _set_silent(self, device: Device, silent: bool) -> None:
        device.silent = silent
        if silent:
            quiet_s = self.monotonic() - (device.seen_s or 0.0)
            log.warning("device %s sent nothing for %.0f s", device.device_id, quiet_s)
        self._dirty_devices.add(device.device_id)
        self._dirty_beds.update((device.device_id, b) for b in device.beds)

    def _update_broker(self) -> None:
        """``stale`` only while something is expected (the probe, or a device not offline)."""
        quiet_s = 0.0
        if self._connected_s is None:
            state = "disconnected"
        elif self.broker["refused"] is not None:
            state = "refused"
        else:
            quiet_s = self.monotonic() - max(self._connected_s, self._heard_s)
            expected = self.config.probe_interval_s > 0 or any(
                d.online is not False and d.seen_s is not None for d in self.devices.values()
            )
            state = "stale" if expected and quiet_s > self.config.stale_after_s else "connected"
        if state != self.broker["state"]:
            if state == "stale":
                log.warning("broker %s: nothing heard for %.0f s", self.broker["address"], quiet_s)
            self.broker.update(state=state, connected=state == "connected")
            self.broker["quiet_s"] = round(quiet_s, 1) if state == "stale" else None
            self._dirty_alarms = True

    def ack_refusal(self, device_id: str, signs: bool) -> str | None:
        """Why the device will not take an acknowledge from this view, or None."""
        with self.lock:
            device = self.devices.get(device_id)
            policy = device.commands if device is not None else None
        if policy == "refused":
            return (
                f"device {device_id} takes no commands: it has no commands.key_file "
                "(lungwatch access writes one; docs/security.md)"
            )
        if policy == "signed" and not signs:
            return (
                "this ward view signs no commands (no dashboard.command_key_file) and device "
                f"{device_id} takes signed ones only (lungwatch access writes the key)"
            )
        return None

    def acknowledgeable(self, device_id: str, stream_id: str, target: str) -> bool:
        """The bed has an alarm condition ``target`` names (or an open episode's type/key)."""
        with self.lock:
            return self.book.find(device_id, stream_id, target) is not None

    def still_shown(self, device_id: str, stream_id: str, target: str, raised_utc: str) -> bool:
        """The condition ``target`` names is the alarm the page showed (raised then): one
        raised again since (a new apnoea) is not covered by an acknowledge of the old."""
        with self.lock:
            cond = self.book.find(device_id, stream_id, target)
            return cond is not None and (cond.raised_utc or cond.first_onset_utc) <= raised_utc

    def acknowledge_sent(self, device_id: str, stream_id: str, target: str, user: str = "") -> None:
        """The condition is acknowledged (quiet from now); its latched episodes wait for
        their ``ended`` from the device (``ack_sent`` until then)."""
        with self.lock:
            cond = self.book.acknowledge(device_id, stream_id, target, self.clock(), user)
            named = cond.condition if cond is not None else target
            self.pending_acks[(device_id, stream_id, named)] = self.clock()
            self._dirty_alarms = True

    def feed_alarms(self) -> dict[str, str]:
        return {name: said for name, said in self.feeds.items() if said}

    def alarms(self) -> list[dict[str, Any]]:
        """Alarm conditions and verdict rows in ward order, with what the page shows of each bed."""
        with self.lock:
            rows = self.book.conditions(self.clock())
            for row in rows:
                device = self.devices.get(row["device_id"])
                row["device_online"] = device is not None and device.online is not False
                sent = self.pending_acks.get((row["device_id"], row["stream_id"], row["key"]))
                row["ack_sent"] = sent is not None and row["latched"]
                # unconfirmed this long (one refusing commands never confirms: the page says so)
                late = round(self.clock() - sent, 1) if sent is not None else None
                row["ack_waiting_s"] = late if row["ack_sent"] else None
                row["evidence"] = row["clip_episode_id"] is not None
            rows += self._verdict_alarms()
            for row in rows:
                bed = self.devices[row["device_id"]].beds.get(row["stream_id"])
                row["bed_name"] = bed.name if bed is not None else None
                row["bed_location"] = bed.location if bed is not None else None
            ordered = ward_order(rows)
            self._take_bed_rows(ordered)
            return ordered

    def _take_bed_rows(self, rows: list[dict[str, Any]]) -> None:
        """A bed whose card would read differently with the list just made is pushed with it."""
        by_bed: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in rows:
            by_bed.setdefault((row["device_id"], row["stream_id"]), []).append(row)
        for key in set(self._bed_rows) | set(by_bed):
            new = by_bed.get(key, [])
            if bed_state(True, new) != bed_state(True, self._bed_rows.get(key, [])):
                device = self.devices.get(key[0])
                if device is not None and key[1] in device.beds:
                    self._dirty_beds.add(key)
        self._bed_rows = by_bed

    def _verdict_alarms(self) -> list[dict[str, Any]]:
        """A row per alarming verdict; nothing to acknowledge: it leaves when the verdict does."""
        rows, priority = [], self.config.verdict_priority
        for device in self.devices.values():
            for bed in device.beds.values():
                if bed.verdict is None or bed.verdict["label"] not in self.config.alarm_verdicts:
                    continue
                since = bed.verdict["since_utc"]
                rows.append({
                    "device_id": device.device_id, "stream_id": bed.stream_id,
                    "condition": "verdict", "key": "verdict",
                    "text": f"verdict {bed.verdict['label']}", "kind": "verdict",
                    "priority": priority, "base_priority": priority,
                    "escalated": False, "state": "verdict", "latched": False,
                    "first_onset_utc": since, "last_episode_utc": since, "raised_utc": since,
                    "life_threatening": False, "last_type": "", "episodes": 0,
                    "open_episodes": [], "active": True, "types": [], "episode_id": None,
                    "clips": 0, "acknowledged_by": None, "condition_end_utc": None,
                    "device_online": device.online is not False, "ack_sent": False,
                    "ack_waiting_s": None, "evidence": False, "clip_episode_id": None,
                })  # fmt: skip
        return rows

    def device_view(self, device: Device) -> dict[str, Any]:
        since_s = device.seen_s if device.silent else None  # silent since
        return {
            "device_id": device.device_id,
            "online": device.online,
            "reason": device.reason,
            "status_utc": device.status_utc,
            "spooled": device.spooled,
            "metrics_utc": device.metrics_utc,
            "silent_s": None if since_s is None else round(self.monotonic() - since_s, 1),
            "beds": sorted(device.beds, key=_natural),
            **read_wait_view(device),
        }

    def bed_view(self, device: Device, bed: Bed, with_live: bool) -> dict[str, Any]:
        rows = self._bed_rows.get((device.device_id, bed.stream_id), [])
        view = {
            "device_id": device.device_id,
            "stream_id": bed.stream_id,
            "state": bed_state(device.online, rows, device.silent, bed.respiration),
            "events": [{**e, "evidence": e["episode_id"] in self.clips} for e in bed.events],
            "open": len(bed.open),
            "name": bed.name,
            "location": bed.location,
            "verdict": bed.verdict,
            "respiration": bed.respiration,
        }
        if with_live:
            view["live"] = list(bed.live)
            # the card draws the rates alone: sent as one list (hours of a ward's points as
            # objects made the first snapshot megabytes), with the last point's time
            trend = bed.rate_trend
            view["rate_trend"] = {
                key: [p.get(key) for p in trend] for key in ("rate_bpm", *FINDING_RATE_KEYS)
            } | {"last_utc": trend[-1]["utc"] if trend else None}
        return view

    def _status_view(self) -> dict[str, Any]:
        """The page header's: counts, rejections, faults, feeds and broker."""
        return {"counts": dict(self.counts), "rejected_reasons": dict(self.rejected_reasons),
                "last_rejected": self.last_rejected, "faults": dict(self.faults),
                "feeds": self.feed_alarms(), "broker": dict(self.broker)}  # fmt: skip

    def snapshot(self) -> dict[str, Any]:
        """The whole ward, for a browser that connects."""
        with self.lock:
            devices = [self.devices[d] for d in sorted(self.devices, key=_natural)]
            alarms = self.alarms()  # first: the beds' cards are drawn from its rows
            return {
                "site": self.site,
                "devices": [self.device_view(d) for d in devices],
                "beds": [
                    self.bed_view(d, d.beds[b], with_live=True)
                    for d in devices
                    for b in sorted(d.beds, key=_natural)
                ],
                "alarms": alarms,
                **self._status_view(),
                "stale_after_s": self.config.stale_after_s,
                "trend_seq": self._trend_seq,  # the page skips an update's readings up to it
            }

    def take_changes(self) -> dict[str, Any] | None:
        """What changed since the last call (None: nothing); live points are handed once."""
        with self.lock:
            alarms_due = self._dirty_alarms and (
                self.monotonic() - self._alarms_sent_s >= self.alarms_every_s
            )
            status = self._status_view()
            status_changed = status != self._status_sent
            changed = (self._dirty_devices or self._dirty_beds or alarms_due or self._live
                       or self._trend)  # fmt: skip
            if not (changed or status_changed):
                return None
            alarms = self.alarms() if alarms_due else None  # first: the cards follow its rows
            changes: dict[str, Any] = {
                "devices": [self.device_view(self.devices[d]) for d in sorted(self._dirty_devices)],
                "beds": [
                    self.bed_view(self.devices[d], self.devices[d].beds[b], with_live=False)
                    for d, b in sorted(self._dirty_beds)
                ],
                "live": self._live,
                "trend": self._trend,  # every reading once, in order: the cards' trends
            }
            if alarms is not None:
                self._alarms_sent_s = self.monotonic()
                self._dirty_alarms = False
                changes["alarms"] = alarms
            if alarms_due or status_changed:  # the header's counts and broker, at once
                changes.update(status)
                self._status_sent = status
            self._dirty_devices, self._dirty_beds, self._live, self._trend = set(), set(), [], []
            return changes


def _utc(text: object) -> dt.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def _require_identity(body: dict[str, Any], site: str, key: str, name: str) -> None:
    if (body.get("site"), body.get(key)) != (site, name):
        found = f"{body.get('site')!r}/{body.get(key)!r}"
        raise MessageError(f"body names {found}, the topic {site!r}/{name!r}")


def _is_probability(value: object) -> bool:
    return is_number(value) and 0.0 <= value <= 1.0


def _natural(name: str) -> tuple[Any, ...]:
    """``bed-2`` before ``bed-10``; the device-wide stream last."""
    if name == DEVICE_STREAM:
        return (1,)
    head = name.rstrip("0123456789")
    tail = name[len(head) :]
    return (0, head, int(tail) if tail else -1, name)


def _text(value: object) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) and value.isprintable() and value else None


def _ended(event: Event, end_utc: str, why: str) -> Event:
    """An episode's end while the view was away (a latched one: ended by ``why``, acknowledged
    on the device or released by its stream's end)."""
    detail = dict(event.detail)
    if detail.get("latched"):
        detail["ended_by"] = why
    return event.ended(end_utc, event.start_sample, detail=detail)


def _end_utc(start_utc: str, said: object, now_s: float) -> str:
    """When an episode its device no longer holds ended, at the latest: when the device said
    so (``said``, its summary's time), else now by the view's clock, never later than now (a
    device clock ahead) and never before its start."""
    now = dt.datetime.fromtimestamp(now_s, dt.timezone.utc)
    try:
        said_at = parse_utc(said) if isinstance(said, str) else None
    except EventError:
        said_at = None
    end = min(said_at or now, now)
    return start_utc if end < parse_utc(start_utc) else format_utc(end)
