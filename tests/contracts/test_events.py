"""Tests of lungwatch.events: the event schema (docs/events.md), its JSON form and the topics."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pytest

from edge.bed import quality
from lungwatch.events import (
    DEFAULT_PRIORITIES,
    PHYSIOLOGICAL_TYPES,
    SOUND_TYPES,
    TECHNICAL_TYPES,
    Event,
    EventError,
    Respiration,
    Status,
    event_topic,
    format_utc,
    kind_of,
    metrics_payload,
    metrics_topic,
    parse_utc,
    status_payload,
    status_topic,
)
from lungwatch.labels import EVENT_LABELS

SHA256 = "0123456789abcdef" * 4
T0 = "2026-05-09T07:35:25.123Z"
T1 = "2026-05-09T07:35:27.003Z"


def wheeze(**changes: Any) -> Event:
    values: dict[str, Any] = {
        "type": "Wheeze",
        "site": "ward-3",
        "device_id": "dev-1",
        "stream_id": "bed-1",
        "start_utc": T0,
        "start_sample": 16000,
        "confidence": 0.91,
        "model_id": "edge-logmel-v1",
        "model_sha256": SHA256,
        "quality": {"score": 0.98, "rms_dbfs": -45.0},
    }
    return Event.onset(**{**values, **changes})


def off_body(**changes: Any) -> Event:
    values = {"type": "off_body", "site": "ward-3", "device_id": "dev-1", "stream_id": "bed-1"}
    return Event.onset(**{**values, "start_utc": T0, "start_sample": 0, **changes})


def test_physiological_lifecycle_round_trips_through_json() -> None:
    onset = wheeze()
    ended = onset.ended(T1, end_sample=31040, confidence=0.88)
    for event in (onset, onset.ongoing(confidence=0.95), ended):
        assert Event.from_json(event.to_json()) == event
    assert (onset.kind, onset.state, onset.end_utc) == ("physiological", "onset", None)
    assert (ended.state, ended.end_utc, ended.end_sample) == ("ended", T1, 31040)
    assert len({onset.id, ended.id}) == 2, "each message has its own id (dedup key)"
    assert onset.episode_id == ended.episode_id


def test_json_carries_every_schema_field_in_order() -> None:
    body = json.loads(wheeze().to_json())
    assert list(body) == [
        "id", "episode_id", "schema_version", "device_id", "site", "stream_id", "type",
        "snomed_ct", "kind", "priority", "state", "start_utc", "end_utc", "start_sample",
        "end_sample", "confidence", "model_id", "model_sha256", "quality", "detail",
    ]  # fmt: skip
    assert (body["schema_version"], body["snomed_ct"]) == (1, "56018004")
    assert (body["priority"], body["end_utc"]) == ("medium", None)


def test_to_dict_is_a_copy_the_event_does_not_share() -> None:
    event = off_body(detail={"reason": {"rms_dbfs": -80.0}}, quality={"score": 0.1})
    body = event.to_dict()
    assert body == {**dataclasses.asdict(event), "snomed_ct": None}
    body["quality"]["score"] = 1.0
    body["detail"]["reason"]["rms_dbfs"] = 0.0
    assert event.quality == {"score": 0.1}
    assert event.detail == {"reason": {"rms_dbfs": -80.0}}


@pytest.mark.parametrize(
    ("event_type", "code"),
    [("Wheeze", "56018004"), ("Fine Crackle", "48409008"), ("Coarse Crackle", "48409008"),
     ("Stridor", "70407001"), ("Rhonchi", None), ("Wheeze+Crackle", None),
     ("apnoea", "1023001"), ("tachypnoea", "271823003"), ("bradypnoea", "86684002")],
)  # fmt: skip
def test_snomed_codes_come_from_the_label_table(event_type: str, code: str | None) -> None:
    event = wheeze(type=event_type)
    assert event.snomed_ct == code
    assert json.loads(event.to_json())["snomed_ct"] == code


def test_technical_event_needs_no_model_and_round_trips() -> None:
    gap = off_body(type="signal_gap").ended(T0, end_sample=400, detail={"missing_samples": 400})
    assert (gap.kind, gap.snomed_ct, gap.priority) == ("technical", None, "low")
    assert Event.from_json(gap.to_json()) == gap
    assert off_body().priority == "medium"


def test_quality_measures_fit_the_quality_field() -> None:
    noise = np.random.default_rng(0).normal(0, 0.05, 16000)
    event = wheeze(quality=quality.measure(noise, 8000).to_dict())
    assert Event.from_json(event.to_json()).quality["score"] == event.quality["score"]


def test_every_type_has_a_kind_and_a_default_priority() -> None:
    assert set(SOUND_TYPES) == set(EVENT_LABELS) - {"Normal"}
    assert set(PHYSIOLOGICAL_TYPES) == set(SOUND_TYPES) | {"apnoea", "tachypnoea", "bradypnoea"}
    for event_type in PHYSIOLOGICAL_TYPES + TECHNICAL_TYPES:
        assert DEFAULT_PRIORITIES[event_type] in ("high", "medium", "low")
        assert kind_of(event_type) in ("physiological", "technical")
    assert DEFAULT_PRIORITIES["Stridor"] == "high"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"confidence": 1.5}, "event.confidence must be a number in [0, 1], got 1.5"),
        ({"confidence": None}, "event.confidence must be a number in [0, 1], got None"),
        ({"priority": "urgent"}, "event.priority must be one of high, medium, low"),
        ({"state": "begun"}, "event.state must be one of onset, ongoing, ended"),
        ({"start_utc": "2026-05-09 07:35:25"}, "event.start_utc must be UTC ISO-8601"),
        ({"start_utc": "2026-13-09T07:35:25Z"}, "event.start_utc must be UTC ISO-8601"),
        ({"id": "not-a-uuid"}, "event.id must be a UUID4"),
        ({"kind": "technical"}, "event.kind must be 'physiological' for type 'Wheeze'"),
        ({"stream_id": "bed/1"}, "event.stream_id must be 1..64 printable"),
        ({"site": "+"}, "event.site must be"),
        ({"type": "Sneeze"}, "event.type must be one of"),
        ({"quality": {"score": float("nan")}}, "event.quality.score must be a number"),
        ({"model_sha256": "ABC"}, "event.model_sha256 must be 64 lowercase hex digits"),
        ({"model_id": None}, "event.model_id must be printable text of 1..256 characters"),
        ({"end_utc": T1}, "event.end_utc must be null while the state is 'onset'"),
        ({"start_sample": -1}, "event.start_sample must be null or an integer >= 0"),
        ({"start_sample": True}, "event.start_sample must be null or an integer >= 0"),
        ({"schema_version": 2}, "event.schema_version must be 1"),
        ({"detail": {"x": object()}}, "event.detail must be JSON-safe"),
    ],
)
def test_invalid_fields_are_named(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(EventError, match="^" + re.escape(message)):
        wheeze(**changes)


def test_ended_span_is_checked() -> None:
    onset = wheeze()
    with pytest.raises(EventError, match=re.escape("event.end_utc must be at or after start_utc")):
        onset.ended("2026-05-09T07:35:25.000Z", end_sample=17000)
    with pytest.raises(
        EventError, match=re.escape("event.end_sample must be an integer >= start_sample")
    ):
        onset.ended(T1, end_sample=100)
    with pytest.raises(EventError, match=re.escape("event.end_utc must be UTC ISO-8601")):
        onset.ended(None, end_sample=17000)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda body: body.pop("priority"), "event.priority is missing"),
        (lambda body: body.update(colour="red"), "event has unknown field 'colour'"),
        (lambda body: body.update(snomed_ct="12345"), "event.snomed_ct must be '56018004'"),
        (lambda body: body.update(confidence="0.9"), "event.confidence must be a number"),
    ],
)
def test_from_json_rejects_bad_documents(mutate: Any, message: str) -> None:
    body = json.loads(wheeze().to_json())
    mutate(body)
    with pytest.raises(EventError, match="^" + re.escape(message)):
        Event.from_json(json.dumps(body))


def test_from_json_rejects_non_objects() -> None:
    with pytest.raises(EventError, match="event is not valid JSON"):
        Event.from_json("{not json")
    with pytest.raises(EventError, match="event must be a JSON object, got list"):
        Event.from_json("[1, 2]")


def test_topics() -> None:
    assert event_topic("ward-3", "dev-1", "bed-1") == "lungwatch/v1/ward-3/dev-1/bed-1/event"
    assert status_topic("ward-3", "dev-1") == "lungwatch/v1/ward-3/dev-1/status"
    assert metrics_topic("ward-3", "dev-1") == "lungwatch/v1/ward-3/dev-1/metrics"
    assert wheeze().topic == "lungwatch/v1/ward-3/dev-1/bed-1/event"


@pytest.mark.parametrize("segment", ["", "a/b", "+", "bed#1", "$SYS", "x" * 65, "tab\tbed", 7])
def test_bad_topic_segments_are_refused(segment: Any) -> None:
    with pytest.raises(EventError, match=re.escape("stream_id must be 1..64 printable")):
        event_topic("ward-3", "dev-1", segment)
    with pytest.raises(EventError, match="site must be"):
        status_topic(segment, "dev-1")


def test_status_and_metrics_payloads() -> None:
    online = json.loads(status_payload("online", "ward-3", "dev-1", "connected"))
    assert (online["state"], online["device_id"]) == ("online", "dev-1")
    assert parse_utc(online["utc"]).tzinfo is timezone.utc
    with pytest.raises(EventError, match=re.escape("status.state must be")):
        status_payload("asleep", "ward-3", "dev-1", "x")
    metrics = json.loads(metrics_payload("ward-3", "dev-1", "bed-1", {"frames": 10}))
    assert (metrics["stream_id"], metrics["metrics"]) == ("bed-1", {"frames": 10})
    with pytest.raises(EventError, match="metrics must be JSON numbers"):
        metrics_payload("ward-3", "dev-1", "bed-1", {"latency_ms": float("nan")})


def test_utc_formatting() -> None:
    assert format_utc(0.0) == "1970-01-01T00:00:00.000Z"
    moment = datetime(2026, 5, 9, 7, 35, 25, 123000, tzinfo=timezone.utc)
    assert format_utc(moment) == T0
    assert parse_utc(T0) == moment
    with pytest.raises(EventError, match="timezone-aware"):
        format_utc(datetime(2026, 5, 9))


def test_one_priority_table_for_detector_gate_and_events() -> None:
    from edge.bed.detector import DEFAULT_PRIORITIES as DETECTOR
    from edge.bed.gate import DEFAULT_TECHNICAL_PRIORITIES as GATE

    for rule in (*DETECTOR, *GATE):
        assert DEFAULT_PRIORITIES[rule.type] == rule.priority, rule.type
    assert {r.type for r in DETECTOR} == set(SOUND_TYPES)
    assert DEFAULT_PRIORITIES["Fine Crackle"] == "low"  # the detector's choice, now everyone's
    assert DEFAULT_PRIORITIES["Wheeze"] == "medium"


READING = {"state": "ok", "rate_bpm": 18.4, "low_bpm": 9.0, "high_bpm": 24.0, "reason": "",
           "utc": T0, "wheeze_rate_pct": 12.5, "crackle_rate_pct": None}  # fmt: skip
STATUS = {"state": "online", "reason": "connected", "utc": T0, "commands": "signed",
          "eui64": "0011223344556677"}  # fmt: skip


def test_a_respiration_and_a_status_message_are_read_as_typed_fields() -> None:
    reading = Respiration.from_dict({**READING, "site": "ward-3", "confidence": 0.6})
    assert dataclasses.asdict(reading) == READING  # the fields its readers use, no more
    assert reading.when == parse_utc(T0)
    assert Respiration.from_dict({"state": "ok", "rate_bpm": 0, "utc": T0}).reason == ""
    apnoea = Respiration.from_dict({"state": "apnoea", "rate_bpm": None, "utc": T0})
    assert apnoea.rate_bpm is None
    assert dataclasses.asdict(Status.from_dict(STATUS)) == STATUS
    status = Status.from_dict({**STATUS, "commands": "telepathy", "eui64": None})
    assert (status.commands, status.eui64) == (None, None)  # a policy it does not know
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.state = "offline"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"state": "fine"}, "respiration.state must be one of assessing, ok, not_assessable"),
        ({"rate_bpm": 200.5}, "respiration.rate_bpm must be a number in [0, 200] when ok"),
        ({"rate_bpm": -3}, "respiration.rate_bpm must be a number in [0, 200] when ok"),
        ({"rate_bpm": None}, "respiration.rate_bpm must be a number in [0, 200] when ok"),
        ({"rate_bpm": True}, "respiration.rate_bpm must be a number in [0, 200] when ok"),
        ({"state": "apnoea"}, "respiration.rate_bpm must be null while the state is apnoea"),
        ({"low_bpm": "9"}, "respiration.low_bpm must be null or a number, got '9'"),
        ({"high_bpm": [24]}, "respiration.high_bpm must be null or a number"),
        ({"utc": "2026-05-09 07:35"}, "respiration.utc must be UTC ISO-8601 ending in Z"),
        ({"reason": "x" * 201}, "respiration.reason must be text of at most 200 characters"),
        ({"reason": 7}, "respiration.reason must be text of at most 200 characters"),
        ({"wheeze_rate_pct": 150.0}, "respiration.wheeze_rate_pct must be null or in [0, 100]"),
        ({"crackle_rate_pct": "3"}, "respiration.crackle_rate_pct must be null or in [0, 100]"),
    ],
)
def test_a_bad_respiration_field_is_named(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(EventError, match="^" + re.escape(message)):
        Respiration.from_dict({**READING, **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"state": "asleep"}, "status.state must be online or offline, got 'asleep'"),
        ({"reason": None}, "status.reason must be text of at most 200 characters"),
        ({"utc": 17}, "status.utc must be UTC ISO-8601 ending in Z"),
        ({"eui64": "00112233445566"}, "status.eui64 must be null or 16 upper-case hex digits"),
        ({"eui64": "00112233445566aa"}, "status.eui64 must be null or 16 upper-case"),
        ({"eui64": "0" * 16}, "status.eui64 must be null or 16 upper-case hex digits"),
    ],
)
def test_a_bad_status_field_is_named(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(EventError, match="^" + re.escape(message)):
        Status.from_dict({**STATUS, **changes})
