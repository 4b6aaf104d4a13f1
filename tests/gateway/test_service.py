"""The gateway's process (gateway.service, ``lungwatch gateway``): the site's events and
readings in through real Mosquitto, out over MLLP to a real receiver that validates every
message with hl7apy; the receiver and the gateway itself killed and started again while
beds publish: every finding and reading delivered, none under a second control id."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.config import BedEntry, GatewayConfig, Hl7Config
from gateway.fhir import identifier_of
from gateway.outbox import Outbox
from gateway.service import Gateway, Intake, fhir_route, hl7_route
from lungwatch.config import load_config
from lungwatch.events import (
    ack_payload,
    ack_topic,
    event_topic,
    respiration_payload,
    respiration_topic,
    status_topic,
)
from lungwatch.mqtt import import_paho
from tests.brokers import REPO_ROOT, Mosquitto, finding_events
from tests.gateway.receiver import Receiver
from wardview.ward import Ward

SITE, DEVICE, BED = "ward-3", "dev-1", "bed-1"


def reading(i: int, state: str = "ok", seconds: float = 61.0) -> dict[str, Any]:
    utc = dt.datetime(2026, 11, 27, 3, 0, tzinfo=dt.timezone.utc) + dt.timedelta(
        seconds=seconds * i
    )
    return {"state": state, "rate_bpm": 14.0 + i % 5 if state == "ok" else None,
            "confidence": 0.6, "breaths": 7, "window_s": 30.0, "age_band": "adult",
            "reason": "", "utc": utc.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "low_bpm": 9.0, "high_bpm": 24.0}  # fmt: skip


def respiration(i: int, **kw: Any) -> bytes:
    return respiration_payload(SITE, DEVICE, BED, reading(i, **kw)).encode()


def test_intake_queues_onsets_ends_and_readings_and_refuses_what_is_not_its_topics(
    tmp_path: Path,
) -> None:
    config = GatewayConfig(site=SITE, hl7=Hl7Config(host="127.0.0.1"), rate_every_s=60.0,
                           beds=(BedEntry(DEVICE, BED, "ICU^1^1^HOSP"),))  # fmt: skip
    outbox = Outbox(tmp_path / "q.sqlite")
    intake = Intake(config, [hl7_route(Hl7Config(host="127.0.0.1"), outbox)])
    onset = finding_events(1, site=SITE, device_id=DEVICE, stream_id=BED)[0]
    topic = event_topic(SITE, DEVICE, BED)
    assert intake.handle(topic, onset.to_json().encode()) == "queued"
    assert intake.handle(topic, onset.to_json().encode()) == "duplicate"  # delivered again
    assert intake.handle(topic, onset.ongoing().to_json().encode()) == "skipped"
    ended = onset.ended("2026-05-09T07:00:03.000Z", 24000)
    assert intake.handle(topic, ended.to_json().encode()) == "queued"
    other_bed = event_topic(SITE, DEVICE, "bed-9")  # a device speaks for its own beds only
    assert intake.handle(other_bed, onset.to_json().encode()) == "refused:invalid"
    assert intake.handle(f"lungwatch/v1/ward-9/{DEVICE}/{BED}/event", b"{}") == "refused:invalid"
    assert intake.handle(topic, b"{not json") == "refused:bad_json"
    assert intake.handle(topic, b"[" * 5000) == "refused:too_deep"

    rtopic = respiration_topic(SITE, DEVICE, BED)
    assert intake.handle(rtopic, respiration(0, seconds=10.0)) == "queued"
    assert (
        intake.handle(rtopic, respiration(1, seconds=10.0)) == "skipped"
    )  # 10 s later, same state
    assert intake.handle(rtopic, respiration(2, state="apnoea", seconds=10.0)) == "queued"
    assert intake.handle(rtopic, respiration(9, state="apnoea", seconds=10.0)) == "queued"  # 70 s
    assert intake.handle(rtopic, b"") == "skipped"  # withdrawn: the bed's stream ended
    bad = reading(10) | {"rate_bpm": -3}
    assert intake.handle(rtopic, respiration_payload(SITE, DEVICE, BED, bad).encode()) == (
        "refused:invalid"
    )
    assert outbox.counts()["queued"] == 5
    assert intake.counts["refused:invalid"] == 3


def gateway_yaml(
    tmp_path: Path, broker_port: int, receiver_port: int, alarms: bool = False
) -> Path:
    """The gateway's file (``alarms``: PCD-04 reports too; test_alarms.py covers them)."""
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps({
        "site": SITE,
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "connect_timeout_s": 5.0},
        "hl7": {"host": "127.0.0.1", "port": receiver_port, "sending_facility": "WARD-3",
                "receiving_application": "HIS", "ack_timeout_s": 2.0, "backoff_min_s": 0.05,
                "backoff_max_s": 0.3},
        "rate_every_s": 60.0,
        "alarm_reports": alarms,
        "queue": str(tmp_path / "state" / "gateway.sqlite"),
        "beds": [{"device_id": DEVICE, "stream_id": BED, "location": "ICU^1^1^HOSP",
                  "patient_id": "12345^^^HOSP^MR"}],
    }), encoding="utf-8")  # fmt: skip
    return path


