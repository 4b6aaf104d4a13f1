"""The site's alarm conditions as IHE PCD-04 reports (gateway.alarms, ORU^R40^ORU_R40 in
gateway.hl7): one report per change of a condition, each read by python-hl7 and checked
against the IHE PCD rules (tests/gateway/conformance.py); the alert's id kept from start to
end; nothing reported twice or
lost when the gateway restarts; and end to end, a device's acknowledge (its ack message)
reaching the hospital's receiver with the nurse's name."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.config import BedEntry, GatewayConfig, Hl7Config
from gateway.outbox import Outbox
from gateway.service import Intake, hl7_route
from lungwatch.alarms import AlarmSettings, ListedEpisode
from lungwatch.events import (
    Event,
    ack_payload,
    ack_topic,
    event_topic,
    status_payload,
    status_topic,
    summary_payload,
    summary_topic,
)
from tests.brokers import Mosquitto, finding_events
from tests.gateway.conformance import parsed
from tests.gateway.receiver import Receiver
from tests.gateway.test_service import Device, gateway_yaml, start_gateway, stop_all

SITE, DEVICE, BED = "ward-3", "dev-1", "bed-1"
SETTINGS = AlarmSettings(realarm_s=600.0, escalate_after_s=300.0)
TOPIC = event_topic(SITE, DEVICE, BED)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def intake(path: Path, clock: Clock, *more: BedEntry) -> tuple[Intake, Outbox]:
    hl7 = Hl7Config(host="127.0.0.1")
    config = GatewayConfig(site=SITE, hl7=hl7, alarms=SETTINGS,
                           beds=(BedEntry(DEVICE, BED, "ICU^1^1^HOSP"), *more))  # fmt: skip
    outbox = Outbox(path)
    return Intake(config, [hl7_route(hl7, outbox)], clock=clock), outbox


def reports(outbox: Outbox) -> list[dict[str, Any]]:
    """Every queued alert report, oldest first, read back from its HL7 text (checked)."""
    rows = outbox._db.execute(
        "SELECT message FROM outbox WHERE key LIKE 'alert/%' ORDER BY seq"
    ).fetchall()
    out = []
    for (text,) in rows:
        parsed(text, equipment=False)
        fields = [segment.split("|") for segment in text.split("\r") if segment]
        segments = {f[0] + (f[1] if f[0] == "OBX" else ""): f for f in fields}
        obx = {i: segments[f"OBX{i}"] + [""] * 20 for i in range(1, 6)}
        out.append({
            "type": segments["MSH"][8], "alert": segments["OBR"][3].split("^")[0],
            "what": obx[1][5], "flags": obx[1][8], "source": obx[2][3:8], "phase": obx[3][5],
            "state": obx[4][5], "inactivation": obx[5][5], "by": obx[5][16],
            "location": segments["PV1"][3],
        })  # fmt: skip
    return out


def ack(target: str, user: str) -> bytes:
    return ack_payload(SITE, DEVICE, BED, target, user, "2026-05-09T07:05:00.000Z", 0).encode()


def test_a_conditions_life_is_one_report_per_change_under_one_alert_id(tmp_path: Path) -> None:
    clock = Clock()
    gate, outbox = intake(tmp_path / "q.sqlite", clock)
    wheeze = finding_events(2, site=SITE, device_id=DEVICE, stream_id=BED, priority="low")
    assert gate.handle(TOPIC, wheeze[0].to_json().encode()) == "queued"
    assert gate.tick() == 1  # start
    assert gate.tick() == 0  # nothing changed: nothing said
    assert gate.handle(TOPIC, wheeze[1].to_json().encode()) == "queued"  # one condition
    assert gate.tick() == 0
    clock.now += 300.0  # unacknowledged for escalate_after_s: one priority up (to medium)
    assert gate.tick() == 1
    clock.now += 300.0  # and no further: a finding does not escalate above medium
    assert gate.tick() == 0
    for event in wheeze:  # the episodes end; the condition stays latched, unacknowledged
        ended = event.ended("2026-05-09T07:00:09.000Z", event.start_sample + 8000)
        gate.handle(TOPIC, ended.to_json().encode())
    assert gate.tick() == 1
    assert gate.handle(ack_topic(SITE, DEVICE, BED), ack("CAS", "nurse-a")) == "taken"
    assert gate.tick() == 1  # acknowledged: quiet while the finding continues (continues_s)
    clock.now += 61.0
    assert gate.tick() == 1  # acknowledged and over: the condition ends
    assert gate.tick() == 0
    got = reports(outbox)
    assert [(r["phase"], r["state"], r["flags"]) for r in got] == [
        ("start", "active", "PL~SP"),
        ("escalate", "active", "PM~SP"),
        ("update", "latched", "PM~SP"),
        ("update", "active", "PL~SP"),
        ("end", "inactive", "PL~SP"),
    ]
    assert {r["type"] for r in got} == {"ORU^R40^ORU_R40"}
    assert len({r["alert"] for r in got}) == 1  # one alert from start to end
    assert {r["what"] for r in got} == {"56018004^wheezes (CAS)^SCT"}
    assert got[-1]["inactivation"] == "alert-acknowledged"
    assert got[-1]["by"] == "nurse-a"
    assert {r["location"] for r in got} == {"ICU^1^1^HOSP"}
    assert outbox.notes() == {}  # ended: nothing left to remember


def test_acknowledged_while_open_then_raised_again_after_realarm_s(tmp_path: Path) -> None:
    clock = Clock()
    gate, outbox = intake(tmp_path / "q.sqlite", clock)
    first, second = finding_events(2, site=SITE, device_id=DEVICE, stream_id=BED)
    gate.handle(TOPIC, first.to_json().encode())
    gate.tick()
    gate.handle(ack_topic(SITE, DEVICE, BED), ack("CAS", "nurse-b"))  # names the condition
    assert gate.tick() == 1
    clock.now += 601.0  # realarm_s later a new episode raises it again
    gate.handle(TOPIC, second.to_json().encode())
    assert gate.tick() == 1
    got = reports(outbox)
    assert [(r["phase"], r["inactivation"], r["by"]) for r in got] == [
        ("start", "enabled", ""),
        ("update", "alert-acknowledged", "nurse-b"),
        ("update", "enabled", ""),  # raised again: no longer acknowledged
    ]
    assert len({r["alert"] for r in got}) == 1


def test_a_condition_over_and_started_again_is_a_new_alert(tmp_path: Path) -> None:
    """A high wheeze acknowledged and over; another one later: the first alert ends and a
    new one starts under a new id (not a reactivation of the acknowledged one)."""
    clock = Clock()
    gate, outbox = intake(tmp_path / "q.sqlite", clock)
    first, second = finding_events(2, site=SITE, device_id=DEVICE, stream_id=BED, priority="high")
    gate.handle(TOPIC, first.to_json().encode())
    gate.tick()
    gate.handle(ack_topic(SITE, DEVICE, BED), ack("CAS", "nurse-b"))
    gate.tick()
    gate.handle(TOPIC, first.ended("2026-05-09T07:00:00.500Z", 4000).to_json().encode())
    gate.handle(TOPIC, second.to_json().encode())  # before the next tick saw it over
    clock.now += 1.0
    assert gate.tick() == 2
    got = reports(outbox)
    assert [(r["phase"], r["state"]) for r in got] == [
        ("start", "active"), ("update", "active"), ("end", "inactive"), ("start", "active")
    ]  # fmt: skip
    assert got[0]["alert"] == got[2]["alert"] != got[3]["alert"]


def test_a_restarted_gateway_neither_repeats_nor_loses_a_report(tmp_path: Path) -> None:
    """Two conditions reported before the restart: one with an open episode (its bed's
    retained summary lists it), one latched at the condition level (its episode over, not
    acknowledged: no bed holds it). After the restart nothing is said again; the latched
    one is taken back and its acknowledgement ends it under the same alert id."""
    clock = Clock()
    path = tmp_path / "q.sqlite"
    gate, outbox = intake(path, clock)
    wheeze = finding_events(1, site=SITE, device_id=DEVICE, stream_id=BED)[0]
    crackle = Event.onset(
        type="DAS", site=SITE, device_id=DEVICE, stream_id=BED, priority="low",
        start_utc="2026-05-09T07:00:02.000Z", start_sample=16000, confidence=0.8,
        model_id=wheeze.model_id, model_sha256=wheeze.model_sha256, quality={"score": 0.9},
    )  # fmt: skip
    gate.handle(TOPIC, wheeze.to_json().encode())
    gate.handle(TOPIC, crackle.to_json().encode())
    gate.handle(TOPIC, crackle.ended("2026-05-09T07:00:05.000Z", 40000).to_json().encode())
    assert gate.tick() == 2
    outbox.close()

    clock.now += 5.0
    gate, outbox = intake(path, clock)  # the gateway started again
    summary = {
        "name": "Bed 1",
        "location": "ICU",
        "utc": "2026-05-09T07:01:00.000Z",
        "open": [
            {
                "episode_id": wheeze.episode_id,
                "type": "Wheeze",
                "kind": "physiological",
                "priority": "medium",
                "start_utc": wheeze.start_utc,
                "key": "Wheeze",
                "latched": False,
            }
        ],
    }
    body = summary_payload(SITE, DEVICE, BED, summary).encode()
    assert gate.handle(summary_topic(SITE, DEVICE, BED), body) == "taken"
    odd = {**summary, "open": [{**summary["open"][0], "episode_id": "x-1", "type": "Gurgle",
                                "kind": "neither"}]}  # fmt: skip
    other = summary_topic(SITE, DEVICE, "bed-2")  # a row of no known kind is passed over
    assert gate.handle(other, summary_payload(SITE, DEVICE, "bed-2", odd).encode()) == "taken"
    assert gate.tick() == 0  # settling: the open one is as reported
    clock.now += 31.0
    assert gate.tick() == 0  # settled: the latched one taken back as it was
    gate.handle(ack_topic(SITE, DEVICE, BED), ack("DAS", "nurse-c"))
    assert gate.tick() == 1  # acknowledged, then over once it no longer continues
    clock.now += 61.0
    assert gate.tick() == 1
    got = reports(outbox)
    assert [(r["phase"], r["what"]) for r in got] == [
        ("start", "56018004^wheezes (CAS)^SCT"),
        ("start", "48409008^crackles (DAS)^SCT"),
        ("update", "48409008^crackles (DAS)^SCT"),
        ("end", "48409008^crackles (DAS)^SCT"),
    ]
    assert got[3]["alert"] == got[1]["alert"]
    assert got[3]["by"] == "nurse-c"
    assert list(outbox.notes()) == [f"alert/{DEVICE}/{BED}/CAS"]


def latched_and_restarted(path: Path, clock: Clock) -> tuple[Intake, Outbox]:
    """A wheeze reported and latched (its episode over, nobody acknowledged), then the
    gateway started again on the same queue: that gateway, settling, and its queue."""
    gate, outbox = intake(path, clock)
    wheeze = finding_events(1, site=SITE, device_id=DEVICE, stream_id=BED)[0]
    gate.handle(TOPIC, wheeze.to_json().encode())
    gate.handle(TOPIC, wheeze.ended("2026-05-09T07:00:09.000Z", 80000).to_json().encode())
    assert gate.tick() == 1  # start (latched at the condition level: nobody acknowledged)
    outbox.close()
    clock.now += 5.0
    return intake(path, clock)


def withdrawn_while_settling(path: Path, clock: Clock) -> tuple[Intake, Outbox]:
    """:func:`latched_and_restarted`, and the bed's summary withdrawn (its device stopped)
    while the new gateway settles."""
    gate, outbox = latched_and_restarted(path, clock)
    assert gate.handle(summary_topic(SITE, DEVICE, BED), b"") == "taken"  # the device stopped
    return gate, outbox


def device_status(gate: Intake, state: str, reason: str) -> str:
    payload = status_payload(state, SITE, DEVICE, reason)
    return gate.handle(status_topic(SITE, DEVICE), payload.encode())


@pytest.mark.parametrize(
    ("statuses", "phases"),
    [
        ([("offline", "shutdown")], ["start", "end"]),  # shut down: its streams ended
        ([("offline", "connection lost")], ["start"]),  # the will: it may still be alarming
        ([("offline", "shutdown"), ("online", "connected")], ["start"]),  # back: not known
    ],
)
def test_a_condition_of_a_device_that_shut_down_while_the_gateway_was_down_ends(
    tmp_path: Path, statuses: list[tuple[str, str]], phases: list[str]
) -> None:
    """The device shut down cleanly while the gateway was down: its beds' retained summaries
    are gone, and its retained status says it shut down (its streams, and their alarms, ended).
    The restarted gateway ends its latched condition once settled rather than taking it back
    as alarming for a device that cannot take an acknowledge. A lost connection (the last
    will), or the device back online, keeps the condition latched as it was."""
    clock = Clock()
    gate, outbox = latched_and_restarted(tmp_path / "q.sqlite", clock)
    for state, reason in statuses:
        assert device_status(gate, state, reason) == "taken"
    clock.now += 31.0
    gate.tick()
    clock.now += 60.0
    gate.tick()
    got = reports(outbox)
    assert [r["phase"] for r in got] == phases
    assert (outbox.notes() == {}) == (phases[-1] == "end")


def test_a_bed_withdrawn_while_the_restarted_gateway_settles_ends_its_conditions(
    tmp_path: Path,
) -> None:
    """A condition latched before the restart, and its device stops (its bed's summary
    withdrawn) while the restarted gateway waits for the retained summaries: the bed is gone,
    so its condition ends once the gateway has settled; it is not taken back as alarming for
    a bed that will never report again."""
    clock = Clock()
    gate, outbox = withdrawn_while_settling(tmp_path / "q.sqlite", clock)
    assert gate.tick() == 0  # settling
    clock.now += 31.0
    assert gate.tick() == 1  # settled: the gone bed's condition ends
    clock.now += 60.0
    assert gate.tick() == 0
    got = reports(outbox)
    assert [r["phase"] for r in got] == ["start", "end"]
    assert got[0]["alert"] == got[1]["alert"]
    assert outbox.notes() == {}


def test_a_bed_back_before_the_restarted_gateway_settled_keeps_its_latched_condition(
    tmp_path: Path,
) -> None:
    """Withdrawn and then listed again (its device restarted) while the gateway settles: the
    bed is there, so its latched condition is taken back as it was, not ended."""
    clock = Clock()
    gate, outbox = withdrawn_while_settling(tmp_path / "q.sqlite", clock)
    summary = {"name": "Bed 1", "location": "ICU", "utc": "2026-05-09T07:01:00.000Z", "open": []}
    listed = summary_payload(SITE, DEVICE, BED, summary)
    assert gate.handle(summary_topic(SITE, DEVICE, BED), listed.encode()) == "taken"
    clock.now += 31.0
    assert gate.tick() == 0  # taken back as reported: nothing new to say, no end
    assert [r["phase"] for r in reports(outbox)] == ["start"]
    assert list(outbox.notes()) == [f"alert/{DEVICE}/{BED}/CAS"]


def test_a_device_that_shut_down_while_the_gateway_was_down_has_its_latched_alarm_ended(
    tmp_path: Path,
) -> None:
    """Through real Mosquitto, the gateway's process and an MLLP receiver: a wheeze is
    reported (start) and latched; the gateway stops; the device shuts down cleanly (its
    retained status offline, reason shutdown); the gateway starts again and, once settled,
    reports the alert's end under the same alert id rather than keeping it latched."""
    (tmp_path / "state").mkdir(mode=0o700)
    broker, receiver = Mosquitto(tmp_path).start(), Receiver().start()
    config = gateway_yaml(tmp_path, broker.port, receiver.port, alarms=True)
    gateway, device = start_gateway(config), Device(broker.port)
    onset = finding_events(1, site=SITE, device_id=DEVICE, stream_id=BED)[0]

    def alerts() -> list[str]:
        return [t for t in receiver.accepted.values() if "ORU^R40" in t.split("\r")[0]]

    try:
        device.publish(TOPIC, onset.to_json().encode())
        device.publish(TOPIC, onset.ended("2026-05-09T07:00:09.000Z", 80000).to_json().encode())
        assert receiver.wait_for(lambda: len(alerts()) == 1, 20.0), receiver.errors
        time.sleep(1.0)  # the report's note written
        gateway.send_signal(signal.SIGTERM)
        gateway.communicate(timeout=20)
        offline = status_payload("offline", SITE, DEVICE, "shutdown").encode()
        status = status_topic(SITE, DEVICE)
        device.client.publish(status, offline, qos=1, retain=True).wait_for_publish(5.0)
        gateway = start_gateway(config)
        assert receiver.wait_for(lambda: len(alerts()) == 2, 60.0), receiver.errors
    finally:
        _, err = stop_all(gateway, device, receiver, broker)
    assert gateway.returncode == 0, err
    facets = [[seg.split("|") for seg in t.split("\r") if seg.startswith("OBX")] for t in alerts()]
    assert [f[2][5] for f in facets] == ["start", "end"]
    alert_ids = {next(s for s in t.split("\r") if s.startswith("OBR")).split("|")[3]
                 for t in alerts()}  # fmt: skip
    assert len(alert_ids) == 1


