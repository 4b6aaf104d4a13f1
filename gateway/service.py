"""The gateway's process: the site's messages in, a queue and a courier per destination out
(docs/gateway.md). Every payload is read within limits, checked against its topic (a device
speaks for its own beds only) and validated before any route's form is queued; a refusal is
counted by reason and logged, never fatal."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from gateway.adt import AdtFeed
from gateway.alarms import AlarmFollower
from gateway.config import GatewayConfig, Hl7Config
from gateway.fhir import FhirError, FhirTransport, finding_observation, rate_observation
from gateway.hl7 import AlertReport, Bed, Hl7Error, alert_message, finding_message, rate_message
from gateway.mllp import MllpClient, MllpTransport
from gateway.outbox import Courier, Outbox, StoreError, new_control_id
from lungwatch.access import GATEWAY_READS
from lungwatch.alarms import condition_of
from lungwatch.events import (
    FINDING_RATE_FAMILY,
    FINDING_TYPES,
    SHUTDOWN_REASON,
    TOPIC_ROOT,
    Event,
    EventError,
    Respiration,
    Status,
    ack_of,
    feed_health_payload,
    feed_health_topic,
    is_number,
    is_segment,
    utc_now,
)
from lungwatch.intake import MAX_JSON_DEPTH, MAX_MESSAGE_BYTES, MessageError, parse_message
from lungwatch.mqtt import BrokerError, Session
from lungwatch.supervision import Worker, first_failure

log = logging.getLogger(__name__)
ALARM_TICK_S = 1.0  # how often the alarm conditions are compared with what was reported
MAX_OWNED_EPISODES = 100_000  # episodes whose bed is remembered: days of a large ward
EQUIPMENT_NOTE = "equipment/"  # the queues' notes of each device's EUI-64
MAX_DEVICES = 4096  # devices whose EUI-64 the intake remembers
MAX_AHEAD_S = 300.0  # a reading's time may lie this far ahead of the gateway's clock, no more
REFUSALS_LOGGED = 20  # refused messages logged one by one per REFUSAL_LOG_S; the rest counted
REFUSAL_LOG_S = 60.0
STORE_RETRY_S = 1.0  # a message the queue could not store is tried again this often
STATE_CHANGE_MIN_S = 10.0  # a bed's reading state changes are sent at most this often
HEALTH_EVERY_S = 10.0  # the gateway's health is published this often (retained)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


Builder = Callable[[Mapping[str, Any], Bed, str, str], str]  # (data, bed, key, control id)


class Route(NamedTuple):
    name: str  # "hl7" | "fhir"
    outbox: Outbox
    reading: Builder
    finding: Builder


def hl7_route(config: Hl7Config, outbox: Outbox) -> Route:
    sender = config.sender
    return Route(
        "hl7", outbox,
        lambda data, bed, key, cid: rate_message(data, bed, sender, cid, _utc_now()),
        lambda data, bed, key, cid: finding_message(data, bed, sender, cid, _utc_now()),
    )  # fmt: skip


def fhir_route(outbox: Outbox, patient_system: str = "") -> Route:
    """A finding's resource is named by its episode: its end updates its onset's, no other's."""
    return Route(
        "fhir", outbox,
        lambda data, bed, key, cid: rate_observation(data, bed, key, patient_system),
        lambda data, bed, key, cid: finding_observation(data, bed, episode_key(data),
                                                        patient_system),
    )  # fmt: skip


def episode_key(event: Mapping[str, Any]) -> str:
    """An episode's name everywhere it is kept."""
    return "episode/" + "/".join(
        str(event[name]) for name in ("site", "device_id", "stream_id", "episode_id")
    )