def start_gateway(config: Path) -> subprocess.Popen[str]:
    code = "import sys; from lungwatch.cli import main; sys.exit(main())"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "gateway", "--config", str(config)], cwd=REPO_ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONFAULTHANDLER": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("lungwatch gateway: site "), (line, process.stderr.read())
    return process


class Device:
    """A bed's device: publishes events and readings at QoS 1 and waits for each PUBACK."""

    def __init__(self, port: int) -> None:
        mqtt = import_paho()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"test-device-{port}")  # fmt: skip
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5.0)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_nothing_is_lost_or_sent_twice_while_the_receiver_and_the_gateway_restart(
    tmp_path: Path,
) -> None:
    (tmp_path / "state").mkdir(mode=0o700)
    broker, receiver = Mosquitto(tmp_path).start(), Receiver().start()
    config = gateway_yaml(tmp_path, broker.port, receiver.port)
    gateway = start_gateway(config)
    device = Device(broker.port)
    events = finding_events(30, site=SITE, device_id=DEVICE, stream_id=BED)
    topic, rtopic = event_topic(SITE, DEVICE, BED), respiration_topic(SITE, DEVICE, BED)
    try:
        for i in range(10):
            device.publish(topic, events[i].to_json().encode())
            device.publish(rtopic, respiration(i))
        assert receiver.wait_for(lambda: len(receiver.accepted) >= 20, 20.0), receiver.errors
        receiver.kill()  # the hospital's receiver goes down
        for i in range(10, 20):
            device.publish(topic, events[i].to_json().encode())
        time.sleep(0.5)
        gateway.send_signal(signal.SIGKILL)  # and the gateway's machine with it
        gateway.wait(10)
        for i in range(20, 30):  # published while no gateway runs: the broker keeps them
            device.publish(topic, events[i].to_json().encode())
        for i in range(10, 15):
            device.publish(rtopic, respiration(i))
        receiver.start()
        gateway = start_gateway(config)
        assert receiver.wait_for(lambda: len(receiver.accepted) >= 45, 30.0), (
            len(receiver.accepted), receiver.errors)  # fmt: skip
        time.sleep(0.5)  # nothing more arrives
    finally:
        out, err = stop_all(gateway, device, receiver, broker)
    assert gateway.returncode == 0, err
    assert len(receiver.accepted) == 45  # 30 onsets + 15 readings: 0 lost
    assert len(set(receiver.received)) == 45  # none under a second control id
    assert receiver.errors == []  # every message valid HL7 v2.6
    obx = [
        [seg for seg in text.split("\r") if seg.startswith("OBX")][3]
        for text in receiver.accepted.values()
    ]  # the first metric, after the device rows
    wheezes = {seg.split("|")[14] for seg in obx if "56018004^Wheezing^SCT" in seg}
    rates = {seg.split("|")[14] for seg in obx if "MDC_RESP_RATE" in seg}
    assert (len(wheezes), len(rates)) == (30, 15)
    assert "stopped" in out
    assert stat_mode(tmp_path / "state" / "gateway.sqlite") == 0o600


