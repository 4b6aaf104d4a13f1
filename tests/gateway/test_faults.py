"""The hospital feed through a fault sequence, end to end: a real ``lungwatch run`` streams
two beds (one with the 24-character stream id ``cardiology-bed-14-stetho``) through Mosquitto
to the gateway's process, which delivers to python-hl7's own MLLP server (not this project's
code) while that receiver is killed for 30 s, the gateway is SIGKILLed and started again, the
receiver answers AE then AA, AR (set aside, then ``--resend``), a wrong MSA-2, stalls, and
trickles its reply a byte a second. What the device published (read off the broker) is
compared with what the receiver accepted, per bed: nothing lost, nothing accepted under two
control ids, each bed's readings in order; every message conformant; PCD-04 one alert per
condition episode, each alert's reports a life (start first, end last: the device's stop
ends its beds' conditions)."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from gateway.alarms import ACK_NAME_WAIT_S, SETTLE_S
from gateway.hl7 import hl7_time
from gateway.outbox import Outbox
from gateway.service import ALARM_TICK_S, is_evidence
from lungwatch.events import Event
from lungwatch.mqtt import import_paho
from tests.brokers import Mosquitto
from tests.edge.runtime_helpers import (
    FOUND,
    MIXED,
    SITE,
    config_mapping,
    lungwatch,
    mqtt_sections,
    record_path,
    start_lungwatch,
    stream,
    write_config,
)
from tests.gateway.pyhl7_receiver import Hl7Receiver
from tests.gateway.test_service import start_gateway

LONG_BED = "cardiology-bed-14-stetho"
BEDS = (LONG_BED, "bed-2")


class Published:
    """What the device published, read off the broker: each bed's readings and the findings
    the hospital is sent (onsets and ends; not the evidence inside an episode)."""

    def __init__(self, port: int) -> None:
        mqtt = import_paho()
        self.readings: dict[str, set[str]] = collections.defaultdict(set)  # bed -> HL7 times
        self.findings: collections.Counter[tuple[str, str, bool]] = collections.Counter()
        self.lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"test-published-{port}")  # fmt: skip
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(f"lungwatch/v1/{SITE}/+/+/event", 1),
                               (f"lungwatch/v1/{SITE}/+/+/respiration", 1)])  # fmt: skip
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if not message.payload:
            return
        body = json.loads(message.payload)
        bed = message.topic.split("/")[4]
        with self.lock:
            if message.topic.endswith("/respiration"):
                self.readings[bed].add(hl7_time(body["utc"]))
                return
            event = Event.from_dict(body)
            if event.state != "ongoing" and not is_evidence(event):
                ended = event.state == "ended"
                self.findings[(bed, hl7_time(event.start_utc), ended)] += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def accepted_pcd01(texts: list[str]) -> tuple[dict[str, list[str]], collections.Counter]:  # type: ignore[type-arg]
    """Each bed's readings (OBX-14, in acceptance order) and the findings (bed, OBR-7, ended)
    among the accepted PCD-01 messages."""
    readings: dict[str, list[str]] = collections.defaultdict(list)
    findings: collections.Counter[tuple[str, str, bool]] = collections.Counter()
    for text in texts:
        segments = [s.split("|") for s in text.split("\r") if s]
        if segments[0][8] != "ORU^R01^ORU_R01":
            continue
        obx = [s for s in segments if s[0] == "OBX"]
        bed = obx[0][18].split("^")[0].split(".", 1)[1]  # the MDS row: <device>.<stream>
        metric = obx[3]
        obr = next(s for s in segments if s[0] == "OBR")
        if metric[3].startswith(("151562^", "respiration-state^")):
            readings[bed].append(metric[14])
        else:
            findings[(bed, obr[7], len(obr) > 8 and bool(obr[8]))] += 1
    return readings, findings


def alert_lives(texts: list[str]) -> dict[str, list[str]]:
    """Each alert's phases (OBR-3 -> facet 3's values), in acceptance order."""
    lives: dict[str, list[str]] = collections.defaultdict(list)
    for text in texts:
        segments = [s.split("|") for s in text.split("\r") if s]
        if segments[0][8] != "ORU^R40^ORU_R40":
            continue
        alert = next(s for s in segments if s[0] == "OBR")[3]
        lives[alert].append([s for s in segments if s[0] == "OBX"][2][5])
    return lives


def drained(queue: Path, quiet_s: float, timeout_s: float) -> bool:
    """The gateway's HL7 queue holds nothing queued for ``quiet_s`` in a row."""
    until, since = time.monotonic() + timeout_s, None
    while time.monotonic() < until:
        outbox = Outbox(queue)
        try:
            empty = outbox.counts()["queued"] == 0
        finally:
            outbox.close()
        since = (since or time.monotonic()) if empty else None
        if since is not None and time.monotonic() - since >= quiet_s:
            return True
        time.sleep(0.2)
    return False


