"""FHIR R4 Observations (gateway.fhir): each validates with fhir.resources and carries the
codes of what it reports; sent as conditional updates to a real HTTP endpoint that validates
them, nothing is lost while it is down and a finding's end updates its onset's resource."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from gateway.config import FhirConfig, GatewayConfig
from gateway.fhir import FhirError, FhirTransport, finding_observation, rate_observation
from gateway.hl7 import Bed
from gateway.outbox import Courier, CourierConfig, Outbox
from gateway.service import Intake, fhir_route
from lungwatch.config import from_mapping
from lungwatch.errors import ConfigError
from lungwatch.events import event_topic, respiration_payload, respiration_topic
from tests.brokers import finding_events
from tests.gateway.fhir_server import FhirServer

SITE, DEVICE, BED = "ward-3", "dev-1", "bed-1"
WHERE = Bed(DEVICE, BED, location="ICU^1^1^HOSP", patient_id="12345^^^HOSP^MR", site=SITE)
FAST = CourierConfig(backoff_min_s=0.05, backoff_max_s=0.2, max_refusals=3)


def reading(i: int, state: str = "ok") -> dict[str, Any]:
    return {"state": state, "rate_bpm": 12.0 + i % 9 if state == "ok" else None,
            "low_bpm": 9.0, "high_bpm": 24.0, "reason": "" if state == "ok" else "too few breaths",
            "utc": f"2026-11-27T03:{i // 60:02d}:{i % 60:02d}.000Z"}  # fmt: skip


def test_a_rate_is_a_final_vital_sign_in_per_minute_with_its_range_and_patient() -> None:
    body = json.loads(rate_observation(reading(3), WHERE, "respiration/dev-1/bed-1/t"))
    assert body["status"] == "final"
    assert body["meta"]["profile"] == ["http://hl7.org/fhir/StructureDefinition/resprate"]
    flag = body["interpretation"][0]["coding"][0]
    assert (flag["system"], flag["code"]) == (
        "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "N")  # fmt: skip
    fast = json.loads(rate_observation({**reading(3), "rate_bpm": 30.0}, WHERE, "k"))
    assert fast["interpretation"][0]["coding"][0]["code"] == "H"
    assert fast["device"]["identifier"]["value"] == f"{SITE}/{DEVICE}/{BED}"
    mrn = json.loads(rate_observation(reading(3), WHERE, "k", "https://hospital.example/mrn"))
    assert mrn["subject"]["identifier"]["system"] == "https://hospital.example/mrn"
    codes = {(c["system"], c["code"]) for c in body["code"]["coding"]}
    assert codes == {("http://loinc.org", "9279-1"), ("urn:iso:std:iso:11073:10101", "151562")}
    assert body["category"][0]["coding"][0]["code"] == "vital-signs"
    ucum = "http://unitsofmeasure.org"
    assert body["valueQuantity"] == {"value": 15.0, "unit": "/min", "system": ucum, "code": "/min"}
    [limits] = body["referenceRange"]
    assert (limits["low"]["value"], limits["high"]["value"]) == (9.0, 24.0)
    subject = {"system": "urn:lungwatch:patient:HOSP", "value": "12345",
               "assigner": {"display": "HOSP"}}  # fmt: skip
    assert body["subject"] == {"identifier": subject}
    assert body["identifier"] == [{"system": "urn:lungwatch:observation",
                                   "value": "respiration/dev-1/bed-1/t"}]  # fmt: skip
    assert body["effectiveDateTime"].startswith("2026-11-27T03:00:03")
    none = json.loads(rate_observation(reading(4, "not_assessable"), Bed(DEVICE, BED), "k"))
    assert "valueQuantity" not in none
    assert none["dataAbsentReason"]["coding"][0]["code"] == "unknown"
    assert "not_assessable: too few breaths" in none["note"][0]["text"]
    assert "subject" not in none
    with pytest.raises(FhirError, match="not a time"):
        rate_observation({**reading(1), "utc": None}, WHERE, "k")


def test_a_finding_is_present_preliminary_then_final_with_its_end() -> None:
    onset = finding_events(1, site=SITE, device_id=DEVICE, stream_id=BED)[0]
    first = json.loads(finding_observation(onset.to_dict(), WHERE, "episode/x"))
    assert first["status"] == "preliminary"
    assert first["code"]["coding"][0] == {"system": "http://snomed.info/sct", "code": "56018004",
                                          "display": "Wheezing"}  # fmt: skip
    assert first["valueCodeableConcept"]["coding"][0]["code"] == "52101004"
    ended = onset.ended("2026-05-09T07:00:03.000Z", 24000)
    last = json.loads(finding_observation(ended.to_dict(), WHERE, "episode/x"))
    assert last["status"] == "final"
    assert last["effectivePeriod"]["end"].startswith("2026-05-09T07:00:03")
    technical = {"type": "off_body", "kind": "technical", "state": "onset",
                 "start_utc": "2026-11-27T03:10:00Z"}  # fmt: skip
    body = json.loads(finding_observation(technical, WHERE, "episode/y"))
    assert body["code"]["coding"][0]["code"] == "signal-quality"
    assert body["valueCodeableConcept"]["coding"][0]["code"] == "off_body"


def courier_thread(outbox: Outbox, server: FhirServer, token: str | None = None):  # type: ignore[no-untyped-def]
    courier = Courier(outbox, FhirTransport(server.base_url, 2.0, token), FAST)
    stop = threading.Event()
    thread = threading.Thread(target=courier.run, args=(stop,), daemon=True)
    thread.start()
    return courier, stop, thread


def test_an_endpoint_that_goes_down_and_back_loses_nothing(tmp_path: Path) -> None:
    """20 readings and 10 episodes (onset and end) through the intake; the endpoint stops
    after some and starts again on the same port: 30 resources, each created once, every
    finding final with its end; nothing refused, every body valid."""
    server = FhirServer().start()
    config = GatewayConfig(site=SITE, fhir=FhirConfig(base_url=server.base_url),
                           rate_every_s=0.0)  # fmt: skip
    outbox = Outbox(tmp_path / "fhir.sqlite")
    intake = Intake(config, [fhir_route(outbox)])
    courier, stop, thread = courier_thread(outbox, server, token="t0ken")
    events = finding_events(10, site=SITE, device_id=DEVICE, stream_id=BED)
    topic, rtopic = event_topic(SITE, DEVICE, BED), respiration_topic(SITE, DEVICE, BED)
    try:
        for i in range(10):
            assert intake.handle(topic, events[i].to_json().encode()) == "queued"
            payload = respiration_payload(SITE, DEVICE, BED, reading(i))
            assert intake.handle(rtopic, payload.encode()) == "queued"
        assert server.wait_for(lambda: server.created >= 10, 10.0)
        server.stop()  # down
        for i in range(10):
            ended = events[i].ended(f"2026-05-09T07:00:{i + 2:02d}.500Z", 8000 * i + 20000)
            assert intake.handle(topic, ended.to_json().encode()) == "queued"
            payload = respiration_payload(SITE, DEVICE, BED, reading(10 + i))
            assert intake.handle(rtopic, payload.encode()) == "queued"
        threading.Event().wait(0.5)
        assert courier.stats["retries"] >= 1
        server.start()  # back, the same port
        assert server.wait_for(lambda: server.created == 30 and server.updated == 10, 20.0), (
            server.created, server.updated, server.invalid)  # fmt: skip
    finally:
        stop.set()
        thread.join(5.0)
        server.stop()
    assert server.invalid == []
    assert outbox.counts() == {"queued": 0, "sent": 40, "refused": 0}
    findings = [
        r for r in server.resources.values() if r["category"][0]["coding"][0]["code"] == "exam"
    ]
    assert len(findings) == 10
    assert all(r["status"] == "final" and "end" in r["effectivePeriod"] for r in findings)
    assert set(server.tokens) == {"Bearer t0ken"}


def test_a_refused_resource_is_set_aside_and_a_busy_server_is_tried_again(tmp_path: Path) -> None:
    server = FhirServer().start()
    config = GatewayConfig(site=SITE, fhir=FhirConfig(base_url=server.base_url), rate_every_s=0)
    outbox = Outbox(tmp_path / "fhir.sqlite")
    intake = Intake(config, [fhir_route(outbox)])
    rtopic = respiration_topic(SITE, DEVICE, BED)
    for i in range(3):
        intake.handle(rtopic, respiration_payload(SITE, DEVICE, BED, reading(i)).encode())
    busy: list[str] = []

    def answer(identifier: str) -> int | None:
        if identifier.endswith("03:00:00.000Z"):
            return 422  # never takes this one
        if identifier.endswith("03:00:01.000Z") and len(busy) < 2:
            busy.append(identifier)
            return 503
        return None

    server.answer = answer
    _, stop, thread = courier_thread(outbox, server)
    try:
        assert server.wait_for(lambda: server.created == 2, 10.0)
    finally:
        stop.set()
        thread.join(5.0)
        server.stop()
    assert len(busy) == 2  # 503 twice, then taken
    assert outbox.counts() == {"queued": 0, "sent": 2, "refused": 1}
    [(key, _, reply)] = outbox.refusals()
    assert key.endswith("03:00:00.000Z")
    assert reply.startswith("HTTP 422")


def test_the_fhir_settings_are_checked(tmp_path: Path) -> None:
    plain_http = {"site": SITE, "fhir": {"base_url": "http://fhir.hospital/r4"}}
    with pytest.raises(ConfigError, match="base_url"):
        from_mapping(GatewayConfig, plain_http)
    token = tmp_path / "token"
    token.write_text("secret\n")
    os.chmod(token, 0o644)
    settings = FhirConfig(base_url="https://fhir.hospital/r4", token_file=str(token))
    with pytest.raises(ConfigError, match="chmod 600"):
        settings.token()
    os.chmod(token, 0o600)
    assert settings.token() == "secret"
    with pytest.raises(ConfigError, match="hl7"):
        from_mapping(GatewayConfig, {"site": SITE})