def stop_all(
    gateway: subprocess.Popen[str], device: Device, receiver: Receiver, broker: Mosquitto
) -> tuple[str, str]:
    """The device's connection, the gateway (SIGTERM: a clean stop), the receiver and the
    broker stopped; the gateway's output and errors."""
    device.close()
    gateway.send_signal(signal.SIGTERM)
    try:
        out, err = gateway.communicate(timeout=20)
    except subprocess.TimeoutExpired:  # where each thread is: PYTHONFAULTHANDLER dumps at SIGABRT
        gateway.send_signal(signal.SIGABRT)
        out, err = gateway.communicate(timeout=20)
        raise AssertionError(
            f"the gateway did not stop within 20 s of SIGTERM:\n{err[-6000:]}"
        ) from None
    receiver.kill()
    broker.stop()
    return out, err


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_malformed_config_is_refused_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.yaml"
    bad.write_text("site: ward-3\nhl7: {host: his, port: 70000}\n", encoding="utf-8")
    code = "import sys; from lungwatch.cli import main; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", code, "gateway", "--config", str(bad)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1, done.stderr
    assert "gateway.yaml" in done.stderr, done.stderr
    assert "hl7.port" in done.stderr, done.stderr
    missing = tmp_path / "nohost.yaml"
    missing.write_text("site: ward-3\nhl7: {port: 2575}\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", code, "gateway", "--config", str(missing)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # fmt: skip
    assert done.returncode != 0
    assert "hl7.host" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


def test_a_gateway_login_from_lungwatch_access_reads_the_sites_events_and_breathing(
    tmp_path: Path,
) -> None:
    """The broker as ``lungwatch access --gateways`` configures it (real Mosquitto, its ACL):
    the gateway's login may only read the site's events, breathing, bed summaries and the
    acknowledges devices took; the broker grants its subscriptions and what a device
    publishes there reaches the receiver (a finding, a reading, the alarm's start and its
    acknowledgement)."""
    import yaml

    from gateway.service import Gateway
    from lungwatch.access import generate
    from lungwatch.mqtt import MqttConfig

    access = tmp_path / "access"
    generate(SITE, [DEVICE], ["ward-view"], access, gateways=["hl7-gw"])
    acl = (access / "mosquitto" / "acl").read_text()
    gateway_acl = acl.split("user hl7-gw\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert gateway_acl == [f"topic read lungwatch/v1/{SITE}/+/+/{kind}"
                           for kind in ("event", "respiration", "summary", "ack")] + [
        f"topic read lungwatch/v1/{SITE}/+/status",
        f"topic write lungwatch/v1/{SITE}/gateway/hl7-gw/health"]  # fmt: skip
    login = yaml.safe_load((access / "clients" / "hl7-gw.yaml").read_text())["mqtt"]
    device = yaml.safe_load((access / "clients" / f"{DEVICE}.yaml").read_text())["mqtt"]
    broker = Mosquitto(tmp_path, include=access / "mosquitto" / "lungwatch.conf").start()
    receiver = Receiver().start()
    mqtt = MqttConfig(host="127.0.0.1", port=broker.port, site=SITE, username=login["username"],
                      password=login["password"])  # fmt: skip
    config = GatewayConfig(site=SITE, mqtt=mqtt, queue=str(tmp_path / "q.sqlite"),
                           hl7=Hl7Config(host="127.0.0.1", port=receiver.port))  # fmt: skip
    gateway = Gateway(config).start()
    paho = import_paho()
    publisher = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2,
                            client_id=device["username"])  # fmt: skip
    publisher.username_pw_set(device["username"], device["password"])
    try:
        assert gateway.subscribed.is_set()  # the broker granted the subscriptions
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        [event] = finding_events(1, site=SITE, device_id=DEVICE, stream_id=BED)
        publisher.publish(event_topic(SITE, DEVICE, BED), event.to_json(), qos=1).wait_for_publish(
            5
        )
        publisher.publish(respiration_topic(SITE, DEVICE, BED), respiration(0), qos=1)
        assert receiver.wait_for(lambda: len(receiver.accepted) == 3, 10.0), receiver.errors
        took = ack_payload(SITE, DEVICE, BED, "CAS", "nurse-a", event.start_utc, 0)
        publisher.publish(ack_topic(SITE, DEVICE, BED), took, qos=1)
        assert receiver.wait_for(lambda: len(receiver.accepted) == 4, 10.0), receiver.errors
        last = list(receiver.accepted.values())[-1]
        assert "ORU^R40" in last
        assert "|alert-acknowledged|" in last
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        gateway.stop()
        receiver.kill()
        broker.stop()