def test_nothing_is_lost_duplicated_or_reordered_through_the_fault_sequence(
    tmp_path: Path,
) -> None:
    records = [record_path(FOUND), record_path(MIXED)]
    (tmp_path / "state").mkdir(mode=0o700)
    queue = tmp_path / "state" / "gateway.sqlite"
    broker, receiver = Mosquitto(tmp_path).start(), Hl7Receiver().start()
    published = Published(broker.port)
    gateway_config = tmp_path / "gateway.yaml"
    gateway_config.write_text(json.dumps({
        "site": SITE,
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "connect_timeout_s": 5.0},
        "hl7": {"host": "127.0.0.1", "port": receiver.port, "sending_eui64": "00163EFFFE000001",
                "ack_timeout_s": 2.0, "backoff_min_s": 0.05, "backoff_max_s": 0.5,
                "max_refusals": 3},
        "rate_every_s": 0.0, "alarm_reports": True, "queue": str(queue),
        "beds": [{"device_id": "edge-t", "stream_id": bed, "location": f"ICU^1^{i}^HOSP"}
                 for i, bed in enumerate(BEDS, 1)],
    }), encoding="utf-8")  # fmt: skip
    device_config = write_config(tmp_path / "run.yaml", config_mapping(
        tmp_path,
        [stream(b, path, loop=True, realtime=True) for b, path in zip(BEDS, records, strict=True)],
        **mqtt_sections(tmp_path, broker.port), respiration_publish_s=2.0,
        equipment_eui64="00:1b:63:84:45:e6",
    ))  # fmt: skip
    gateway = start_gateway(gateway_config)
    device = start_lungwatch(device_config, tmp_path / "run.log")
    timeline: list[str] = []

    def phase(behaviour: str, seconds: float, until: Any = None) -> None:
        """The receiver behaves so for ``seconds`` (or, with ``until``, until that holds, at
        most 30 s: a one-shot behaviour met its message)."""
        timeline.append(f"{behaviour} {seconds:g} s")
        receiver.behaviour = behaviour
        time.sleep(seconds)
        deadline = time.monotonic() + 30.0
        while until is not None and not until() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert until is None or until(), f"{behaviour}: no message met it within 30 s"
        assert gateway.poll() is None, gateway.communicate()[1][-3000:]

    def answered(code: str) -> bool:
        with receiver.lock:
            return any(code in codes for codes in receiver.answered.values())

    try:
        phase("AA", 10.0)
        receiver.kill()  # the hospital's receiver down for 30 s
        phase("AA", 30.0)
        receiver.start()
        phase("AA", 5.0)
        gateway.send_signal(signal.SIGKILL)  # the gateway's machine fails
        gateway.wait(10)
        time.sleep(3.0)
        restarted = time.monotonic()
        gateway = start_gateway(gateway_config)
        phase("AA", 5.0)
        phase("AE-then-AA", 6.0, until=lambda: answered("AE"))
        phase("AR-once", 0.0, until=lambda: receiver.behaviour == "AA")
        phase("wrong-MSA-2", 0.0, until=lambda: receiver.behaviour == "AA")
        phase("AA", 3.0)
        phase("stalled", 5.0)
        phase("trickle", 5.0)
        phase("AA", 5.0)
        device.send_signal(signal.SIGTERM)
        assert device.wait(60) == 0, (tmp_path / "run.log").read_text()[-3000:]
        # the restarted gateway reports no end while it settles, and an end nobody acknowledged
        # waits a moment for its name: the device's last ends are queued only after both
        time.sleep(max(0.0, restarted + SETTLE_S + ACK_NAME_WAIT_S + 2 * ALARM_TICK_S
                       - time.monotonic()))  # fmt: skip
        assert drained(queue, 3.0, 90.0), "the queue did not drain"
        assert receiver.rejected, "no message was rejected (AR)"
        resent = lungwatch("gateway", "--config", str(gateway_config), "--resend", "all")
        assert resent.returncode == 0, resent.stderr
        assert drained(queue, 3.0, 30.0), "the resent message was not delivered"
    finally:
        published.close()
        if device.poll() is None:
            device.kill()
        gateway.send_signal(signal.SIGTERM)
        try:
            _, err = gateway.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            gateway.kill()
            _, err = gateway.communicate()
        receiver.stop()
        broker.stop()
    record = [(c, receiver.answered.get(c), _what(text)) for c, text in receiver.arrivals]
    (tmp_path / "arrivals.json").write_text(
        json.dumps({"timeline": timeline, "arrivals": record}, indent=1)
    )
    assert gateway.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert receiver.errors == [], receiver.errors[:5]  # every message conformant
    texts = list(receiver.accepted.values())
    readings, findings = accepted_pcd01(texts)
    for bed in BEDS:
        expected, got = published.readings[bed], readings[bed]
        assert expected, f"{bed}: the device published no reading"
        assert set(got) == expected, (bed, sorted(expected - set(got)), timeline)  # 0 lost
        assert len(got) == len(set(got)), f"{bed}: a reading accepted twice"  # 0 duplicated
        resent = {text for c, text in receiver.arrivals if c in receiver.rejected}
        in_order = reading_times(bed, [t for t in texts if t not in resent])
        assert in_order == sorted(in_order), (bed, timeline)  # order kept per bed
    assert findings == published.findings, (findings - published.findings,
                                            published.findings - findings)  # fmt: skip
    lives = alert_lives(texts)
    for alert, life in lives.items():
        assert life[0] == "start", (alert, life)
        assert "end" not in life[:-1], (alert, life)  # nothing reported after its end
        assert life[-1] == "end", (alert, life)  # the device stopped: its beds' alerts end
        assert len(life) <= 8, (alert, life)  # a condition's changes, not its events
    assert set(receiver.answered[receiver.rejected[0]]) >= {"AR", "AA"}  # resent, accepted
    assert LONG_BED in readings  # the 24-character stream id delivered whole


def _what(text: str) -> str:
    """An arrival in a few words: kind, bed, time."""
    segments = [s.split("|") for s in text.split("\r") if s]
    obx = [s for s in segments if s[0] == "OBX"]
    obr = next(s for s in segments if s[0] == "OBR")
    if segments[0][8].startswith("ORU^R40"):
        return f"alert {obr[3].split('^')[0]} {obx[2][5]}"
    bed = obx[0][18].split("^")[0]
    return f"{bed} {obx[3][3].split('^')[0]} {obx[3][14]} obr7={obr[7]}"


def reading_times(bed: str, texts: list[str]) -> list[str]:
    """The bed's readings' times (OBX-14) in the order of ``texts``."""
    times = []
    for text in texts:
        segments = [s.split("|") for s in text.split("\r") if s]
        if segments[0][8] != "ORU^R01^ORU_R01":
            continue
        obx = [s for s in segments if s[0] == "OBX"]
        if obx[0][18].split("^")[0].split(".", 1)[1] == bed and obx[3][3].startswith(
                ("151562^", "respiration-state^")):  # fmt: skip
            times.append(obx[3][14])
    return times
