"""Tests of edge.sinks against real brokers: Mosquitto processes started from temporary
configs on free loopback ports (skipped, with the reason, where mosquitto is missing) and the
embedded amqtt broker.

Delivery contract checked here: QoS 1 is at-least-once, so a message whose PUBACK was lost in
a broker crash may arrive twice; it arrives with the same event ``id`` (retries are byte for
byte), so the set of delivered ids must equal the set produced, and duplicates are counted
(and printed), not forbidden.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from edge.sinks import MultiSink, Sink, SinkError, publish_all
from edge.sinks.broker import EmbeddedBroker
from edge.sinks.jsonl import JsonlSink
from edge.sinks.mqtt import MqttSink
from edge.sinks.spool import Spool
from edge.sinks.stdout import StdoutSink
from lungwatch.config import from_mapping
from lungwatch.errors import ConfigError
from lungwatch.events import DEVICE_STREAM, Event
from lungwatch.mqtt import BrokerRefusedError, BrokerTlsError, BrokerUnavailableError, MqttConfig
from tests.brokers import (
    Mosquitto,
    Recorder,
    closed_port,
    expect_line,
    free_port,
    make_events,
    make_password_file,
    make_tls_files,
    open_gate,
    start_publisher,
)
from tests.wardview.browser import wait_until

SITE, DEVICE = "ward-3", "dev-1"
STATUS = f"lungwatch/v1/{SITE}/{DEVICE}/status"
DELIVERY_TIMEOUT_S = 20.0


def mqtt_config(tmp_path: Path, port: int, **changes: Any) -> MqttConfig:
    values: dict[str, Any] = {
        "port": port,
        "site": SITE,
        "device_id": DEVICE,
        "spool_path": str(tmp_path / "spool.sqlite"),
        "connect_timeout_s": 5.0,
        "flush_timeout_s": 10.0,
    }
    return MqttConfig(**{**values, **changes})


def statuses(recorder: Recorder) -> list[tuple[str, bool]]:
    return [(m.json()["state"], m.retain) for m in recorder.messages if m.topic == STATUS]


def wait_ids(recorder: Recorder, wanted: set[str], timeout_s: float = DELIVERY_TIMEOUT_S) -> bool:
    return recorder.wait_for(lambda _: wanted <= set(recorder.event_ids()), timeout_s)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Any:
    with Mosquitto(tmp_path) as broker:
        yield broker


def test_events_status_and_metrics_reach_a_subscriber(tmp_path: Path, mosquitto: Any) -> None:
    events = make_events(5, site=SITE, device_id=DEVICE)
    with Recorder(mosquitto.port) as recorder:
        with MqttSink(mqtt_config(tmp_path, mosquitto.port)) as sink:
            assert sink.connected
            for event in events:
                sink.publish(event)
            sink.publish_metrics("bed-1", {"frames": 100, "latency_ms": 12.5})
            assert sink.flush(10.0)
            assert (sink.stats()["spooled"], sink.stats()["acked"]) == (0, 5)
        assert wait_ids(recorder, {e.id for e in events})
        received = recorder.events()
        assert [Event.from_json(m.payload) for m in received] == events
        assert {(m.topic, m.qos, m.retain) for m in received} == {
            (f"lungwatch/v1/{SITE}/{DEVICE}/bed-1/event", 1, False)
        }
        metrics = [m.json() for m in recorder.messages if m.topic.endswith("/metrics")]
        assert metrics[0]["stream_id"] == "bed-1"
        assert metrics[0]["metrics"]["frames"] == 100
        assert recorder.wait_for(lambda _: ("offline", False) in statuses(recorder), 5.0)
        assert statuses(recorder) == [("online", False), ("offline", False)]
    with Recorder(mosquitto.port, topic=STATUS) as late:  # a retained message is replayed
        assert late.wait_for(lambda ms: bool(ms), 5.0)
        assert statuses(late) == [("offline", True)]
        assert late.messages[0].json()["reason"] == "shutdown"


def test_last_will_is_offline_when_the_publisher_is_killed(tmp_path: Path, mosquitto: Any) -> None:
    config = asdict(mqtt_config(tmp_path, mosquitto.port))
    with Recorder(mosquitto.port, topic=STATUS) as recorder:
        publisher = start_publisher(config, make_events(1), tmp_path, hold=True)
        try:
            expect_line(publisher, "published")
            assert recorder.wait_for(lambda _: ("online", False) in statuses(recorder), 10.0)
        finally:
            publisher.send_signal(signal.SIGKILL)
            publisher.wait(timeout=10)
        assert recorder.wait_for(lambda _: ("offline", False) in statuses(recorder), 10.0)
        assert recorder.messages[-1].json()["reason"] == "connection lost"
    with Recorder(mosquitto.port, topic=STATUS) as late:
        assert late.wait_for(lambda ms: bool(ms), 5.0)
        assert statuses(late) == [("offline", True)]


def test_broker_killed_and_restarted_while_publishing(tmp_path: Path, mosquitto: Any) -> None:
    events = make_events(200, site=SITE, device_id=DEVICE)
    config = asdict(mqtt_config(tmp_path, mosquitto.port, flush_timeout_s=30.0))
    # QoS 0 here: a QoS 1 subscriber's PUBACKs sit unread in the killed broker's socket, so
    # the kernel resets that connection and the subscriber's kernel drops data it had already
    # received; messages the broker had acknowledged to the sink would vanish between broker
    # and subscriber, a loss no publisher can prevent. The sink -> broker leg stays QoS 1.
    recorder = Recorder(mosquitto.port, qos=0).connect()
    publisher = start_publisher(config, events, tmp_path, interval_s=0.02)  # 4 s of events
    try:
        expect_line(publisher, "started")
        for kills in range(3):
            seen = 10 + 30 * kills
            assert recorder.wait_for(lambda ms, seen=seen: len(recorder.events()) >= seen, 20.0)
            assert publisher.poll() is None, "the publisher is still producing"
            mosquitto.kill()  # kill -9: no clean shutdown, nothing persisted
            mosquitto.start()  # same port
            recorder.connect()  # subscribed again well before paho's 1-s reconnect delay
        assert expect_line(publisher, "closed", timeout_s=60.0) == "closed flushed=True"
        assert wait_ids(recorder, {e.id for e in events})
    finally:
        publisher.kill()
        publisher.wait(timeout=10)
        recorder.disconnect()
    delivered = recorder.event_ids()
    duplicates = sum(n - 1 for n in Counter(delivered).values())
    print(f"{len(delivered)} deliveries of {len(events)} events, {duplicates} duplicate(s)")
    assert set(delivered) == {e.id for e in events}, "every event, and only produced ones"
    first_seen = list(dict.fromkeys(delivered))
    assert first_seen == [e.id for e in events], "the backlog is replayed in order"


def held_after_connect(sink: MqttSink, hold_s: float = 0.3) -> MqttSink:
    """``sink`` whose paho network thread sleeps ``hold_s`` after each ``on_connect``, where a
    busy machine may deschedule it (paho re-sends what it held only once that returns)."""
    client = sink._client
    on_connect = client.on_connect

    def descheduled_on_connect(*args: Any) -> None:
        on_connect(*args)
        time.sleep(hold_s)

    client.on_connect = descheduled_on_connect
    return sink


def test_a_reconnect_sends_the_held_backlog_before_newer_events(
    tmp_path: Path, mosquitto: Any
) -> None:
    """paho sends its unacknowledged messages again only after ``on_connect`` returns; a
    sender woken by ``on_connect`` must not slip newer events ahead of them. The sleep holds
    paho's network thread at the point where a busy machine may deschedule it (seen once in
    CI as a backlog replayed out of order)."""
    events = make_events(120, site=SITE, device_id=DEVICE)
    recorder = Recorder(mosquitto.port, qos=0).connect()  # QoS 0: see the kill test above
    sink = held_after_connect(MqttSink(mqtt_config(tmp_path, mosquitto.port)).connect())
    try:
        mosquitto.pause()  # the first half goes to paho and is never acknowledged
        sink.publish_many(events[:60])
        wait_until(lambda: sink.stats()["handed"] == 60, 10.0, "60 events handed to paho")
        mosquitto.kill()
        wait_until(lambda: not sink.connected, 10.0, "the sink to see the broker gone")
        sink.publish_many(events[60:])  # spooled only: the sender waits for a connection
        mosquitto.start()
        recorder.connect()  # before paho's 1-s reconnect delay
        assert sink.flush(20.0)
        assert wait_ids(recorder, {e.id for e in events})
    finally:
        sink.close()
        recorder.disconnect()
    first_seen = list(dict.fromkeys(recorder.event_ids()))
    assert first_seen == [e.id for e in events], "what paho held goes out before the rest"


def test_a_summary_paho_holds_over_a_reconnect_is_not_overtaken_by_a_newer_one(
    tmp_path: Path, mosquitto: Any
) -> None:
    """A summary handed to paho and never acknowledged (the broker paused, then killed); while
    offline an event and a newer summary of the bed. paho sends the old one again only after
    ``on_connect`` returns (held here 0.3 s, as a busy machine may): the sender waits for it,
    so the broker keeps the newer summary, not the old one sent last."""
    summary_topic = f"lungwatch/v1/{SITE}/{DEVICE}/bed-1/summary"
    old = {"name": "Bed 1", "location": "", "open": [], "utc": "2026-05-09T07:00:00.000Z"}
    new = {**old, "utc": "2026-05-09T07:05:00.000Z"}
    sink = held_after_connect(MqttSink(mqtt_config(tmp_path, mosquitto.port)).connect())
    try:
        mosquitto.pause()
        sink.publish_summary("bed-1", old)
        wait_until(lambda: not sink._has_unsent(), 10.0, "the old summary handed to paho")
        mosquitto.kill()
        wait_until(lambda: not sink.connected, 10.0, "the sink to see the broker gone")
        sink.publish_many(make_events(1, site=SITE, device_id=DEVICE))
        sink.publish_summary("bed-1", new)
        mosquitto.start()
        assert sink.flush(DELIVERY_TIMEOUT_S)
        wait_until(lambda: not sink.stats()["handed"], 10.0, "every message acknowledged")
        time.sleep(0.5)  # what paho might still send again
    finally:
        sink.close()
    with Recorder(mosquitto.port, topic=summary_topic) as late:
        assert late.wait_for(lambda ms: bool(ms), 5.0)
        assert late.messages[-1].json()["utc"] == new["utc"]


@pytest.mark.parametrize("broker_state", ["absent", "paused"])
def test_spooled_events_survive_a_publisher_crash(tmp_path: Path, broker_state: str) -> None:
    """absent: events wait in the spool; paused (SIGSTOP): they were sent, never acknowledged."""
    broker = Mosquitto(tmp_path)
    events = make_events(30, site=SITE, device_id=DEVICE)
    config = asdict(mqtt_config(tmp_path, broker.port))
    if broker_state == "paused":
        broker.start()
    publisher = start_publisher(config, events, tmp_path, hold=True, gate=True)
    try:
        expect_line(publisher, "started")
        broker.pause()  # before the first event: the broker must acknowledge none of them
        open_gate(publisher)
        expect_line(publisher, "published")
    finally:
        publisher.send_signal(signal.SIGKILL)
        publisher.wait(timeout=10)
        broker.kill()  # a paused broker never saw the events; a fresh one starts below
    with broker, Recorder(broker.port) as recorder:
        restarted = start_publisher(config, [], tmp_path)
        assert expect_line(restarted, "closed", timeout_s=30.0) == "closed flushed=True"
        assert restarted.wait(timeout=10) == 0
        assert wait_ids(recorder, {e.id for e in events})
        assert recorder.event_ids() == [e.id for e in events]


def test_events_published_while_the_broker_is_down_are_delivered(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    events = make_events(10, site=SITE, device_id=DEVICE)
    sink = MqttSink(mqtt_config(tmp_path, broker.port)).connect()  # unreachable: retries
    try:
        assert not sink.connected
        for event in events:
            sink.publish(event)
        assert not sink.flush(0.5)
        assert sink.stats()["spooled"] == 10
        with broker, Recorder(broker.port) as recorder:
            assert sink.flush(15.0), "paho reconnects with backoff and the backlog drains"
            assert wait_ids(recorder, {e.id for e in events})
            assert recorder.event_ids() == [e.id for e in events]
            sink.close()
    finally:
        sink.close()


@pytest.mark.parametrize("broker", ["up", "down until the end"])
def test_a_retained_message_goes_after_the_events_published_before_it(
    tmp_path: Path, broker: str
) -> None:
    """Events, a bed's summary, more events, another bed's summary and a third's withdrawal:
    a subscriber reads them in that order, live (the sender still works through the spool)
    and when the broker comes up only after all of it (the spool's backlog is replayed with
    each retained message in its place)."""
    mosquitto = Mosquitto(tmp_path)
    events = make_events(600, site=SITE, device_id=DEVICE)
    summary = {"name": "Bed", "location": "", "open": [], "utc": "2026-05-09T07:10:00.000Z"}
    recorder = Recorder(mosquitto.port)
    if broker == "up":
        mosquitto.start()
        recorder.connect()
    sink = MqttSink(mqtt_config(tmp_path, mosquitto.port)).connect()
    try:
        sink.publish_many(events[:300])
        sink.publish_summary("bed-1", summary)
        sink.publish_many(events[300:])
        sink.publish_summary("bed-2", summary)
        sink.publish_summary("bed-3", None)
        if broker != "up":
            mosquitto.start()
            recorder.connect()
        assert sink.flush(DELIVERY_TIMEOUT_S)
        withdrawn = lambda ms: any(m.topic.endswith("bed-3/summary") for m in ms)  # noqa: E731
        assert recorder.wait_for(withdrawn, 5.0)
    finally:
        sink.close()
        recorder.disconnect()
        mosquitto.stop()
    order = [m.json()["id"] if m.topic.endswith("/event") else
             (m.topic.split("/")[4], bool(m.payload))
             for m in recorder.messages if m.topic.endswith(("/event", "/summary"))]  # fmt: skip
    ids = [e.id for e in events]
    assert order == [*ids[:300], ("bed-1", True), *ids[300:], ("bed-2", True), ("bed-3", False)]


def test_a_summary_is_not_sent_after_events_spooled_after_it(
    tmp_path: Path, mosquitto: Any
) -> None:
    """The sender descheduled between reading what retained messages are due and reading the
    spool (0.5 s, as a busy machine may), while the publisher makes a summary and then an event
    (an episode's end) and makes the next summary only once the first reached the subscriber: it
    reads the summary before the event, never the summary after it (seen once in CI as a summary
    listing an episode after its end)."""
    events = make_events(2, site=SITE, device_id=DEVICE)
    first = {"name": "Bed", "location": "", "open": ["e"], "utc": "2026-05-09T07:10:00.000Z"}
    second = {**first, "open": [], "utc": "2026-05-09T07:10:01.000Z"}
    sink = MqttSink(mqtt_config(tmp_path, mosquitto.port))
    pending = sink._spool.pending
    reading, armed = threading.Event(), threading.Event()

    def descheduled_pending(*args: Any, **kwargs: Any) -> Any:
        if armed.is_set():
            armed.clear()
            reading.set()
            time.sleep(0.5)
        return pending(*args, **kwargs)

    sink._spool.pending = descheduled_pending  # type: ignore[method-assign]
    with Recorder(mosquitto.port) as recorder:
        sink.connect()
        try:
            sink.publish_many(events[:1])
            assert wait_ids(recorder, {events[0].id})
            armed.set()
            assert reading.wait(5.0), "the sender read the spool"
            sink.publish_summary("bed-1", first)
            sink.publish_many(events[1:])
            summary_in = lambda ms: any(m.topic.endswith("/summary") for m in ms)  # noqa: E731
            assert recorder.wait_for(summary_in, 5.0)  # the first summary, before the second
            sink.publish_summary("bed-1", second)
            assert sink.flush(DELIVERY_TIMEOUT_S)
            both = lambda ms: sum(m.topic.endswith(("/event", "/summary")) for m in ms)  # noqa: E731
            assert recorder.wait_for(lambda ms: both(ms) >= 4, 5.0)
        finally:
            sink.close()
        kept = [m for m in recorder.messages if m.topic.endswith(("/event", "/summary"))]
        order = [m.json()["id"] if m.topic.endswith("/event") else m.json()["utc"] for m in kept]
    assert order == [events[0].id, first["utc"], events[1].id, second["utc"]]


def test_spool_bound_is_reported_as_a_spool_full_event(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    events = make_events(6, site=SITE, device_id=DEVICE, priority="low")
    sink = MqttSink(mqtt_config(tmp_path, broker.port, spool_max_events=4)).connect()
    try:
        for event in events:
            sink.publish(event)
        assert sink.stats()["evicted"] == 2
        with broker, Recorder(broker.port) as recorder:
            assert sink.flush(15.0)
            sink.close()
            full = [
                Event.from_json(m.payload) for m in recorder.events() if b"spool_full" in m.payload
            ]
            assert [(e.state, e.stream_id, e.priority) for e in full] == [
                ("onset", DEVICE_STREAM, "medium"), ("ended", DEVICE_STREAM, "medium")
            ]  # fmt: skip
            assert full[1].detail == {"max_events": 4, "evicted": 2, "refused": 0}
            delivered = [i for i in recorder.event_ids() if i not in {e.id for e in full}]
            assert delivered == [e.id for e in events[2:]], "the two oldest lows were evicted"
    finally:
        sink.close()


def test_tls_with_password_auth(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    password_file = make_password_file(tmp_path, "device", "s3cret")
    events = make_events(3, site=SITE, device_id=DEVICE)
    with Mosquitto(tmp_path, tls=tls, password_file=password_file) as broker:
        creds = ("device", "s3cret")
        with Recorder(broker.port, tls=tls, credentials=creds) as recorder:
            config = mqtt_config(tmp_path, broker.port, ca_file=str(tls.ca_cert))
            config = from_mapping(
                MqttConfig, {**asdict(config), "username": "device", "password": "s3cret"}
            )
            with MqttSink(config) as sink:
                for event in events:
                    sink.publish(event)
                assert sink.flush(10.0)
            assert wait_ids(recorder, {e.id for e in events})
        wrong = mqtt_config(
            tmp_path, broker.port, ca_file=str(tls.ca_cert), username="device", password="nope"
        )
        with pytest.raises(BrokerRefusedError) as refused:
            MqttSink(wrong).connect()
        assert (
            str(refused.value)
            == f"broker 127.0.0.1:{broker.port} refused the connection: Not authorized"
        )
        other_ca = make_tls_files(tmp_path / "other", name="other")
        untrusted = mqtt_config(tmp_path, broker.port, ca_file=str(other_ca.ca_cert))
        with pytest.raises(
            BrokerTlsError, match=r"^broker 127.0.0.1:\d+ TLS failed: .*certificate"
        ):
            MqttSink(untrusted).connect()
        secret = tmp_path / "mqtt-password"
        secret.write_text("s3cret\n")
        secret.chmod(0o600)
        from_file = mqtt_config(
            tmp_path, broker.port, ca_file=str(tls.ca_cert), username="device",
            password_file=str(secret),
        )  # fmt: skip
        with MqttSink(from_file) as sink:  # the password read from the file logs in
            sink.publish(make_events(1, site=SITE, device_id=DEVICE)[0])
            assert sink.flush(10.0)
        secret.chmod(0o644)
        with pytest.raises(ConfigError, match="others may read this password file"):
            MqttSink(from_file).connect()
        no_tls = mqtt_config(tmp_path, broker.port, username="device", password="s3cret")
        with pytest.raises(
            BrokerRefusedError, match="before CONNACK; a TLS listener needs ca_file"
        ):
            MqttSink(no_tls).connect()


def test_unreachable_broker_fails_fast_when_required(tmp_path: Path) -> None:
    with closed_port() as port:
        config = mqtt_config(tmp_path, port, require_broker_at_start=True)
        with pytest.raises(
            BrokerUnavailableError, match=f"^broker 127.0.0.1:{port} is unreachable: "
        ):
            MqttSink(config).connect()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"port": 0}, "mqtt.yaml: port must be an integer in \\[1, 65535\\], got 0"),
        ({"site": "ward/3"}, "mqtt.yaml: site must be a topic segment"),
        ({"password": "x"}, "mqtt.yaml: password must be set together with username"),
        ({"ca_file": "/nonexistent/ca.pem"}, "mqtt.yaml: ca_file must be an existing file"),
        (
            {"backoff_min_s": 5, "backoff_max_s": 2},
            "mqtt.yaml: backoff_max_s must be >= backoff_min_s",
        ),
        ({"spool_full_priority": "urgent"}, "mqtt.yaml: spool_full_priority must be one of"),
        ({"hots": "x"}, "mqtt.yaml: hots must be one of"),
        ({"host": "ward3-broker.local"}, "mqtt.yaml: host must be a loopback address, or a"),
        (
            {"host": "10.1.2.3", "tls": True},
            "mqtt.yaml: host must be a loopback address, or a broker reached with TLS",
        ),
        (
            {"host": "10.1.2.3", "username": "d", "password": "p"},
            "mqtt.yaml: host must be a loopback address",
        ),
        (
            {"username": "d", "password": "p", "password_file": "/etc/hostname"},
            "mqtt.yaml: password_file must be left out when password is given",
        ),
        ({"username": "d", "password_file": "/nonexistent"}, "mqtt.yaml: password_file must be"),
    ],
)
def test_config_errors_name_the_file_and_key(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.")):
        from_mapping(MqttConfig, changes, source="mqtt.yaml")


def test_a_remote_broker_with_tls_and_a_user_or_allowed_insecure_is_taken() -> None:
    secured = from_mapping(
        MqttConfig, {"host": "ward3-broker.local", "tls": True, "username": "d", "password": "p"}
    )
    assert secured.uses_tls
    insecure = from_mapping(MqttConfig, {"host": "10.1.2.3", "allow_insecure": True})
    assert insecure.host == "10.1.2.3"
    for host in ("127.0.0.1", "::1", "localhost", "127.8.9.10"):
        assert from_mapping(MqttConfig, {"host": host}).host == host


def test_embedded_amqtt_broker_round_trip(tmp_path: Path) -> None:
    events = make_events(5, site=SITE, device_id=DEVICE)
    with EmbeddedBroker() as broker, Recorder(broker.port) as recorder:
        with MqttSink(mqtt_config(tmp_path, broker.port)) as sink:
            for event in events:
                sink.publish(event)
            assert sink.flush(10.0)
        assert wait_ids(recorder, {e.id for e in events})
        assert recorder.event_ids() == [e.id for e in events]
        assert recorder.wait_for(lambda _: ("offline", False) in statuses(recorder), 5.0)


def test_stdout_jsonl_and_fan_out(tmp_path: Path) -> None:
    onset = make_events(1, site=SITE, device_id=DEVICE)[0]
    ended = onset.ended("2026-05-09T07:00:02.500Z", end_sample=20000)
    out = io.StringIO()
    jsonl = JsonlSink(tmp_path / "events.jsonl", metrics_path=tmp_path / "metrics.jsonl")
    sinks = MultiSink([StdoutSink(out, show_metrics=True), jsonl])
    assert all(isinstance(s, Sink) for s in (*sinks.sinks, sinks))
    for event in (onset, ended):
        sinks.publish(event)
    sinks.publish_metrics("bed-1", {"frames": 3})
    assert sinks.flush(1.0)
    sinks.close()
    assert out.getvalue().splitlines() == [
        "2026-05-09T07:00:00.000Z ward-3/bed-1 Wheeze onset [medium] conf=0.90 samples 0.. "
        "quality=0.99",
        "2026-05-09T07:00:02.500Z ward-3/bed-1 Wheeze ended [medium] conf=0.90 samples 0..20000 "
        "quality=0.99",
        "metrics bed-1 frames=3",
    ]
    lines = (tmp_path / "events.jsonl").read_text(encoding="utf-8").splitlines()
    assert [Event.from_json(line) for line in lines] == [onset, ended]
    metrics = json.loads((tmp_path / "metrics.jsonl").read_text(encoding="utf-8"))
    assert metrics["metrics"] == {"frames": 3}


class CountingSpool(Spool):
    """A spool that notes the size of every put_many and ack_many."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.puts: list[int] = []
        self.acks: list[int] = []

    def put_many(self, events: Sequence[Event]) -> list[int | None]:
        self.puts.append(len(events))
        return super().put_many(events)

    def ack_many(self, seqs: Iterable[int]) -> int:
        seqs = list(seqs)
        self.acks.append(len(seqs))
        return super().ack_many(seqs)


def test_publish_many_spools_a_round_in_one_call_and_delivers_in_order(
    tmp_path: Path, mosquitto: Any
) -> None:
    events = make_events(40, site=SITE, device_id=DEVICE)
    with Recorder(mosquitto.port) as recorder:
        spool = CountingSpool(tmp_path / "spool.sqlite")
        with MqttSink(mqtt_config(tmp_path, mosquitto.port), spool=spool) as sink:
            for start in range(0, len(events), 8):
                sink.publish_many(events[start : start + 8])
            sink.publish_many([])
            assert spool.puts == [8] * 5, "one spool transaction per group"
            assert sink.flush(10.0)
            assert sum(spool.acks) == 40
            assert (sink.stats()["spooled"], sink.stats()["acked"]) == (0, 40)
        assert wait_ids(recorder, {e.id for e in events})
        assert recorder.event_ids() == [e.id for e in events]


def test_pubacks_that_came_together_are_deleted_in_one_transaction(tmp_path: Path) -> None:
    spool = CountingSpool(tmp_path / "spool.sqlite")
    sink = MqttSink(mqtt_config(tmp_path, free_port()), spool=spool)  # not connected
    try:
        sink.publish_many(make_events(5, site=SITE, device_id=DEVICE))
        for mid, (seq, _) in enumerate(spool.pending(10), start=1):  # what the sender does
            sink._mids[mid] = seq
        for mid in (1, 2, 99, 3, 4, 5):  # 99: a status message's PUBACK, not in the spool
            sink._on_publish(None, None, mid, None, None)
        sink._take_acks()
        assert spool.acks == [5]
        assert (len(spool), sink.stats()["acked"]) == (0, 5)
    finally:
        sink.close()


def test_publish_many_refuses_a_foreign_event_and_reports_a_full_spool(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = Mosquitto(tmp_path)  # never started: everything stays in the spool
    sink = MqttSink(mqtt_config(tmp_path, broker.port, spool_max_events=3)).connect()
    try:
        ours = make_events(4, site=SITE, device_id=DEVICE, priority="high")
        foreign = make_events(1, site="ward-9", device_id=DEVICE)
        with pytest.raises(SinkError, match="is for ward-9/dev-1"):
            sink.publish_many([ours[0], *foreign])
        assert sink.stats()["spooled"] == 0, "nothing of the group was spooled"
        with caplog.at_level(logging.ERROR, logger="edge.sinks.mqtt"):
            sink.publish_many(ours)
        assert sink.stats()["refused"] == 1
        assert f"refused high Wheeze event {ours[3].id}" in caplog.text
        assert sink.stats()["spooled"] == 4, "3 events and the spool_full onset (exempt)"
    finally:
        sink.close()


def test_fan_out_of_a_group_matches_one_by_one(tmp_path: Path) -> None:
    onset = make_events(1, site=SITE, device_id=DEVICE)[0]
    group = [onset, onset.ended("2026-05-09T07:00:02.500Z", end_sample=20000)]
    outputs = []
    for name, publish in (("single", None), ("group", MultiSink.publish_many)):
        out = io.StringIO()
        sinks = MultiSink([StdoutSink(out), JsonlSink(tmp_path / f"{name}.jsonl")])
        if publish is None:
            for event in group:
                sinks.publish(event)
        else:
            publish(sinks, group)
        sinks.close()
        outputs.append((out.getvalue(), (tmp_path / f"{name}.jsonl").read_text("utf-8")))
    assert outputs[0] == outputs[1]
    assert len(outputs[0][0].splitlines()) == 2


def test_publish_all_falls_back_to_publish() -> None:
    class OneByOne:
        def __init__(self) -> None:
            self.events: list[Event] = []

        def publish(self, event: Event) -> None:
            self.events.append(event)

        def publish_metrics(self, stream_id: str, metrics: dict[str, Any]) -> None: ...

        def flush(self, timeout_s: float) -> bool:
            return True

        def close(self) -> None: ...

    events = make_events(3, site=SITE, device_id=DEVICE)
    sink = OneByOne()
    publish_all(MultiSink([sink]), events)
    publish_all(sink, [])
    assert sink.events == events