def test_a_full_disk_keeps_the_findings_at_the_broker_until_the_queue_stores_again(
    tmp_path: Path,
) -> None:
    """The queue cannot grow (SQLite's own "database or disk is full", the queue's connection
    held to the pages it has): what the devices send meanwhile is not acknowledged to the
    broker, so none is lost; once it can grow every finding goes out, once."""
    (tmp_path / "state").mkdir(mode=0o700)
    broker, receiver = Mosquitto(tmp_path).start(), Receiver().start()
    config = load_config(GatewayConfig, [gateway_yaml(tmp_path, broker.port, receiver.port)])
    gateway = Gateway(config).start()
    device = Device(broker.port)
    events = finding_events(20, site=SITE, device_id=DEVICE, stream_id=BED)
    topic = event_topic(SITE, DEVICE, BED)
    queue = gateway.routes[0].outbox._db
    try:
        device.publish(topic, events[0].to_json().encode())
        assert receiver.wait_for(lambda: len(receiver.accepted) >= 1, 20.0), receiver.errors
        pages = queue.execute("PRAGMA page_count").fetchone()[0]
        queue.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
        for event in events[1:]:
            device.publish(topic, event.to_json().encode())
        time.sleep(3.0)  # the gateway meets the full queue, waits and tries again
        stored, waits = len(receiver.accepted), gateway.intake.counts["store_waits"]
        queue.execute("PRAGMA max_page_count = 1073741823")  # space again
        receiver.wait_for(lambda: len(receiver.accepted) >= 20, 30.0)
        time.sleep(0.5)  # nothing more arrives
    finally:
        device.close()
        gateway.stop()
        receiver.kill()
        broker.stop()
    assert len(receiver.accepted) == 20, (stored, dict(gateway.intake.counts))  # 0 lost
    assert stored < 20  # the full queue held some back ...
    assert waits >= 2  # ... and the gateway tried them again
    assert len(set(receiver.received)) == 20  # none sent twice
    assert gateway.intake.counts["refused:internal_error"] == 0


def test_an_episode_id_is_its_beds_in_the_intake_and_in_fhir(tmp_path: Path) -> None:
    """Another bed's event under bed-1's episode id is refused (counted), so it can neither
    end bed-1's finding nor become bed-1's patient's Observation; a finding's FHIR
    Observation is named by site, device, bed and episode."""
    config = GatewayConfig(site=SITE, hl7=Hl7Config(host="127.0.0.1"),
                           beds=(BedEntry(DEVICE, BED, "ICU^1^1^HOSP"),))  # fmt: skip
    outbox, resources = Outbox(tmp_path / "q.sqlite"), Outbox(tmp_path / "fhir.sqlite")
    intake = Intake(config, [hl7_route(Hl7Config(host="127.0.0.1"), outbox),
                             fhir_route(resources)])  # fmt: skip
    onset = finding_events(1, site=SITE, device_id=DEVICE, stream_id=BED)[0]
    assert intake.handle(event_topic(SITE, DEVICE, BED), onset.to_json().encode()) == "queued"
    [other] = finding_events(1, site=SITE, device_id="dev-2", stream_id="bed-14")
    stolen = dataclasses.replace(other, episode_id=onset.episode_id).ended(
        "2026-05-09T07:00:09.000Z", 72000
    )
    topic = event_topic(SITE, "dev-2", "bed-14")
    assert intake.handle(topic, stolen.to_json().encode()) == "refused:foreign_episode"
    assert intake.handle(topic, other.to_json().encode()) == "queued"  # its own still go
    assert outbox.counts()["queued"] == resources.counts()["queued"] == 2
    head = resources.head()
    assert head is not None
    assert identifier_of(head.message) == (
        f"urn:lungwatch:observation|episode/{SITE}/{DEVICE}/{BED}/{onset.episode_id}"
    )


