"""MQTT sink: events at QoS 1 through an SQLite spool, a retained status, metrics. Delivery
(spool, PUBACK, reconnects in order, at-least-once), the status and its last will:
docs/events.md ("Delivery: store-and-forward", "Topics"). Metrics and live-strip points are
QoS 0 and dropped (counted) while disconnected: the next report supersedes them.

Threads: the Sink methods run on one publisher thread; paho's callbacks (network thread) only
queue acks and wake the sender, so no lock here is held while paho takes its own. A command
handler runs on paho's network thread (the runtime serialises every Sink call under its own
lock); its exceptions are logged and never stop that thread."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from functools import partial
from typing import Any

from edge.sinks import SinkError
from edge.sinks.live import live_payload, live_topic
from edge.sinks.spool import Spool, SpoolFullMonitor
from lungwatch.events import (
    SHUTDOWN_REASON,
    Event,
    ack_payload,
    ack_topic,
    event_topic,
    metrics_payload,
    metrics_topic,
    respiration_payload,
    respiration_topic,
    status_payload,
    status_topic,
    summary_payload,
    summary_topic,
    utc_now,
    verdict_payload,
    verdict_topic,
)
from lungwatch.mqtt import BrokerError, MqttConfig, Session, command_topic, import_paho
from lungwatch.supervision import Worker

log = logging.getLogger(__name__)

SENDER_POLL_S = 0.2  # the sender also wakes this often on its own
PUMP_BATCH = 500  # rows read from the spool per pass
RETAINED: dict[str, tuple[Callable[..., str], Callable[..., str]]] = {  # kind -> topic, payload
    "verdict": (verdict_topic, verdict_payload),
    "respiration": (respiration_topic, respiration_payload),
    "summary": (summary_topic, summary_payload),
}


class MqttSink:
    """Context manager, or :meth:`connect` then :meth:`close`; a given ``spool`` closes with it."""

    def __init__(self, config: MqttConfig, spool: Spool | None = None) -> None:
        self.config = config
        self._mqtt = import_paho()
        self._status_topic = status_topic(config.site, config.device_id)
        # (kind, bed) -> its last retained message, the spool seq it waits for (a summary: the
        # last one spooled when it was made, so it never overtakes its bed's events; 0 for the
        # others) and the order it was made in: handed to paho by the sender, and again after
        # every reconnect
        self._retained: dict[tuple[str, str], tuple[str, str, int, int]] = {}
        self._unsent: set[tuple[str, str]] = set()  # retained messages not yet handed to paho
        self._retained_lock = threading.Lock()  # never held while paho is called
        # held while events are spooled, while a retained message takes its seq, and while the
        # sender reads what is due and what is spooled: the sender never sees events spooled
        # after a retained message that it does not see (it would send them, then the older
        # message after them)
        self._order_lock = threading.Lock()
        self._retained_made = itertools.count()  # the order of messages made at one seq
        self._command_topic = command_topic(config.site, config.device_id)
        self._on_command: Callable[[bytes], None] | None = None
        self.command_policy: str | None = None  # told in the online status (events.py)
        # the will's utc: when that connection was opened
        offline = partial(status_payload, "offline", config.site, config.device_id,
                          "connection lost", eui64=config.eui64)  # fmt: skip
        self._session = Session(config, config.effective_client_id, "device",
                                will=(self._status_topic, offline),
                                max_inflight=config.max_inflight,
                                on_connected=self._on_connected)  # fmt: skip
        self._connected = self._session.connected
        self._client = self._session.client
        self._client.max_queued_messages_set(0)  # bounded here: max_queued + status/metrics
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._spool = (
            spool if spool is not None else Spool(config.spool_path, config.spool_max_events)
        )
        self._last_seq = self._spool.last_seq()  # the newest event spooled (publisher thread)
        self._cond = threading.Condition()
        self._woken = False  # set by _wake(), cleared by the sender
        self._acks: deque[int] = deque()  # mids from on_publish, matched by the sender
        self._mids: dict[int, int] = {}  # mid -> seq, touched by the sender thread only
        self._retained_mids: set[int] = set()  # retained messages handed, not yet acknowledged
        self._cursor = 0  # highest seq handed to paho
        self._connects_seen = 0  # the connects the sender has reacted to
        self._held: set[int] = set()  # mids handed before the latest connect, unacknowledged
        self._stopping = threading.Event()
        self._counts = {"acked": 0, "metrics_dropped": 0, "live_dropped": 0, "commands": 0}
        self._full = SpoolFullMonitor(
            self._spool, config.site, config.device_id, config.spool_full_priority
        )
        self._sender = Worker(self._run, "lungwatch-mqtt-sender", self._stopping.is_set)
        self._closed = False

    def publish(self, event: Event) -> None:
        """Spool ``event`` (committed on return) and let the sender publish it. A full spool
        does not raise: the refusal is logged and reported as ``spool_full``."""
        self.publish_many([event])

    def publish_many(self, events: Sequence[Event]) -> None:
        """Spool ``events`` in one transaction (one fsync) and let the sender publish them, in
        order; SinkError, nothing spooled, where one is for another site or device."""
        self._check_open()
        for event in events:
            if (event.site, event.device_id) != (self.config.site, self.config.device_id):
                raise SinkError(
                    f"event {event.id} is for {event.site}/{event.device_id}, this sink "
                    f"publishes for {self.config.site}/{self.config.device_id}"
                )
        if not events:
            return
        with self._order_lock:
            seqs = self._spool.put_many(events)
            self._last_seq = max([self._last_seq, *(s for s in seqs if s is not None)])
        for event, seq in zip(events, seqs, strict=True):
            if seq is None:
                log.error(
                    "spool %s is full (no low-priority event to evict): refused %s %s event %s",
                    self._spool.path, event.priority, event.type, event.id,
                )  # fmt: skip
        self._full.after_put()
        self._wake()

    def publish_metrics(self, stream_id: str, metrics: dict[str, Any]) -> None:
        self._check_open()
        payload = metrics_payload(self.config.site, self.config.device_id, stream_id, metrics)
        if not self._connected.is_set():
            self._counts["metrics_dropped"] += 1
            return
        self._session.publish(metrics_topic(self.config.site, self.config.device_id), payload, 0)

    def publish_live(self, stream_id: str, point: dict[str, Any]) -> None:
        self._check_open()
        site, device_id = self.config.site, self.config.device_id
        payload = live_payload(site, device_id, stream_id, point)
        if not self._connected.is_set():
            self._counts["live_dropped"] += 1
            return
        self._session.publish(live_topic(site, device_id, stream_id), payload, 0)

    def publish_verdict(self, stream_id: str, verdict: dict[str, Any] | None) -> None:
        """Retained (QoS 1), by the sender at its next pass and again on every reconnect; None
        (stream ended) removes it."""
        self._retain("verdict", stream_id, verdict)

    def publish_respiration(self, stream_id: str, reading: dict[str, Any] | None) -> None:
        """Send a bed's breathing retained, as :meth:`publish_verdict` its verdict."""
        self._retain("respiration", stream_id, reading)

    def publish_ack(self, stream_id: str, target: str, user: str, ended: int) -> None:
        """Say that the bed took an acknowledge (QoS 1, not retained, queued while offline)."""
        self._check_open()
        site, device_id = self.config.site, self.config.device_id
        payload = ack_payload(site, device_id, stream_id, target, user, utc_now(), ended)
        self._session.publish(ack_topic(site, device_id, stream_id), payload, qos=1)

    def publish_summary(self, stream_id: str, summary: dict[str, Any] | None) -> None:
        """Send a bed's summary retained (QoS 1), as :meth:`publish_verdict` its verdict, but
        only after every event spooled before it (live and after a reconnect)."""
        self._retain("summary", stream_id, summary)

    def _retain(self, kind: str, stream_id: str, body: dict[str, Any] | None) -> None:
        self._check_open()
        site, device_id = self.config.site, self.config.device_id
        topic_of, payload_of = RETAINED[kind]
        topic = topic_of(site, device_id, stream_id)
        payload = "" if body is None else payload_of(site, device_id, stream_id, body)
        # a summary names the bed's episodes: after their events; a verdict or breathing goes
        # at the next pass, ahead of any backlog (a bed card shows the current one)
        # only a summary takes its place among the events (the others wait for none)
        with self._order_lock if kind == "summary" else nullcontext(), self._retained_lock:
            after = self._last_seq if kind == "summary" else 0
            made = next(self._retained_made)
            self._retained[(kind, stream_id)] = (topic, payload, after, made)
            self._unsent.add((kind, stream_id))
        self._wake()

    def flush(self, timeout_s: float) -> bool:
        """Wait until the spool is empty (every event acknowledged) and, while connected, every
        retained message is handed to paho; False on timeout."""
        deadline_s = time.monotonic() + timeout_s
        self._wake()
        with self._cond:
            while len(self._spool) > 0 or (self._connected.is_set() and self._has_unsent()):
                left_s = deadline_s - time.monotonic()
                if left_s <= 0:
                    return False
                self._cond.wait(min(left_s, SENDER_POLL_S))
        return True

    def close(self) -> None:
        """Flush, publish a retained ``offline``, disconnect, close the spool (idempotent)."""
        if self._closed:
            return
        if self._sender.is_alive():
            if len(self._spool) > 0:  # said, so an operator knows why the stop takes time
                log.info("waiting up to %.0f s for %d spooled event(s) to reach the broker",
                         self.config.flush_timeout_s, len(self._spool))  # fmt: skip
            if not self.flush(self.config.flush_timeout_s):
                log.warning("%d event(s) stay in the spool for the next start", len(self._spool))
            self._stopping.set()
            self._wake()
            self._sender.join()
            self._send_last_retained()
            self._say_offline()
            self._session.stop()
        elif self._sender.started:  # the sender stopped unasked: no goodbye, the will says so
            self._client.loop_stop()
            sock = self._client.socket()
            if sock is not None:
                sock.close()
        self._closed = True
        self._spool.close()

    def connect(self) -> MqttSink:
        """Open the connection and start the sender; see MqttConfig for what raises."""
        self._check_open()
        if self._sender.started:
            raise SinkError(f"MQTT sink for broker {self.config.address} is already connected")
        cfg = self.config
        try:
            self._session.start(True, cfg.fail_fast, cfg.require_broker_at_start)
        except BrokerError:
            self.close()
            raise
        self._sender.start()
        return self

    def failure(self) -> str | None:
        """Why the sender thread stopped unasked (None: it runs): nothing more is sent."""
        return self._sender.failure()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def set_command_handler(
        self, handler: Callable[[bytes], None], policy: str | None = None
    ) -> None:
        """Subscribe to the command topic (also on every reconnect) and hand each payload to
        ``handler``; ``policy`` (``lungwatch.events.COMMAND_POLICIES``) goes in the status."""
        self._on_command = handler
        self.command_policy = policy
        self._session.subscribe(self._command_topic)

    def stats(self) -> dict[str, int]:
        return {
            "spooled": len(self._spool),
            "handed": len(self._mids),
            "evicted": self._spool.evicted_total,
            "refused": self._spool.refused_total,
            "connected": int(self.connected),
            "connects": self._session.connects,
            **self._counts,
        }

    def __enter__(self) -> MqttSink:
        return self.connect()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- paho callbacks (network thread) -----------------------------------------------
    def _on_connected(self, client: Any) -> None:
        cfg = self.config
        online = status_payload("online", cfg.site, cfg.device_id, "connected",
                                self.command_policy, cfg.eui64)  # fmt: skip
        client.publish(self._status_topic, online, qos=1, retain=True)
        with self._retained_lock:  # sent again by the sender, after the spool's backlog
            self._unsent.update(self._retained)
        self._wake()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._acks.append(mid)
        self._wake()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        handler = self._on_command
        if handler is None or message.topic != self._command_topic:
            return
        self._counts["commands"] += 1
        try:
            handler(bytes(message.payload))
        except Exception:  # the handler's bug must not stop paho's network thread
            log.exception("command handler failed on %s", self._command_topic)

    # -- sender thread -----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            self._take_acks()
            self._pump()
            self._full.maybe_end()
            with self._cond:
                self._cond.notify_all()  # flush() waits on acks
                if not self._woken:
                    self._cond.wait(SENDER_POLL_S)
                self._woken = False

    def _take_acks(self) -> None:
        seqs = []
        while self._acks:
            mid = self._acks.popleft()
            seq = self._mids.pop(mid, None)
            if seq is not None:
                seqs.append(seq)
            else:
                self._retained_mids.discard(mid)
        if seqs:
            self._spool.ack_many(seqs)
            self._counts["acked"] += len(seqs)

    def _pump(self) -> None:
        """Hand spooled events after the cursor to paho, oldest first, within max_queued, each
        retained message right after the events spooled before it; only while connected, so
        offline the spool's bound is the bound."""
        if not self._connected.is_set() or self._replaying():
            return
        room = min(self.config.max_queued - len(self._mids), PUMP_BATCH)
        with self._order_lock:  # what is due and what is spooled, as of one moment
            due = self._due_retained()
            rows = self._spool.pending(room, after_seq=self._cursor) if room > 0 else []
        every_row = room > 0 and len(rows) < room  # nothing spooled after these
        for seq, payload in rows:
            if not self._send_retained(due, seq):
                return
            topic = _topic_of(payload)
            if topic is None:
                log.error("dropping unreadable spooled event seq %d", seq)
                self._spool.ack(seq)
            else:
                info = self._session.publish(topic, payload, qos=1)
                if info.rc not in (self._mqtt.MQTT_ERR_SUCCESS, self._mqtt.MQTT_ERR_NO_CONN):
                    log.warning("paho refused seq %d (%s); retrying later", seq, info.rc)
                    return
                self._mids[info.mid] = seq
            self._cursor = seq
        self._send_retained(due, None if every_row else self._cursor + 1)

    def _send_last_retained(self) -> None:
        """At close, with the sender stopped: the retained messages still waiting for events
        that did not reach the broker in time go now, ahead of those events (which stay in the
        spool), rather than leave the broker a bed's out-of-date summary for good."""
        due = self._due_retained()
        if not due or not self._connected.is_set():
            return
        log.warning("%d retained message(s) sent ahead of %d event(s) left in the spool",
                    len(due), len(self._spool))  # fmt: skip
        self._send_retained(due, None)

    def _has_unsent(self) -> bool:
        with self._retained_lock:
            return bool(self._unsent)

    def _due_retained(self) -> list[tuple[int, int, tuple[str, str], str, str]]:
        """The retained messages not yet handed: (after seq, made, key, topic, payload), in
        the order they were made."""
        with self._retained_lock:
            unsent = [(k, self._retained[k]) for k in self._unsent]
        return sorted((after, made, key, topic, payload)
                      for key, (topic, payload, after, made) in unsent)  # fmt: skip

    def _send_retained(
        self, due: list[tuple[int, int, tuple[str, str], str, str]], before: int | None
    ) -> bool:
        """Hand ``due``'s messages made before spool seq ``before`` (None: all) to paho, in
        order; False where paho refused one (tried again on the next pass)."""
        while due and (before is None or due[0][0] < before):
            after, made, key, topic, payload = due[0]
            info = self._session.publish(topic, payload, qos=1, retain=True)
            if info.rc not in (self._mqtt.MQTT_ERR_SUCCESS, self._mqtt.MQTT_ERR_NO_CONN):
                log.warning("paho refused retained %s (%s); retrying later", topic, info.rc)
                return False
            self._retained_mids.add(info.mid)
            with self._retained_lock:  # unless a newer one came meanwhile
                if self._retained.get(key) == (topic, payload, after, made):
                    self._unsent.discard(key)
            del due[0]
        return True

    def _replaying(self) -> bool:
        """True while messages (events and retained ones) handed before the latest connect await
        their PUBACK: paho resends them only after ``on_connect`` returns, so a newer message
        handed now could overtake."""
        connects = self._session.connects  # read after _connected: on_connect counts first
        if connects != self._connects_seen:
            self._connects_seen = connects
            self._held = set(self._mids) | self._retained_mids
        if self._held:  # acknowledged mids leave _mids and _retained_mids
            self._held = {m for m in self._held if m in self._mids or m in self._retained_mids}
        return bool(self._held)

    def _wake(self) -> None:
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def _say_offline(self) -> None:
        if not self._connected.is_set():
            return  # the broker has already published the will
        offline = status_payload("offline", self.config.site, self.config.device_id,
                                 SHUTDOWN_REASON, eui64=self.config.eui64)  # fmt: skip
        info = self._session.publish(self._status_topic, offline, qos=1, retain=True)
        try:
            info.wait_for_publish(timeout=self.config.flush_timeout_s)
        except (RuntimeError, ValueError) as exc:
            log.warning("could not publish offline status: %s", exc)

    def _check_open(self) -> None:
        if self._closed:
            raise SinkError(f"MQTT sink for broker {self.config.address} is closed")


def _topic_of(payload: str) -> str | None:
    try:
        body = json.loads(payload)
        return event_topic(body["site"], body["device_id"], body["stream_id"])
    except (ValueError, KeyError, TypeError):
        return None