def test_the_alarm_reports_reach_the_receiver_with_who_acknowledged(tmp_path: Path) -> None:
    """Through real Mosquitto and the gateway's process to a real MLLP receiver: a bed's
    high-priority wheeze raises its condition (start), its episode ends (latched), the device
    says it took nurse-a's acknowledge (its ack message): the receiver holds start, update
    and end of one alert (a high condition does not continue past its episodes), the last
    naming nurse-a, beside the PCD-01 finding messages."""
    (tmp_path / "state").mkdir(mode=0o700)
    broker, receiver = Mosquitto(tmp_path).start(), Receiver().start()
    gateway = start_gateway(gateway_yaml(tmp_path, broker.port, receiver.port, alarms=True))
    device = Device(broker.port)
    onset = finding_events(1, site=SITE, device_id=DEVICE, stream_id=BED, priority="high")[0]

    def alerts() -> list[str]:
        return [t for t in receiver.accepted.values() if "ORU^R40" in t.split("\r")[0]]

    try:
        device.publish(TOPIC, onset.to_json().encode())
        assert receiver.wait_for(lambda: len(alerts()) == 1, 20.0), receiver.errors
        ended = onset.ended("2026-05-09T07:00:04.000Z", 32000)
        device.publish(TOPIC, ended.to_json().encode())
        assert receiver.wait_for(lambda: len(alerts()) == 2, 20.0), receiver.errors
        device.publish(ack_topic(SITE, DEVICE, BED), ack("CAS", "nurse-a"))
        assert receiver.wait_for(lambda: len(alerts()) == 3, 20.0), receiver.errors
        time.sleep(1.5)  # nothing more
    finally:
        _, err = stop_all(gateway, device, receiver, broker)
    assert gateway.returncode == 0, err
    assert receiver.errors == []
    facets = [[seg.split("|") for seg in t.split("\r") if seg.startswith("OBX")] for t in alerts()]
    assert [(f[2][5], f[3][5], f[4][5]) for f in facets] == [
        ("start", "active", "enabled"),
        ("update", "latched", "enabled"),
        ("end", "inactive", "alert-acknowledged"),
    ]
    assert facets[2][4][16] == "nurse-a"
    alert_ids = {next(s for s in t.split("\r") if s.startswith("OBR")).split("|")[3]
                 for t in alerts()}  # fmt: skip
    assert len(alert_ids) == 1
    assert len(receiver.accepted) == 5  # and the onset's and the end's PCD-01 findings
    assert len(set(receiver.received)) == len(receiver.received) == 5  # each control id once