def test_a_device_can_neither_make_every_reading_due_nor_add_beds_without_end(
    tmp_path: Path,
) -> None:
    """Readings whose times jump two hours back and forth make no reading due (a reading is
    due ``rate_every_s`` after the latest one sent, later, not earlier); a time over 5 min
    ahead of the gateway's clock is refused; a device's messages for more beds than
    ``max_beds_per_device`` are refused (counted), another device's still go."""
    config = GatewayConfig(site=SITE, hl7=Hl7Config(host="127.0.0.1"), rate_every_s=60.0,
                           max_beds_per_device=3)  # fmt: skip
    outbox = Outbox(tmp_path / "q.sqlite")
    gateway_now = dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.timezone.utc)
    intake = Intake(config, [hl7_route(Hl7Config(host="127.0.0.1"), outbox)],
                    now=lambda: gateway_now)  # fmt: skip
    base = dt.datetime(2026, 11, 27, 3, 0, tzinfo=dt.timezone.utc)

    def at(when: dt.datetime, bed: str = BED, device: str = DEVICE) -> bytes:
        utc = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return respiration_payload(SITE, device, bed, reading(0) | {"utc": utc}).encode()

    rtopic = respiration_topic(SITE, DEVICE, BED)
    two_hours = dt.timedelta(hours=2)
    outcomes = [intake.handle(rtopic, at(base + two_hours * (i % 2))) for i in range(300)]
    assert outcomes.count("queued") == 2  # the first two; then no time is later than 60 s on
    assert intake.handle(rtopic, at(base + two_hours + dt.timedelta(seconds=61))) == "queued"
    ahead = gateway_now + dt.timedelta(hours=1)
    assert intake.handle(rtopic, at(ahead)) == "refused:invalid"
    for i in range(2, 5):  # beds 2 and 3 of the device, then a fourth
        topic = respiration_topic(SITE, DEVICE, f"bed-{i}")
        assert intake.handle(topic, at(base, f"bed-{i}")) == (
            "queued" if i < 4 else "refused:over_limit"
        )
    other = respiration_topic(SITE, "dev-2", "bed-1")
    assert intake.handle(other, at(base, "bed-1", "dev-2")) == "queued"


def clocked_intake(kind: type[Intake], tmp_path: Path) -> tuple[Intake, list[float]]:
    """An intake of ``kind`` with an HL7 queue, on a clock the test moves (``now[0]``)."""
    now = [1000.0]
    config = GatewayConfig(site=SITE, hl7=Hl7Config(host="127.0.0.1"))
    outbox = Outbox(tmp_path / "q.sqlite")
    intake = kind(config, [hl7_route(Hl7Config(host="127.0.0.1"), outbox)], clock=lambda: now[0])
    return intake, now


def test_a_device_flooding_bad_messages_cannot_flood_the_gateways_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """5000 malformed messages from one device in a minute: each is refused and counted, but
    only the first 20 are logged one by one; the next minute begins with one line saying how
    many more were refused, and from which device, and the log takes single lines again."""
    intake, now = clocked_intake(Intake, tmp_path)
    topic = respiration_topic(SITE, "dev-9", BED)
    with caplog.at_level("WARNING", logger="gateway.service"):
        for _ in range(5000):
            now[0] += 0.01
            assert intake.handle(topic, b"{not json") == "refused:bad_json"
        assert len(caplog.records) == 20
        now[0] += 60.0
        assert intake.handle(topic, b"{not json") == "refused:bad_json"
    assert intake.counts["refused:bad_json"] == 5001
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 22
    assert "4980 more messages refused" in said[20]
    assert "'dev-9' 4980" in said[20]
    assert said[21].startswith(f"gateway: {topic!r} refused")


class FailingIntake(Intake):
    """An intake whose status handling has a bug: the fault the last guard is for."""

    def _status(self, device_id: str, payload: bytes) -> str:
        raise KeyError("a bug")