class Intake:
    """One MQTT message at a time into the routes' queues and the alarm conditions."""

    def __init__(
        self,
        config: GatewayConfig,
        routes: list[Route],
        clock: Callable[[], float] = time.time,
        now: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        self.config, self.routes, self._now, self._clock = config, routes, now, clock
        self.counts: Counter[str] = Counter()  # queued, duplicate, skipped, refused:<reason>
        # refusals logged since the log window began, and those only counted (per device)
        self._refusals_from, self._refusals_logged = clock(), 0
        self._unlogged: Counter[str] = Counter()
        self._bugs_logged = self._bugs_unlogged = 0  # messages that met a bug, this window
        # each bed's last reading sent: its state and the latest time sent
        self._last_rate: dict[tuple[str, str], tuple[str, dt.datetime]] = {}
        self._beds: dict[str, set[str]] = {}  # each device's beds heard so far
        self._owners: dict[str, tuple[str, str]] = {}  # episode -> its bed, oldest first
        self._latest: dict[tuple[str, str], dict[str, Any]] = {}  # each bed's latest reading
        # each device's EUI-64, as its status says (kept in the queues' notes for a restart)
        self._equipment: dict[str, str] = {}
        for route in routes:
            for name, value in route.outbox.notes().items():
                if name.startswith(EQUIPMENT_NOTE):
                    self._equipment[name[len(EQUIPMENT_NOTE) :]] = value
        self.lock = threading.Lock()  # the alarm conditions: MQTT's thread and the tick's
        self.adt = AdtFeed(Path(config.adt_file)) if config.adt_file else None
        hl7 = next((route for route in routes if route.name == "hl7"), None)
        self.alarms: AlarmFollower | None = None
        if hl7 is not None and config.alarm_reports and config.hl7 is not None:
            sender, outbox = config.hl7.sender, hl7.outbox

            def write(report: AlertReport, device_id: str, stream_id: str, key: str,
                      note: tuple[str, str | None]) -> bool:  # fmt: skip
                control_id = new_control_id()
                bed = self.bed(device_id, stream_id)
                report = dataclasses.replace(report, source=self._source(report, bed))
                text = alert_message(report, bed, sender, control_id, now())
                return outbox.put_built(key, control_id, text, note, (device_id, stream_id),
                                        report.priority)  # fmt: skip

            self.alarms = AlarmFollower(config.alarms, write, outbox.notes(), clock)

    def handle(self, topic: str, payload: bytes) -> str:
        """Queue what ``payload`` on ``topic`` says on every route; the outcome (counted)."""
        try:
            outcome = self._handle(topic, payload)
        except (MessageError, EventError, Hl7Error, FhirError) as exc:
            outcome = f"refused:{getattr(exc, 'reason', 'invalid')}"
            self._log_refusal(topic, exc)
        except StoreError:
            raise  # not the message's fault: the caller leaves it at the broker until it stores
        except Exception as exc:  # the last guard: a bug one message meets stops no other
            outcome = "refused:internal_error"
            self._log_refusal(topic, exc, internal=True)
        self.counts[outcome] += 1
        return outcome

    def _log_refusal(self, topic: str, exc: Exception, internal: bool = False) -> None:
        """The first REFUSALS_LOGGED refusals of each REFUSAL_LOG_S logged one by one, the rest
        counted per device and said in one line when the next window begins: a device that
        floods the gateway with bad messages cannot flood its log (or fill its disk). A message
        that meets a bug (``internal``) is logged as an error with its traceback, under a bound
        of its own, so bad messages cannot hide a bug."""
        now = self._clock()
        if now - self._refusals_from >= REFUSAL_LOG_S:
            if self._unlogged:
                most = ", ".join(f"{d!r} {n}" for d, n in self._unlogged.most_common(3))
                log.warning("gateway: %d more messages refused in %.0f s, counted, not logged "
                            "(most from: %s)", sum(self._unlogged.values()),
                            now - self._refusals_from, most)  # fmt: skip
            if self._bugs_unlogged:
                log.error("gateway: %d more messages met a bug in %.0f s (internal_error), "
                          "counted, not logged", self._bugs_unlogged,
                          now - self._refusals_from)  # fmt: skip
            self._refusals_from, self._refusals_logged, self._bugs_logged = now, 0, 0
            self._unlogged.clear()
            self._bugs_unlogged = 0
        if internal:
            if self._bugs_logged < REFUSALS_LOGGED:
                self._bugs_logged += 1
                log.error("gateway: a message on %r could not be handled", topic[:200],
                          exc_info=exc)  # fmt: skip
            else:
                self._bugs_unlogged += 1
            return
        if self._refusals_logged < REFUSALS_LOGGED:
            self._refusals_logged += 1
            log.warning("gateway: %r refused: %s", topic[:200], exc)  # a topic may hold any text
            return
        parts = topic.split("/", 4)
        device = parts[3][:64] if len(parts) > 3 else "?"
        if device in self._unlogged or len(self._unlogged) < MAX_DEVICES:
            self._unlogged[device] += 1
        else:
            self._unlogged["(other devices)"] += 1

    def _handle(self, topic: str, payload: bytes) -> str:
        parts = topic.split("/")
        if len(parts) not in (5, 6) or "/".join(parts[:2]) != TOPIC_ROOT or parts[2] != \
                self.config.site:  # fmt: skip
            raise MessageError(f"not a topic of site {self.config.site}")
        # before anything is kept or logged by name: a device or stream that is no topic
        # segment (5000 characters, a control character) is refused as the ward view does
        for name, segment in zip(("device", "stream"), parts[3:-1], strict=False):
            if not is_segment(segment):
                shown = segment[:80] + ("..." if len(segment) > 80 else "")
                raise MessageError(f"the topic's {name} {shown!r} is not a topic segment")
        if len(parts) == 5:
            if parts[4] != "status":
                raise MessageError(f"the gateway does not read {parts[4]!r} messages")
            return self._status(parts[3], payload)
        device_id, stream_id, kind = parts[3:]
        beds = self._beds.setdefault(device_id, set())
        if stream_id not in beds:
            if len(beds) >= self.config.max_beds_per_device:
                raise MessageError(
                    f"{device_id} would have more than max_beds_per_device "
                    f"({self.config.max_beds_per_device}) beds", "over_limit"
                )  # fmt: skip
            beds.add(stream_id)
        if kind == "summary" and not payload:  # withdrawn: the bed's stream ended
            return self._alarm_message(kind, device_id, stream_id, None)
        if kind == "respiration" and not payload:  # withdrawn as well: nothing to send
            return "skipped"
        body = parse_message(payload, MAX_MESSAGE_BYTES, MAX_JSON_DEPTH)
        for name, value in (("site", parts[2]), ("device_id", device_id),
                            ("stream_id", stream_id)):  # fmt: skip
            if body.get(name) != value:
                raise MessageError(f"{name} {body.get(name)!r} is not the topic's {value!r}")
        if kind == "event":
            event = Event.from_dict(body)
            owner = self._owners.get(event.episode_id)
            if owner is not None and owner != (device_id, stream_id):
                raise MessageError(
                    f"episode {event.episode_id} is {owner[0]}/{owner[1]}'s: a device sends "
                    "its own beds' episodes only", "foreign_episode"
                )  # fmt: skip
            self._owners[event.episode_id] = (device_id, stream_id)
            while len(self._owners) > MAX_OWNED_EPISODES:
                self._owners.pop(next(iter(self._owners)))
            if self.alarms is not None:
                with self.lock:
                    self.alarms.event(event)
            if event.state == "ongoing" or is_evidence(event):
                return "skipped"
            bed = self.bed(device_id, stream_id)
            return self._put(f"event/{event.id}", event.to_dict(), bed, "finding")
        if kind in ("summary", "ack"):
            return self._alarm_message(kind, device_id, stream_id, body)
        if kind == "respiration":
            reading = Respiration.from_dict(body)
            when = reading.when
            ahead = (when - self._now()).total_seconds()
            if ahead > MAX_AHEAD_S:
                raise MessageError(
                    f"respiration utc {reading.utc} is {ahead:.0f} s ahead of the gateway's "
                    f"clock (more than {MAX_AHEAD_S:g} s)"
                )
            fields = dataclasses.asdict(reading)
            latest = self._latest.get((device_id, stream_id))
            if latest is None or when >= latest["when"]:
                self._latest[(device_id, stream_id)] = {**fields, "when": when}
            if not self._rate_due(device_id, stream_id, reading.state, when):
                return "skipped"
            key = f"respiration/{self.config.site}/{device_id}/{stream_id}/{reading.utc}"
            return self._put(key, fields, self.bed(device_id, stream_id), "reading")
        raise MessageError(f"the gateway does not read {kind!r} messages")

    def _status(self, device_id: str, payload: bytes) -> str:
        """A device's status: its EUI-64 (where it gives one) names it from now on; whether it
        shut down cleanly (the alarm follower's)."""
        body = parse_message(payload, MAX_MESSAGE_BYTES, MAX_JSON_DEPTH)
        for name, value in (("site", self.config.site), ("device_id", device_id)):
            if body.get(name) != value:
                raise MessageError(f"{name} {body.get(name)!r} is not the topic's {value!r}")
        status = Status.from_dict(body)
        if self.alarms is not None:
            stopped = status.state == "offline" and status.reason == SHUTDOWN_REASON
            with self.lock:
                if stopped and device_id not in self.alarms.stopped and \
                        len(self.alarms.stopped) >= MAX_DEVICES:  # fmt: skip
                    raise MessageError(f"more than {MAX_DEVICES} devices", "over_limit")
                self.alarms.device_status(device_id, stopped)
        equipment = status.eui64
        if equipment is None:
            return "skipped" if self.alarms is None else "taken"
        if len(self._equipment) >= MAX_DEVICES and device_id not in self._equipment:
            raise MessageError(f"more than {MAX_DEVICES} devices", "over_limit")
        if self._equipment.get(device_id) != equipment:
            for route in self.routes:
                route.outbox.set_note(EQUIPMENT_NOTE + device_id, equipment)
            self._equipment[device_id] = equipment
        return "taken"

    def _source(self, report: AlertReport, bed: Bed) -> tuple[float, Any, Any] | None:
        latest = self._latest.get((bed.device_id, bed.stream_id))
        if latest is None:
            return None
        if report.condition in ("tachypnoea", "bradypnoea", "apnoea"):
            rate = latest.get("rate_bpm") if latest.get("state") == "ok" else None
            if is_number(rate):
                return (float(rate), latest.get("low_bpm"), latest.get("high_bpm"))
            return None
        key = next((k for k, f in FINDING_RATE_FAMILY.items() if f == report.condition), None)
        share = latest.get(key) if key else None
        return (float(share), None, None) if is_number(share) else None

    def bed(self, device_id: str, stream_id: str) -> Bed:
        """The bed's place, patient (the ADT feed's where it names one) and equipment."""
        bed = self.config.bed(device_id, stream_id)
        if equipment := self._equipment.get(device_id, ""):
            bed = dataclasses.replace(bed, equipment=equipment)
        if self.adt is not None and bed.location and (patient := self.adt.patient_at(bed.location)):
            bed = dataclasses.replace(bed, patient_id=patient)
        return bed

    def _alarm_message(
        self, kind: str, device_id: str, stream_id: str, body: dict[str, Any] | None
    ) -> str:
        """A bed's summary (None: withdrawn) or a device's ack, into the alarm conditions."""
        if self.alarms is None:
            return "skipped"
        with self.lock:
            if kind == "summary":
                try:
                    self.alarms.summary(device_id, stream_id, body)
                except ValueError as exc:
                    raise MessageError(str(exc)) from None
            else:
                target, user, utc = ack_of(body or {})
                self.alarms.ack(device_id, stream_id, target, user, utc)
        return "taken"

    def tick(self) -> int:
        """Queue the alarm conditions' changes (PCD-04); how many reports."""
        if self.alarms is None:
            return 0
        with self.lock:
            return self.alarms.tick()

    def _put(self, key: str, data: Mapping[str, Any], bed: Bed, what: str) -> str:
        """On every route or none: each form is built under one control id before any is queued."""
        control_id = new_control_id()
        forms = [(route.outbox, (route.reading if what == "reading" else route.finding)(
            data, bed, key, control_id)) for route in self.routes]  # fmt: skip
        # a finding goes as urgently as its event (a high one before other beds' readings)
        priority = str(data.get("priority", "low")) if what == "finding" else "low"
        queued = False
        for outbox, text in forms:
            queued |= outbox.put_built(key, control_id, text, None,
                                       (bed.device_id, bed.stream_id), priority)  # fmt: skip
        return "queued" if queued else "duplicate"

    def _rate_due(self, device_id: str, stream_id: str, state: str, when: dt.datetime) -> bool:
        """Due per docs/gateway.md, "PCD-01 observations"; never one older than the last sent."""
        last = self._last_rate.get((device_id, stream_id))
        every = dt.timedelta(seconds=self.config.rate_every_s)
        gap = min(every, dt.timedelta(seconds=STATE_CHANGE_MIN_S))
        if last is not None:
            since = when - last[1]
            if since < dt.timedelta(0) or since < (every if last[0] == state else gap):
                return False
        self._last_rate[(device_id, stream_id)] = (state, when)
        return True


def is_evidence(event: Event) -> bool:
    """A wheeze or crackle event: evidence inside a finding episode, which is sent instead."""
    return event.kind == "physiological" and condition_of(event.type) in FINDING_TYPES


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._stop = threading.Event()
        self.routes: list[Route] = []
        self.couriers: list[Courier] = []
        self.workers: list[Worker] = []
        try:
            if (hl7 := config.hl7) is not None:
                outbox = Outbox(Path(config.queue))
                self.routes.append(hl7_route(hl7, outbox))
                client = MllpClient(hl7.host, hl7.port, hl7.ack_timeout_s)
                self.couriers.append(Courier(outbox, MllpTransport(client), hl7.courier))
            if (fhir := config.fhir) is not None:
                outbox = Outbox(Path(fhir.queue))
                self.routes.append(fhir_route(outbox, fhir.patient_system))
                transport = FhirTransport(fhir.base_url, fhir.timeout_s, fhir.token())
                self.couriers.append(Courier(outbox, transport, fhir.courier))
        except BaseException:
            for route in self.routes:
                route.outbox.close()
            raise
        for route, courier in zip(self.routes, self.couriers, strict=True):
            self.workers.append(Worker(lambda c=courier: c.run(self._stop),  # type: ignore[misc]
                                       f"gateway-{route.name}", self._stop.is_set))  # fmt: skip
        self.intake = Intake(config, self.routes)
        if self.intake.alarms is not None:
            self.workers.append(Worker(self._tick_alarms, "gateway-alarms", self._stop.is_set))
        self.workers.append(Worker(self._publish_health, "gateway-health", self._stop.is_set))
        mqtt = config.mqtt
        self.name = mqtt.username if is_segment(mqtt.username or "") else "gateway"
        self._since_utc = utc_now()
        self.health_topic = feed_health_topic(config.site, str(self.name))
        self.client_id = f"lungwatch-gateway-{config.site}{mqtt.private_suffix()}"
        self.topics = [f"{TOPIC_ROOT}/{config.site}/+/+/{kind}" for kind in GATEWAY_READS]
        self.topics.append(f"{TOPIC_ROOT}/{config.site}/+/status")  # each device's EUI-64
        self.subscribed = threading.Event()  # the broker took the subscriptions (SUBACK)
        self._store_failing = False  # the last message could not be stored (said once)
        # the broker says "down" for a gateway that vanished (its last will, retained)
        down = self._health("down", "connection lost", counted=False)  # built now, sent later
        self._session = Session(mqtt, self.client_id, "gateway", clean_session=False,
                                manual_ack=True, topics=self.topics,
                                will=(self.health_topic, lambda: down))  # fmt: skip
        self.connected = self._session.connected
        self._mqtt = self._session.client
        self._mqtt.on_subscribe = self._on_subscribe
        self._mqtt.on_message = self._on_message

    def start(self) -> Gateway:
        """The threads, then the broker, waiting up to ``mqtt.connect_timeout_s`` for the
        subscriptions; a refused login or a TLS failure raises."""
        for worker in self.workers:
            worker.start()
        try:
            self._session.start()
        except BrokerError:  # TLS failed or the login was refused: the couriers stop too
            self.stop()
            raise
        self.subscribed.wait(self.config.mqtt.connect_timeout_s)
        return self

    def _tick_alarms(self) -> None:
        while not self._stop.wait(ALARM_TICK_S):
            try:
                self.intake.tick()
            except Exception:  # the last guard: the next tick tries again, the gateway goes on
                self.intake.counts["alarm_tick_errors"] += 1
                log.error("gateway: the alarm reports' tick failed", exc_info=True)

    def _health(self, state: str, reason: str, counted: bool = True) -> str:
        """The health message; ``counted`` False leaves out the intake's counts (the last
        will, built at the start, would carry the counts of then)."""
        queues: dict[str, dict[str, Any]] = {}
        for route, courier in zip(self.routes, self.couriers, strict=True):
            try:
                counts = route.outbox.counts()
            except Exception as exc:  # a queue that cannot be read is itself the news
                counts, courier.last_error = {"queued": -1, "refused": -1}, str(exc)[:200]
            queues[route.name] = {"queued": counts["queued"], "refused": counts["refused"],
                                  "last_ack_utc": courier.last_sent_utc,
                                  "last_error": (courier.last_error or "")[:200]}  # fmt: skip
        intake = dict(self.intake.counts) if counted else None  # one C-level copy
        return feed_health_payload(self.config.site, str(self.name), state, reason, queues,
                                   not self._store_failing, self._since_utc, intake)  # fmt: skip

    def _publish_health(self) -> None:
        while True:
            try:
                self._session.publish(self.health_topic, self._health("up", "running"), qos=1,
                                   retain=True)  # fmt: skip
            except Exception:  # the last guard: the next round tries again
                log.error("gateway: its health could not be published", exc_info=True)
            if self._stop.wait(HEALTH_EVERY_S):
                return

    def check(self) -> str | None:
        """Why a courier's thread stopped unasked (None while they run)."""
        return first_failure([worker.failure for worker in self.workers])

    def queues(self) -> dict[str, dict[str, int]]:
        return {route.name: route.outbox.counts() for route in self.routes}

    def stop(self) -> None:
        self._stop.set()
        if self.connected.is_set():  # a clean stop says so: the feed is down, not lost
            try:
                info = self._session.publish(self.health_topic, self._health("down", "stopped"),
                                          qos=1, retain=True)  # fmt: skip
                info.wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError) as exc:
                log.warning("gateway: could not say it stopped: %s", exc)
        self._session.stop()
        for worker in self.workers:
            worker.join(10.0)
        for route in self.routes:
            route.outbox.close()

    def _on_subscribe(self, client: Any, userdata: Any, mid: Any, codes: Any, props: Any) -> None:
        refused = [code for code in codes if code.is_failure]
        if mid != self._session.subscribe_mid:
            return
        if refused:  # the site's ACL does not let this user read: said, never silent
            log.error("the broker refused the gateway's subscriptions (%s): check its ACL",
                      ", ".join(map(str, refused)))  # fmt: skip
        else:
            self.subscribed.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        """Acked to the broker only once stored or refused; while the queue cannot store it (a
        full disk) it is retried every ``STORE_RETRY_S``, and left unacked at a stop."""
        while True:
            try:
                self.intake.handle(message.topic, bytes(message.payload))
            except StoreError as exc:
                self.intake.counts["store_waits"] += 1
                if not self._store_failing:
                    log.error("gateway: %s; messages wait at the broker until it can", exc)
                    self._store_failing = True
                if self._stop.wait(STORE_RETRY_S):
                    return
                continue
            except Exception:  # handle's own guard failed (its log?): paho's thread must live on
                self.intake.counts["refused:internal_error"] += 1
                log.critical("gateway: a message on %r escaped the intake", message.topic[:200],
                             exc_info=True)  # fmt: skip
            break
        if self._store_failing:
            log.warning("gateway: the queue stores messages again")
            self._store_failing = False
        client.ack(message.mid, message.qos)