def test_what_hl7_cannot_carry_is_set_aside_and_every_other_bed_still_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bed with a 24-character stream id is reported whole; a retained summary whose open
    alarms start in the year 1 (a time out of HL7's range) or name a type with a lone
    surrogate is set aside and counted, once: the tick goes on, and so do the other beds."""
    clock = Clock()
    long_bed = "cardiology-bed-14-stetho"
    gate, outbox = intake(tmp_path / "q.sqlite", clock, BedEntry(DEVICE, long_bed, "CCU^1^1^HOSP"))
    wheeze = finding_events(1, site=SITE, device_id=DEVICE, stream_id=long_bed, priority="low")[0]
    assert gate.handle(event_topic(SITE, DEVICE, long_bed), wheeze.to_json().encode()) == "queued"
    row = {"type": "apnoea", "kind": "physiological", "priority": "high", "latched": False,
           "start_utc": "0001-01-01T00:00:00+01:00", "key": "apnoea"}  # fmt: skip
    summary = {"name": "Bed 1", "location": "ICU", "utc": "2026-05-09T07:01:00.000Z",
               "open": [{**row, "episode_id": "year-one"},
                        {**row, "episode_id": "surrogate", "type": "Gurgle\ud800",
                         "kind": "technical", "key": "Gurgle\ud800",
                         "start_utc": "2026-05-09T07:00:00.000Z"}]}  # fmt: skip
    body = summary_payload(SITE, DEVICE, BED, summary).encode()
    assert gate.handle(summary_topic(SITE, DEVICE, BED), body) == "taken"
    assert gate.tick() == 1  # the long bed's wheeze; the two that cannot be built set aside
    assert gate.counts["refused:invalid"] == 0
    assert gate.alarms is not None
    assert gate.alarms.counts["unreportable"] == 2
    said = [r.getMessage() for r in caplog.records if "cannot be reported" in r.getMessage()]
    assert len(said) == 2
    assert "Gurgle\\ud800" in said[1]  # escaped: a UTF-8 log file takes the line
    assert all(line.encode("utf-8") for line in said)
    assert gate.tick() == 0  # set aside, said once
    clock.now += 300.0
    assert gate.tick() == 1  # the long bed's wheeze escalates as any other
    [first, second] = reports(outbox)
    assert (first["phase"], second["phase"]) == ("start", "escalate")
    text = outbox._db.execute("SELECT message FROM outbox WHERE key LIKE 'alert/%'").fetchone()[0]
    assert f"{DEVICE}.{long_bed}^LUNGWATCH" in text  # the equipment names the bed whole


def test_a_devices_status_names_its_equipment_in_what_follows(tmp_path: Path) -> None:
    """The EUI-64 a device's status gives is its equipment identifier (OBX-18) from then on;
    a status with a malformed one, or for another site, is refused and changes nothing; the
    alert of a breathing condition carries the bed's latest rate and limits as its source."""
    from lungwatch.events import respiration_payload, respiration_topic, status_payload

    clock = Clock()
    gate, outbox = intake(tmp_path / "q.sqlite", clock)
    status = f"lungwatch/v1/{SITE}/{DEVICE}/status"
    online = status_payload("online", SITE, DEVICE, "connected", eui64="001B63FFFE8445E6")
    assert gate.handle(status, online.encode()) == "taken"
    forged = status_payload("online", SITE, DEVICE, "connected").replace(
        '"reason"', '"eui64":"001b63fffe8445e6\\r","reason"')  # fmt: skip
    assert gate.handle(status, forged.encode()) == "refused:invalid"
    other = status_payload("online", "ward-9", DEVICE, "connected", eui64="0012A3FFFE4567AB")
    assert gate.handle(status, other.encode()) == "refused:invalid"
    reading = respiration_payload(
        SITE, DEVICE, BED,
        {"state": "ok", "rate_bpm": 31.0, "confidence": 0.8, "breaths": 15, "window_s": 30.0,
         "age_band": "adult", "reason": "", "low_bpm": 9.0, "high_bpm": 24.0,
         "utc": "2026-05-09T07:00:00.000Z"},
    )  # fmt: skip
    assert gate.handle(respiration_topic(SITE, DEVICE, BED), reading.encode()) == "queued"
    fast = ListedEpisode("fast-1", DEVICE, BED, "tachypnoea", "physiological", "medium",
                         "ongoing", "2026-05-09T07:00:00.000Z", {"key": "tachypnoea"})  # fmt: skip
    assert gate.alarms is not None
    gate.alarms.book.take(fast, clock.now)
    assert gate.tick() == 1
    texts = [t for (t,) in outbox._db.execute("SELECT message FROM outbox ORDER BY seq")]
    assert all("^001B63FFFE8445E6^EUI-64" in t for t in texts), texts
    again, _ = intake(tmp_path / "q.sqlite", clock)  # a restart knows it before any status
    assert again.bed(DEVICE, BED).equipment == "001B63FFFE8445E6"
    alert = [seg.split("|") for seg in texts[-1].split("\r") if seg.startswith("OBX")]
    assert alert[0][3] == "196648^MDC_EVT_HI^MDC"
    assert alert[1][3:9] == ["151562^MDC_RESP_RATE^MDC", "1.1.1.1.2", "31.0",
                             "264928^MDC_DIM_RESP_PER_MIN^MDC", "9-24", "H"]  # fmt: skip


def test_who_acknowledged_is_named_whichever_comes_first_the_summary_or_the_ack(
    tmp_path: Path,
) -> None:
    """A device that takes an acknowledge publishes its ack message (naming the nurse) and
    the bed's summary without the latched alarm, on two topics: whichever arrives first, and
    whether or not a tick runs between them, the acknowledgement's report and the alert's end
    name the nurse (OBX-16), once each; it was empty when the summary came first."""
    row = {"episode_id": "e-latched", "type": "Wheeze", "kind": "physiological",
           "priority": "low", "start_utc": "2026-05-09T07:00:00.000Z", "key": "Wheeze",
           "latched": True}  # fmt: skip
    summary = {"name": "Bed 1", "location": "ICU", "utc": "2026-05-09T07:01:00.000Z"}
    with_row = summary_payload(SITE, DEVICE, BED, {**summary, "open": [row]}).encode()
    without = summary_payload(SITE, DEVICE, BED, {**summary, "open": []}).encode()
    stopic, atopic = summary_topic(SITE, DEVICE, BED), ack_topic(SITE, DEVICE, BED)
    for order in ("summary, tick, ack", "summary, ack, tick", "ack, summary, tick"):
        clock = Clock()
        gate, outbox = intake(tmp_path / f"{order}.sqlite", clock)
        assert gate.handle(stopic, with_row) == "taken"
        assert gate.tick() == 1  # start
        for step in order.split(", "):
            if step == "summary":
                assert gate.handle(stopic, without) == "taken"
            elif step == "ack":
                assert gate.handle(atopic, ack("CAS", "nurse-c")) == "taken"
            else:
                gate.tick()
        clock.now += 5.0
        gate.tick()
        clock.now += 61.0  # continues_s: the acknowledged finding is over
        gate.tick()
        got = [(r["phase"], r["state"], r["inactivation"], r["by"]) for r in reports(outbox)]
        assert got == [
            ("start", "latched", "enabled", ""),
            ("update", "active", "alert-acknowledged", "nurse-c"),
            ("end", "inactive", "alert-acknowledged", "nurse-c"),
        ], (order, got)