def test_a_device_whose_messages_meet_a_bug_cannot_flood_the_log_or_stop_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """5000 status messages that each meet a bug, after 30 malformed ones that use up the
    log's bound for refusals: each is refused as ``internal_error`` and counted, the first 20
    are logged (as errors, with the traceback) on a bound of their own, and the next minute
    begins with one line saying how many more; another bed's reading is queued."""
    intake, now = clocked_intake(FailingIntake, tmp_path)
    topic = f"lungwatch/v1/{SITE}/dev-9/status"
    with caplog.at_level("WARNING", logger="gateway.service"):
        for _ in range(30):
            assert intake.handle(respiration_topic(SITE, "dev-8", BED), b"{") == "refused:bad_json"
        for _ in range(5000):
            now[0] += 0.01
            assert intake.handle(topic, b"{}") == "refused:internal_error"
        bugs = [r for r in caplog.records if r.levelname == "ERROR"]
        assert len(caplog.records) == 40
        assert len(bugs) == 20
        assert all(r.exc_info for r in bugs)
        assert "KeyError: 'a bug'" in caplog.text
        now[0] += 60.0
        assert intake.handle(respiration_topic(SITE, DEVICE, BED), respiration(0)) == "queued"
        assert intake.handle(topic, b"{}") == "refused:internal_error"
    assert intake.counts["refused:internal_error"] == 5001
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 43
    assert "10 more messages refused" in said[40]
    assert "'dev-8' 10" in said[40]
    assert "4980 more messages met a bug" in said[41]
    assert said[42].startswith("gateway: a message on")


def test_a_device_or_stream_that_is_no_topic_segment_is_refused_and_leaves_nothing_behind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A topic's device and stream are topic segments (1..64 printable characters): a status
    or summary whose device id is 5000 characters or holds a line break or a lone surrogate,
    or whose stream id is 65 characters, is refused (``invalid``, as the ward view counts it)
    before the gateway keeps anything of it: no device marked stopped, no bed, nothing
    unprintable in its log. A device id of 64 printable characters is taken."""
    config = GatewayConfig(site=SITE, hl7=Hl7Config(host="127.0.0.1"))
    intake = Intake(config, [hl7_route(Hl7Config(host="127.0.0.1"), Outbox(tmp_path / "q"))])
    alarms = intake.alarms
    assert alarms is not None

    def status(device: str) -> tuple[str, bytes]:  # shut down: the device's streams ended
        body = {"schema_version": 1, "site": SITE, "device_id": device, "state": "offline",
                "utc": "2026-11-27T03:00:00.000Z", "reason": "shutdown"}  # fmt: skip
        return f"lungwatch/v1/{SITE}/{device}/status", json.dumps(body).encode()

    def summary(device: str, bed: str) -> tuple[str, bytes]:
        body = {"schema_version": 1, "site": SITE, "device_id": device, "stream_id": bed,
                "open": []}  # fmt: skip
        return f"lungwatch/v1/{SITE}/{device}/{bed}/summary", json.dumps(body).encode()

    bad_devices = ["d" * 5000, "dev-1\n", "dev-\ud800"]
    messages = [status(device) for device in bad_devices]
    messages += [summary(device, BED) for device in bad_devices]
    messages.append(summary(DEVICE, "b" * 65))
    messages.append((summary(DEVICE, "b" * 65)[0], b""))  # a withdrawn summary too
    with caplog.at_level("WARNING", logger="gateway.service"):
        for topic, payload in messages:
            assert intake.handle(topic, payload) == "refused:invalid", topic[:80]
    assert intake.counts["refused:invalid"] == len(messages) == 8
    assert alarms.stopped == set()
    assert intake._beds == {}
    assert alarms._listed == {}
    assert alarms._gone == set()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 8
    assert all(line.isprintable() and "not a topic segment" in line for line in said)

    longest = "d" * 64
    assert intake.handle(*status(longest)) == "taken"
    assert intake.handle(*summary(longest, "b" * 64)) == "taken"
    assert alarms.stopped == {longest}
    assert set(alarms._listed) == {(longest, "b" * 64)}


def test_a_flapping_state_is_sent_at_a_pace_and_a_late_reading_never(tmp_path: Path) -> None:
    """A bed whose state flips between ok and not_assessable every second for two minutes
    sends a change at most every 10 s (it was every reading), the last state it reached
    included; a reading earlier than one already sent is not sent (the hospital's readings of
    a bed stay in order)."""
    config = GatewayConfig(site=SITE, hl7=Hl7Config(host="127.0.0.1"), rate_every_s=60.0)
    outbox = Outbox(tmp_path / "q.sqlite")
    gateway_now = dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.timezone.utc)
    intake = Intake(config, [hl7_route(Hl7Config(host="127.0.0.1"), outbox)],
                    now=lambda: gateway_now)  # fmt: skip
    base = dt.datetime(2026, 11, 27, 3, 0, tzinfo=dt.timezone.utc)
    rtopic = respiration_topic(SITE, DEVICE, BED)

    def at(seconds: float, state: str) -> bytes:
        when = base + dt.timedelta(seconds=seconds)
        utc = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return respiration_payload(SITE, DEVICE, BED, reading(0, state) | {"utc": utc}).encode()

    outcomes = [intake.handle(rtopic, at(s, ("ok", "not_assessable")[s % 2])) for s in range(120)]
    assert 10 <= outcomes.count("queued") <= 13, outcomes.count("queued")
    assert intake.handle(rtopic, at(200, "not_assessable")) == "queued"
    assert intake.handle(rtopic, at(150, "ok")) == "skipped"  # earlier than one sent


def _small_disk(where: Path, size: str) -> bool:
    """A tmpfs of ``size`` mounted at ``where`` (needs root and the mount capability)."""
    where.mkdir(mode=0o700)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           str(where)], capture_output=True)  # fmt: skip
    return done.returncode == 0


def test_a_full_filesystem_keeps_the_findings_at_the_broker_until_it_has_room(
    tmp_path: Path,
) -> None:
    """The gateway's process with its queue on a 2 MB tmpfs that a file then fills (ENOSPC
    from the filesystem, not a limit SQLite sets itself): the findings published meanwhile are
    not acknowledged to the broker and wait there; once the file is removed every one goes
    out, once; the process never stops."""
    small = tmp_path / "small"
    if not _small_disk(small, "2m"):
        pytest.skip("mounting a tmpfs needs root and CAP_SYS_ADMIN")
    try:
        (small / "state").mkdir(mode=0o700)
        broker, receiver = Mosquitto(tmp_path).start(), Receiver().start()
        config = gateway_yaml(small, broker.port, receiver.port)
        gateway = start_gateway(config)
        device = Device(broker.port)
        events = finding_events(20, site=SITE, device_id=DEVICE, stream_id=BED)
        topic = event_topic(SITE, DEVICE, BED)
        filler = small / "filler"
        try:
            device.publish(topic, events[0].to_json().encode())
            assert receiver.wait_for(lambda: len(receiver.accepted) >= 1, 20.0), receiver.errors
            with open(filler, "wb") as out, contextlib.suppress(OSError):  # the disk full
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
            for event in events[1:]:
                device.publish(topic, event.to_json().encode())
            time.sleep(4.0)  # the gateway meets the full disk, waits and tries again
            stored = len(receiver.accepted)
            assert gateway.poll() is None, gateway.communicate()[1][-3000:]  # it goes on
            filler.unlink()  # room again
            receiver.wait_for(lambda: len(receiver.accepted) >= 20, 30.0)
            time.sleep(0.5)  # nothing more arrives
        finally:
            device.close()
            gateway.send_signal(signal.SIGTERM)
            _, err = gateway.communicate(timeout=20)
            receiver.kill()
            broker.stop()
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)
    assert len(receiver.accepted) == 20, (stored, err[-2000:])  # 0 lost
    assert stored < 20  # the full disk held some back
    assert len(set(receiver.received)) == 20  # none sent twice
    assert "cannot store" in err or "full" in err, err[-2000:]  # said in its log


def test_a_device_cannot_take_over_another_beds_episode_end_to_end(tmp_path: Path) -> None:
    """Through Mosquitto to the ward view's server and the gateway's process at once: dev-2
    publishes, on its own bed, an event under bed-1's episode id (read off the view's state).
    The view refuses it (foreign_episode) and keeps bed-1's alarm bed-1's; the gateway refuses
    it, so the hospital gets bed-1's finding and alert only, none under dev-2's bed."""
    from wardview.config import DashboardConfig
    from wardview.server import DashboardServer

    (tmp_path / "state").mkdir(mode=0o700)
    broker, receiver = Mosquitto(tmp_path).start(), Receiver().start()
    gateway = start_gateway(gateway_yaml(tmp_path, broker.port, receiver.port, alarms=True))
    view = DashboardServer(
        DashboardConfig(port=0, history_path=str(tmp_path / "history.sqlite")),
        import_mqtt_config(broker.port), SITE,
    ).start()  # fmt: skip
    device = Device(broker.port)
    [onset] = finding_events(1, site=SITE, device_id=DEVICE, stream_id=BED, priority="high")
    [theirs] = finding_events(1, site=SITE, device_id="dev-2", stream_id="bed-14")
    stolen = dataclasses.replace(theirs, episode_id=onset.episode_id)
    try:
        view.feed.connected.wait(10.0)
        device.publish(event_topic(SITE, DEVICE, BED), onset.to_json().encode())
        assert receiver.wait_for(lambda: len(receiver.accepted) >= 2, 20.0), receiver.errors
        device.publish(event_topic(SITE, "dev-2", "bed-14"), stolen.to_json().encode())
        deadline = time.monotonic() + 10.0
        while view.ward.rejected_reasons.get("foreign_episode", 0) < 1:
            assert time.monotonic() < deadline, view.ward.rejected_reasons
            time.sleep(0.05)
        time.sleep(2.5)  # the gateway's tick and courier had their chance
        rows = view.ward.alarms()
    finally:
        device.close()
        view.stop()
        gateway.send_signal(signal.SIGTERM)
        _, err = gateway.communicate(timeout=20)
        receiver.kill()
        broker.stop()
    assert [(r["device_id"], r["stream_id"]) for r in rows] == [(DEVICE, BED)]
    texts = list(receiver.accepted.values())
    assert len(texts) == 2, texts  # bed-1's finding and its alert's start
    assert all(f"{DEVICE}.{BED}^" in text and "bed-14" not in text for text in texts)
    assert "foreign_episode" in err or "refused" in err, err[-2000:]


def import_mqtt_config(port: int) -> Any:
    from lungwatch.mqtt import MqttConfig

    return MqttConfig(host="127.0.0.1", port=port, connect_timeout_s=5.0)


def test_the_gateway_and_the_ward_view_take_and_refuse_the_same_wire_messages(
    tmp_path: Path,
) -> None:
    """Both read a respiration and a status message with lungwatch.events' one check. Each
    case here is one they once judged apart: the view took a rate of 0 or 200 while the
    gateway refused it, and took a time that is not UTC, a range that is not a number, a
    200-character reason and a status whose EUI-64 is not one; the gateway took a status
    whose state is neither online nor offline, and a rate beside the apnoea state; the gateway
    refused a withdrawn reading as not JSON (logged at every stream's end)."""
    config = GatewayConfig(site=SITE, hl7=Hl7Config(host="127.0.0.1"), rate_every_s=1.0)
    intake = Intake(config, [hl7_route(Hl7Config(host="127.0.0.1"), Outbox(tmp_path / "q"))])
    ward = Ward(SITE)
    rtopic, stopic = respiration_topic(SITE, DEVICE, BED), status_topic(SITE, DEVICE)

    def breathing(i: int, **changes: Any) -> bytes:
        return respiration_payload(SITE, DEVICE, BED, reading(i) | changes).encode()

    def status(**changes: Any) -> bytes:
        body = {"schema_version": 1, "site": SITE, "device_id": DEVICE, "state": "online",
                "utc": "2026-11-27T03:00:00.000Z", "reason": "connected", **changes}  # fmt: skip
        return json.dumps(body).encode()

    cases = [
        (rtopic, breathing(0, rate_bpm=0), True),
        (rtopic, breathing(1, rate_bpm=200), True),
        (rtopic, breathing(2, utc="2026-11-27 03:02"), False),
        (rtopic, breathing(3, low_bpm="9"), False),
        (rtopic, breathing(4, reason="x" * 201), False),
        (rtopic, breathing(5, state="apnoea", rate_bpm=12.0), False),
        (rtopic, b"", True),  # withdrawn: the bed's stream ended
        (stopic, status(eui64="00112233445566AA"), True),
        (stopic, status(eui64="not an EUI-64"), False),
        (stopic, status(state="asleep", eui64="00112233445566AA"), False),
    ]
    for topic, payload, taken in cases:
        gateway = not intake.handle(topic, payload).startswith("refused")
        assert (gateway, ward.handle(topic, payload)) == (taken, taken), payload
    assert intake.counts["refused:invalid"] == ward.rejected_reasons["invalid"] == 6
