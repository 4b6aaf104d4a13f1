"""The ward dashboard's logic without a browser or a broker: the ward state built from real
``lungwatch.events.Event`` messages (alarm order, latching and acknowledge, offline, bed states,
rejected and duplicate messages), the ``dashboard`` config block, password hashes, and the
runtime's live strip (``edge.sinks.live``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.sinks.live import LiveStrip, live_payload, live_topic
from lungwatch.alarms import AlarmSettings
from lungwatch.config import from_mapping
from lungwatch.errors import ConfigError
from lungwatch.events import (
    Event,
    ack_payload,
    respiration_payload,
    respiration_topic,
    status_payload,
)
from lungwatch.passwords import hash_password, verify_password
from tests.brokers import SHA256
from tests.wardview.browser import user_entry
from wardview.cli import load_settings
from wardview.config import DashboardConfig
from wardview.ward import Ward

SITE, DEVICE = "ward-3", "dev-1"
ROOT = f"lungwatch/v1/{SITE}/{DEVICE}"


def finding(
    type_: str = "Wheeze", bed: str = "bed-1", second: int = 0, priority: str | None = None
) -> Event:
    values: dict[str, Any] = {
        "type": type_,
        "site": SITE,
        "device_id": DEVICE,
        "stream_id": bed,
        "start_utc": f"2026-05-09T07:00:{second:02d}.000Z",
        "start_sample": 8000 * second,
        "confidence": 0.9,
        "model_id": "edge-test",
        "model_sha256": SHA256,
        "quality": {"score": 0.99},
        "detail": {"key": f"{type_}@{8000 * second}"},
    }
    if priority is not None:
        values["priority"] = priority
    return Event.onset(**values)


def technical(type_: str, bed: str = "bed-1", second: int = 0) -> Event:
    return Event.onset(
        type=type_, site=SITE, device_id=DEVICE, stream_id=bed,
        start_utc=f"2026-05-09T07:00:{second:02d}.000Z", start_sample=8000 * second,
        detail={"key": f"{type_}@{8000 * second}", "reason": "test"},
    )  # fmt: skip


def send(ward: Ward, event: Event) -> bool:
    return ward.handle(event.topic, event.to_json().encode())


def status(ward: Ward, state: str, reason: str) -> bool:
    payload = status_payload(state, SITE, DEVICE, reason).encode()
    return ward.handle(f"{ROOT}/status", payload, retained=True)


def test_alarms_are_ordered_by_priority_then_the_newest() -> None:
    ward = Ward(SITE)
    events = [
        finding("Fine Crackle", "bed-1", second=1),  # low, oldest
        finding("Wheeze", "bed-2", second=5),  # medium, newer
        finding("Stridor", "bed-3", second=9),  # high, newest
        finding("Wheeze", "bed-4", second=2),  # medium, older
        technical("off_body", "bed-5", second=3),  # medium (technical), middle
    ]
    for event in events:
        assert send(ward, event)
    order = [(a["priority"], a["stream_id"]) for a in ward.alarms()]
    assert order == [
        ("high", "bed-3"),
        ("medium", "bed-2"),
        ("medium", "bed-5"),
        ("medium", "bed-4"),
        ("low", "bed-1"),
    ]


def test_a_beds_episodes_of_one_finding_are_one_alarm_condition() -> None:
    """Crackle after crackle on a bed: one row (DAS) counting them; a wheeze is another."""
    ward = Ward(SITE)
    for second in range(0, 40, 4):
        onset = finding("Fine Crackle", second=second)
        send(ward, onset)
        send(ward, onset.ended(f"2026-05-09T07:00:{second + 1:02d}.000Z", 8000 * second + 8000))
    send(ward, finding("Coarse Crackle", second=45))
    send(ward, finding("Wheeze", second=46))
    rows = ward.alarms()
    assert [(r["stream_id"], r["condition"]) for r in rows] == [("bed-1", "CAS"), ("bed-1", "DAS")]
    das = rows[1]
    assert (das["episodes"], das["state"], das["types"]) == (11, "alarming", ["Coarse Crackle"])
    assert das["first_onset_utc"] == "2026-05-09T07:00:00.000Z"
    assert das["last_episode_utc"] == "2026-05-09T07:00:45.000Z"


def test_a_finding_episode_and_its_evidence_are_one_physiological_condition() -> None:
    """The device's wheeze finding episode (kind finding) and the wheezes inside it raise one
    CAS row, a physiological condition shown as wheezes on the bed's card."""
    ward = Ward(SITE)
    episode = finding("CAS", second=2)
    assert episode.kind == "finding"
    assert send(ward, episode)
    assert send(ward, finding("Wheeze", second=2))
    assert send(ward, finding("Wheeze", second=5))
    [row] = ward.alarms()
    assert (row["condition"], row["kind"], row["episodes"]) == ("CAS", "physiological", 3)
    assert row["priority"] == "medium"
    assert ward.snapshot()["beds"][0]["state"]["key"] == "wheezes"


def test_an_ended_episodes_condition_alarms_until_acknowledged_and_its_rows_stay() -> None:
    now = [1000.0]
    config = DashboardConfig(events_per_bed=3, alarms=AlarmSettings(hold_s=0.0))
    ward = Ward(SITE, config, clock=lambda: now[0])
    onset = finding("Wheeze", second=1)
    send(ward, onset)
    assert [a["episode_id"] for a in ward.alarms()] == [onset.episode_id]
    send(ward, onset.ended("2026-05-09T07:00:02.000Z", end_sample=16000))
    now[0] += 120.0  # no wheeze since: the finding no longer continues
    [row] = ward.alarms()  # the condition alarms until someone acknowledges it
    assert (row["state"], row["open_episodes"]) == ("alarming", [])
    assert ward.acknowledgeable(DEVICE, "bed-1", "CAS")
    ward.acknowledge_sent(DEVICE, "bed-1", "CAS", "nurse-a")
    assert ward.alarms() == []
    bed = ward.snapshot()["beds"][0]
    assert [row["state"] for row in bed["events"]] == ["ended", "onset"]  # newest first
    assert bed["state"] == {"key": "normal", "text": "breathing normal"}
    for second in range(2, 6):  # only the last events_per_bed rows are kept
        send(ward, finding("Fine Crackle", second=second))
    assert len(ward.snapshot()["beds"][0]["events"]) == 3


def test_an_acknowledge_another_view_sent_reaches_this_view_through_the_device() -> None:
    """Two views of one ward: a nurse at the other acknowledges a condition whose episodes
    are over (the device has nothing to end); the device's ack message acknowledges it here
    too, naming her. A malformed ack or one for another bed is refused and counted."""
    now = [1000.0]
    ward = Ward(SITE, DashboardConfig(alarms=AlarmSettings(hold_s=0.0)), clock=lambda: now[0])
    onset = finding("Wheeze", second=1)
    send(ward, onset)
    send(ward, onset.ended("2026-05-09T07:00:02.000Z", end_sample=16000))
    now[0] += 120.0  # no wheeze since: the finding no longer continues
    assert [row["state"] for row in ward.alarms()] == ["alarming"]
    topic = f"{ROOT}/bed-1/ack"
    bad = ack_payload(SITE, DEVICE, "bed-2", "CAS", "nurse-b", "2026-05-09T07:00:03.000Z", 0)
    assert not ward.handle(topic, bad.encode())
    nameless = json.loads(bad) | {"stream_id": "bed-1", "target": ""}
    assert not ward.handle(topic, json.dumps(nameless).encode())
    assert [row["state"] for row in ward.alarms()] == ["alarming"]
    took = ack_payload(SITE, DEVICE, "bed-1", "CAS", "nurse-b", "2026-05-09T07:00:03.000Z", 0)
    assert ward.handle(topic, took.encode())
    assert ward.alarms() == []  # acknowledged and over: it leaves, as on the other view
    assert ward.rejected_reasons == {"invalid": 2}
    send(ward, finding("Wheeze", second=10))  # a new condition
    assert ward.handle(topic, took.encode())  # the same ack message again (QoS 1)
    assert ward.counts["duplicates"] == 1
    assert [row["state"] for row in ward.alarms()] == ["alarming"]


def test_latched_alarm_is_acknowledgeable_until_its_acknowledged_end_comes_back() -> None:
    ward = Ward(SITE, DashboardConfig(alarms=AlarmSettings(hold_s=0.0)))
    onset = finding("Stridor", second=4)
    send(ward, onset)
    key = onset.detail["key"]
    latched = onset.ongoing(
        detail={**onset.detail, "latched": True, "condition_end_utc": "2026-05-09T07:00:05.000Z"}
    )
    send(ward, latched)
    [alarm] = ward.alarms()
    assert (alarm["condition"], alarm["key"], alarm["state"]) == ("CAS", "CAS", "alarming")
    assert alarm["latched"]
    assert not alarm["ack_sent"]
    assert alarm["condition_end_utc"] == "2026-05-09T07:00:05.000Z"
    for target in ("CAS", key, "Stridor"):  # the condition, the episode's key or type
        assert ward.acknowledgeable(DEVICE, "bed-1", target)
    assert not ward.acknowledgeable(DEVICE, "bed-2", key)
    assert not ward.acknowledgeable(DEVICE, "bed-1", "DAS")
    ward.acknowledge_sent(DEVICE, "bed-1", "CAS", "nurse-a")
    [alarm] = ward.alarms()
    assert alarm["ack_sent"]
    assert (alarm["state"], alarm["acknowledged_by"]) == ("acknowledged", "nurse-a")
    assert ward.snapshot()["beds"][0]["state"]["text"] == "stridor · acknowledged (latched)"
    ended = latched.ended(
        "2026-05-09T07:00:05.000Z",
        end_sample=40000,
        detail={
            "key": key,
            "ended_by": "acknowledge",
            "acknowledged_utc": "2026-05-09T07:00:09.000Z",
        },
    )
    send(ward, ended)
    assert ward.alarms() == []
    assert ward.pending_acks == {}
    row = ward.snapshot()["beds"][0]["events"][0]
    assert (row["state"], row["ended_by"], row["acknowledged_utc"]) == (
        "ended", "acknowledge", "2026-05-09T07:00:09.000Z",
    )  # fmt: skip


def test_the_last_will_turns_the_device_and_its_beds_offline() -> None:
    ward = Ward(SITE)
    assert status(ward, "online", "connected")
    send(ward, finding("Wheeze", "bed-1"))
    send(ward, finding("Fine Crackle", "bed-2"))
    snapshot = ward.snapshot()
    assert snapshot["devices"][0]["online"] is True
    assert [b["state"]["key"] for b in snapshot["beds"]] == ["wheezes", "crackles"]
    ward.take_changes()
    assert status(ward, "offline", "connection lost")
    changes = ward.take_changes()
    assert changes is not None
    assert changes["devices"][0]["online"] is False
    assert changes["devices"][0]["reason"] == "connection lost"
    assert {b["stream_id"]: b["state"]["text"] for b in changes["beds"]} == {
        "bed-1": "offline",
        "bed-2": "offline",
    }
    assert all(not a["device_online"] for a in changes["alarms"])


def test_bed_state_text_for_each_condition() -> None:
    """A card shows its bed's worst condition of the alarm list, with its priority and how
    many more the bed has."""
    cases = [
        ([finding("Wheeze")], "wheezes", "wheezes · medium alarm"),
        ([finding("Fine Crackle")], "crackles", "crackles · low alarm"),
        ([finding("Coarse Crackle")], "crackles", "crackles · low alarm"),
        ([finding("Rhonchi")], "rhonchi", "rhonchi · low alarm"),
        ([finding("Stridor")], "stridor", "stridor · high alarm"),
        ([finding("Wheeze+Crackle")], "wheezes", "wheezes · medium alarm"),
        ([finding("Wheeze"), finding("Stridor", second=1)], "stridor", "stridor · high alarm"),
        (
            [finding("Wheeze"), technical("poor_signal")],
            "wheezes",
            "wheezes · medium alarm (+1 more)",
        ),
        ([technical("off_body")], "technical", "technical condition: off body · medium alarm"),
        ([finding("tachypnoea")], "tachypnoea", "breathing fast · low alarm"),
        ([finding("apnoea"), technical("poor_signal")], "apnoea", "apnoea · high alarm (+1 more)"),
        ([], "normal", "breathing normal"),
    ]
    for events, key, text in cases:
        ward = Ward(SITE)
        ward.handle(f"{ROOT}/metrics", json.dumps(_metrics("bed-1", 0)).encode())
        for event in events:
            send(ward, event)
        assert ward.snapshot()["beds"][0]["state"] == {"key": key, "text": text}, events


def _metrics(bed: str, spooled: int) -> dict[str, Any]:
    return {
        "schema_version": 1, "site": SITE, "device_id": DEVICE, "stream_id": bed,
        "utc": "2026-05-09T07:00:00.000Z", "metrics": {"frames": 10, "mqtt_spooled": spooled},
    }  # fmt: skip


def test_metrics_give_beds_served_and_spool_depth() -> None:
    ward = Ward(SITE)
    for bed in ("bed-2", "bed-10", "bed-1"):
        assert ward.handle(f"{ROOT}/metrics", json.dumps(_metrics(bed, 7)).encode())
    device = ward.snapshot()["devices"][0]
    assert device["beds"] == ["bed-1", "bed-2", "bed-10"]
    assert device["spooled"] == 7


def test_the_worst_beds_read_wait_says_whether_the_device_is_behind() -> None:
    """Each bed's last ``read_wait_ms_p99``; the device shows its worst bed, ``behind`` over
    500 ms; a bed whose report has no measure (null) no longer counts."""
    ward = Ward(SITE)

    def report(bed: str, wait: object) -> dict[str, Any]:
        body = _metrics(bed, 0)
        body["metrics"]["read_wait_ms_p99"] = wait
        assert ward.handle(f"{ROOT}/metrics", json.dumps(body).encode())
        device = ward.snapshot()["devices"][0]
        return {k: device[k] for k in ("read_wait_ms", "read_wait_bed", "behind")}

    assert report("bed-1", None) == {"read_wait_ms": None, "read_wait_bed": None, "behind": False}
    assert report("bed-1", 40.5) == {
        "read_wait_ms": 40.5,
        "read_wait_bed": "bed-1",
        "behind": False,
    }
    assert report("bed-2", 812) == {"read_wait_ms": 812.0, "read_wait_bed": "bed-2", "behind": True}
    assert report("bed-3", 120) == {"read_wait_ms": 812.0, "read_wait_bed": "bed-2", "behind": True}
    assert report("bed-2", None) == {
        "read_wait_ms": 120.0,
        "read_wait_bed": "bed-3",
        "behind": False,
    }
    assert report("bed-3", "late") == {
        "read_wait_ms": 40.5,
        "read_wait_bed": "bed-1",
        "behind": False,
    }


def test_behind_is_judged_by_the_devices_own_read_wait_limit() -> None:
    """A device that reports its ``read_wait_warn_ms`` is behind by that limit: 300 ms is
    behind at a limit of 200 and not at 1,000; without a usable limit (null: the device's check
    is off, or absent, or not a number) the runtime's default 500 ms applies."""
    ward = Ward(SITE)

    def behind(wait: float, *limit: object) -> bool:
        body = _metrics("bed-1", 0)
        body["metrics"]["read_wait_ms_p99"] = wait
        if limit:  # none given: the report has no read_wait_warn_ms
            body["metrics"]["read_wait_warn_ms"] = limit[0]
        assert ward.handle(f"{ROOT}/metrics", json.dumps(body).encode())
        return bool(ward.snapshot()["devices"][0]["behind"])

    assert behind(300, 200)
    assert not behind(300, 1000)
    assert behind(1200, 1000)
    assert not behind(300, None)
    assert behind(600, None)
    assert not behind(300)  # a report without the key: an older runtime
    assert behind(600)
    assert not behind(300, "fast")
    assert behind(600, 0)


def test_bad_messages_are_counted_and_named_not_dropped_silently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ward = Ward(SITE)
    good = finding()
    body = good.to_dict()
    bad = [
        (f"{ROOT}/bed-1/event", b"not json"),
        (f"{ROOT}/bed-1/event", json.dumps({**body, "confidence": 1.5}).encode()),
        (f"{ROOT}/bed-1/event", json.dumps({**body, "schema_version": 2}).encode()),
        (f"{ROOT}/bed-2/event", good.to_json().encode()),  # topic and body disagree
        (f"{ROOT}/status", b'{"schema_version": 1, "site": "ward-3", "device_id": "dev-1"}'),
        (f"{ROOT}/bed-1/live", json.dumps({"schema_version": 1, "site": SITE,
            "device_id": DEVICE, "stream_id": "bed-1", "classes": {"Wheeze": 2}}).encode()),
        (f"{ROOT}/bed-1/whatever", b"{}"),
    ]  # fmt: skip
    for topic, payload in bad:
        assert not ward.handle(topic, payload)
    assert ward.counts["rejected"] == len(bad)
    assert (ward.last_rejected or "").endswith("whatever: unknown topic kind 'whatever'")
    logged = [r.getMessage() for r in caplog.records if "rejected message" in r.getMessage()]
    assert len(logged) == len(bad)
    assert "event.confidence must be a number in [0, 1], got 1.5" in logged[1]
    assert "schema_version must be 1, got 2" in logged[2]
    assert "live.classes must map class names to numbers in [0, 1]" in logged[5]
    assert send(ward, good)
    assert send(ward, good)  # QoS 1 may deliver twice: one row
    assert ward.counts["duplicates"] == 1
    assert len(ward.snapshot()["beds"][0]["events"]) == 1


def test_changes_are_handed_once_and_live_points_kept_per_bed() -> None:
    ward = Ward(SITE, DashboardConfig(live_points=2))
    point = {"Normal": 0.9, "Wheeze": 0.2}
    for second in range(3):
        body = {
            "schema_version": 1, "site": SITE, "device_id": DEVICE, "stream_id": "bed-1",
            "utc": f"2026-05-09T07:00:0{second}.000Z", "interval_s": 1.0, "frames": 25,
            "classes": point, "quality_score": 0.99,
        }  # fmt: skip
        assert ward.handle(f"{ROOT}/bed-1/live", json.dumps(body).encode())
    changes = ward.take_changes()
    assert changes is not None
    assert len(changes["live"]) == 3
    assert ward.take_changes() is None
    assert len(ward.snapshot()["beds"][0]["live"]) == 2


# -- config ------------------------------------------------------------------------------
def test_password_hashes_are_salted_and_verified() -> None:
    first, second = hash_password("s3cret", 100_000), hash_password("s3cret", 100_000)
    assert first != second
    assert first.startswith("pbkdf2_sha256$100000$")
    assert verify_password("s3cret", first)
    assert verify_password("s3cret", second)
    assert not verify_password("s3cret!", first)
    assert not verify_password("s3cret", "s3cret")


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ({"hots": "0.0.0.0"}, "dashboard.hots must be one of ["),
        ({"port": 70000}, "dashboard.port must be an integer in [0, 65535], got 70000"),
        ({"host": "0.0.0.0"}, "dashboard.host must be a loopback address (127.0.0.1, ::1, "),
        (
            {"users": [{"name": "nurse", "role": "ack", "password_hash": "plain"}]},
            "dashboard.users[0].password_hash must be pbkdf2_sha256$ITERATIONS$SALT_HEX$HASH_HEX",
        ),
        (
            {"users": [{"name": "nurse", "role": "admin", "password_hash": "x"}]},
            "dashboard.users[0].role must be one of 'view', 'ack', got 'admin'",
        ),
        ({"enabled": "yes"}, "dashboard.enabled must be true or false, got 'yes'"),
        ({"allowed_hosts": ["ward.example:8080"]},
         "dashboard.allowed_hosts must be host names or IP addresses, no port, got "
         "('ward.example:8080',)"),
        ({"request_timeout_s": 0},
         "dashboard.request_timeout_s must be a number in [0.1, 300], got 0"),
        ({"max_message_bytes": 100},
         "dashboard.max_message_bytes must be an integer in [1024, 16777216], got 100"),
        ({"max_json_depth": 1000},
         "dashboard.max_json_depth must be an integer in [4, 200], got 1000"),
        ({"stale_after_s": 4, "probe_interval_s": 3},
         "dashboard.probe_interval_s must be 0 (no probe) or a number in [0.1, "
         "stale_after_s / 2 = 2] (seconds), got 3.0"),
        ({"login_max_failures": 0},
         "dashboard.login_max_failures must be an integer in [1, 1000], got 0"),
        ({"max_devices": 0},
         "dashboard.max_devices must be an integer in [1, 100000], got 0"),
        ({"max_open_episodes_per_bed": 100_001},
         "dashboard.max_open_episodes_per_bed must be an integer in [1, 100000], "
         "got 100001"),
        ({"max_connections_per_address": 0},
         "dashboard.max_connections_per_address must be an integer in [1, 10000], "
         "got 0"),
    ],
)  # fmt: skip
def test_bad_dashboard_blocks_are_one_line_naming_the_key(
    tmp_path: Path, block: dict[str, Any], expected: str
) -> None:
    path = tmp_path / "ward.yaml"
    path.write_text(json.dumps({"site": SITE, "dashboard": block}), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, [])
    message = str(caught.value)
    assert message.startswith("ward.yaml: "), message
    assert expected in message, message
    assert "\n" not in message
    assert "plain" not in message or "password_hash" in expected


def test_a_plain_text_password_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        from_mapping(
            DashboardConfig,
            {"users": [{"name": "n", "role": "ack", "password_hash": "hunter2"}]},
            source="x.yaml",
        )
    assert "hunter2" not in str(caught.value)
    assert "'***'" in str(caught.value)


def test_users_allow_any_address_and_a_runtime_files_view_sections_are_checked(
    tmp_path: Path,
) -> None:
    users = [user_entry("nurse", "ack", "pw"), user_entry("porter", "view", "pw")]
    path = tmp_path / "dash.yaml"
    path.write_text(json.dumps({"site": SITE, "dashboard": {"host": "0.0.0.0", "users": users}}))
    site, mqtt, dashboard = load_settings(path, ["mqtt.port=1884"])
    assert (site, mqtt.port, dashboard.host) == (SITE, 1884, "0.0.0.0")
    assert [u.can_acknowledge for u in dashboard.users] == [True, False]
    # a device's runtime config: the view reads site, mqtt and dashboard (the device checks
    # the rest when it runs); the site must be named, a slip in the view's sections is refused
    runtime = tmp_path / "runtime.yaml"
    device = {"streams": [{"id": "bed-1", "source": "x.wav"}], "detector": {"x": 1}}
    runtime.write_text(json.dumps({**device, "site": SITE, "dashboard": {"port": 8099}}))
    site, _, dashboard = load_settings(runtime, [])
    assert (site, dashboard.port) == (SITE, 8099)
    runtime.write_text(json.dumps({**device, "sitee": SITE}))
    with pytest.raises(ConfigError, match=r"runtime.yaml: site must be given"):
        load_settings(runtime, [])
    runtime.write_text(json.dumps({**device, "site": SITE, "dashboard": {"prot": 8099}}))
    with pytest.raises(ConfigError, match=r"runtime.yaml: dashboard.prot must be one of \["):
        load_settings(runtime, [])


def test_the_runtime_config_checks_live_interval_and_the_dashboards_broker(tmp_path: Path) -> None:
    from edge.runtime.config import RuntimeConfig

    base = {"streams": [{"id": "bed-1", "source": "x.wav"}]}
    assert from_mapping(RuntimeConfig, base).live_interval_s == 1.0
    with pytest.raises(ConfigError, match=r"live_interval_s must be 0 \(no live strip\) or a"):
        from_mapping(RuntimeConfig, {**base, "live_interval_s": 0.1}, source="w.yaml")
    bad = {**base, "sinks": {"mqtt": False}, "dashboard": {"enabled": True}}
    with pytest.raises(ConfigError, match=r"dashboard\.enabled must be false while sinks\.mqtt"):
        from_mapping(RuntimeConfig, bad, source="w.yaml")


# -- live strip --------------------------------------------------------------------------
def test_live_strip_keeps_the_maximum_and_the_lowest_quality_at_most_once_per_interval() -> None:
    strip = LiveStrip(["Normal", "Wheeze", "Stridor"], interval_s=1.0)
    strip.add("bed-1", np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.05]]), 0.99)
    strip.add("bed-1", np.array([0.5, 0.3, 0.0]), 0.7)  # a window model: one row
    strip.add("bed-2", np.zeros((0, 3)), 1.0)  # all look-ahead: nothing
    [(bed, point)] = strip.due(10.0, "2026-05-09T07:00:00.000Z")
    assert bed == "bed-1"
    assert point["classes"] == {"Normal": 0.9, "Wheeze": 0.8, "Stridor": 0.05}
    assert (point["frames"], point["quality_score"], point["interval_s"]) == (3, 0.7, 1.0)
    strip.add("bed-1", np.array([0.1, 0.2, 0.3]), None)
    assert strip.due(10.5, "x") == [], "not before the interval has passed"
    [(_, later)] = strip.due(11.0, "2026-05-09T07:00:01.000Z")
    assert later["classes"]["Stridor"] == 0.3
    assert later["quality_score"] is None
    body = json.loads(live_payload(SITE, DEVICE, "bed-1", later))
    assert body["schema_version"] == 1
    assert body["stream_id"] == "bed-1"
    assert live_topic(SITE, DEVICE, "bed-1") == f"{ROOT}/bed-1/live"
    ward = Ward(SITE)  # what the runtime publishes, the dashboard reads
    assert ward.handle(
        live_topic(SITE, DEVICE, "bed-1"), live_payload(SITE, DEVICE, "bed-1", later).encode()
    )


def test_a_beds_rolling_verdict_is_shown_and_a_bad_one_refused() -> None:
    from lungwatch.events import verdict_payload, verdict_topic

    ward = Ward(SITE)
    scores = {"poor_quality": 0.1, "cas": 0.9, "das": 0.2}
    message = {"verdict": "CAS", "utc": "2026-05-09T07:00:30.000Z", "sample": 240000,
               "window_s": 30.0, "scores": scores}  # fmt: skip
    topic = verdict_topic(SITE, DEVICE, "bed-2")
    assert topic == f"{ROOT}/bed-2/verdict"
    assert ward.handle(topic, verdict_payload(SITE, DEVICE, "bed-2", message).encode(), True)
    (bed,) = ward.snapshot()["beds"]
    assert bed["stream_id"] == "bed-2"
    assert bed["verdict"] == {"label": "CAS", "since_utc": message["utc"], "window_s": 30.0}
    wrong = verdict_payload(SITE, DEVICE, "bed-2", {**message, "verdict": "Crackles"})
    assert not ward.handle(topic, wrong.encode())
    assert "one of assessing, Normal, CAS" in (ward.last_rejected or "")
    assert ward.snapshot()["beds"][0]["verdict"]["label"] == "CAS"  # the bad one changed nothing


def test_verdicts_named_in_the_config_are_listed_among_the_alarms() -> None:
    from lungwatch.events import verdict_payload, verdict_topic

    config = DashboardConfig(alarm_verdicts=("CAS", "CAS & DAS"), verdict_priority="high")
    ward = Ward(SITE, config)
    send(ward, finding("Fine Crackle", "bed-1"))
    for bed, label in (("bed-2", "CAS"), ("bed-3", "DAS")):
        body = {"verdict": label, "utc": "2026-05-09T07:00:10.000Z", "sample": 80000,
                "window_s": 30.0, "scores": {}}  # fmt: skip
        ward.handle(
            verdict_topic(SITE, DEVICE, bed), verdict_payload(SITE, DEVICE, bed, body).encode()
        )
    rows = ward.alarms()
    assert [(r["stream_id"], r["text"], r["priority"]) for r in rows] == [
        ("bed-2", "verdict CAS", "high"),  # high first
        ("bed-1", "crackles (DAS)", "low"),
    ]
    assert rows[0]["latched"] is False  # nothing to acknowledge
    normal = {"verdict": "Normal", "utc": "2026-05-09T07:00:20.000Z", "sample": 0, "scores": {}}
    ward.handle(
        verdict_topic(SITE, DEVICE, "bed-2"),
        verdict_payload(SITE, DEVICE, "bed-2", normal).encode(),
    )
    assert [r["stream_id"] for r in ward.alarms()] == ["bed-1"]


def test_a_beds_breathing_is_shown_with_its_trend_and_withdrawn_at_its_end() -> None:
    from lungwatch.events import respiration_payload, respiration_topic

    ward = Ward(SITE)
    topic = respiration_topic(SITE, DEVICE, "bed-2")
    assert topic == f"{ROOT}/bed-2/respiration"
    for i, (state, rate) in enumerate([("assessing", None), ("ok", 18.2), ("ok", 19.0),
                                       ("apnoea", None)]):  # fmt: skip
        reading = {"state": state, "rate_bpm": rate, "confidence": 0.6, "breaths": 9,
                   "age_band": "adult", "low_bpm": 9.0, "high_bpm": 24.0, "reason": "",
                   "utc": f"2026-05-09T07:00:{10 * i:02d}.000Z", "sample": 80000 * i}  # fmt: skip
        assert ward.handle(topic, respiration_payload(SITE, DEVICE, "bed-2", reading).encode())
    bed = ward.snapshot()["beds"][0]
    assert bed["respiration"]["state"] == "apnoea"
    assert bed["rate_trend"] == {"rate_bpm": [None, 18.2, 19.0, None],
                                 "wheeze_rate_pct": [None] * 4, "crackle_rate_pct": [None] * 4,
                                 "last_utc": "2026-05-09T07:00:30.000Z"}  # fmt: skip
    changes = ward.take_changes()
    assert changes is not None
    assert "rate_trend" not in changes["beds"][0]  # the page appends the readings it gets:
    assert [p["point"]["rate_bpm"] for p in changes["trend"]] == [None, 18.2, 19.0, None]
    assert changes["trend"][1] == {
        "device_id": DEVICE,
        "stream_id": "bed-2",
        "point": {
            "utc": "2026-05-09T07:00:10.000Z",
            "rate_bpm": 18.2,
            "wheeze_rate_pct": None,
            "crackle_rate_pct": None,
        },
        "seq": 2,
    }  # every one, in order, even four in one update, numbered
    assert ward.snapshot()["trend_seq"] == 4  # a page skips an update's readings up to it
    wrong = {"state": "ok", "rate_bpm": 900, "utc": "2026-05-09T07:01:00.000Z"}
    assert not ward.handle(topic, respiration_payload(SITE, DEVICE, "bed-2", wrong).encode())
    assert ward.counts["rejected"] == 1
    share = {**reading, "wheeze_rate_pct": 150.0, "utc": "2026-05-09T07:01:10.000Z"}
    assert not ward.handle(topic, respiration_payload(SITE, DEVICE, "bed-2", share).encode())
    assert ward.counts["rejected"] == 2  # a finding rate is a percentage
    share = {**share, "wheeze_rate_pct": 12.5, "crackle_rate_pct": None}
    assert ward.handle(topic, respiration_payload(SITE, DEVICE, "bed-2", share).encode())
    shown = ward.snapshot()["beds"][0]["respiration"]
    assert (shown["wheeze_rate_pct"], shown["crackle_rate_pct"]) == (12.5, None)
    share = {**share, "crackle_rate_pct": 3.0, "utc": "2026-05-09T07:01:20.000Z"}
    assert ward.handle(topic, respiration_payload(SITE, DEVICE, "bed-2", share).encode())
    trend = ward.snapshot()["beds"][0]["rate_trend"]  # the card's trend draws the shares too
    assert trend["wheeze_rate_pct"] == [None] * 4 + [12.5, 12.5]
    assert trend["crackle_rate_pct"] == [None] * 5 + [3.0]
    assert trend["rate_bpm"][-1] is None
    assert trend["last_utc"] == share["utc"]
    ward.take_changes()
    assert ward.handle(topic, respiration_payload(SITE, DEVICE, "bed-2", share).encode())
    again = ward.snapshot()["beds"][0]["rate_trend"]  # a retained reading sent again
    assert again["wheeze_rate_pct"] == trend["wheeze_rate_pct"]  # no second point
    assert ward.take_changes()["trend"] == []
    assert ward.handle(topic, b"", True)  # the stream ended: withdrawn
    assert ward.snapshot()["beds"][0]["respiration"] is None
    assert ward.handle(respiration_topic(SITE, DEVICE, "bed-9"), b"", True)
    assert [b["stream_id"] for b in ward.snapshot()["beds"]] == ["bed-2"]  # nothing created


def test_a_beds_card_and_its_alarm_rows_come_from_one_state() -> None:
    """The card shows the bed's worst condition that the list shows, whatever else the bed
    reports: a wheeze whose onset and end came together is a wheeze alarm on the card, not
    the fast rate its breathing reading shows; a poor-signal alarm whose episode is over
    (the live strip's quality 0.00) and a lost breath signal are technical alarms on the
    card, not "breathing normal". Acknowledged, the card says so; over, the bed is normal.
    Pushed with the list: the card changes in the update that changes the list."""
    now = [1000.0]
    ward = Ward(SITE, clock=lambda: now[0], alarms_every_s=0.0)
    fast = {"state": "ok", "rate_bpm": 31.0, "low_bpm": 9.0, "high_bpm": 24.0, "confidence": 0.8,
            "breaths": 15, "age_band": "adult", "utc": "2026-05-09T07:00:00.000Z"}  # fmt: skip
    ward.handle(respiration_topic(SITE, DEVICE, "bed-1"),
                respiration_payload(SITE, DEVICE, "bed-1", fast).encode())  # fmt: skip
    assert ward.snapshot()["beds"][0]["state"]["text"] == "no alarm · breathing fast (31/min)"
    wheeze = finding("Wheeze", second=1)
    send(ward, wheeze)
    send(ward, wheeze.ended("2026-05-09T07:00:02.000Z", end_sample=16000))
    poor = technical("poor_signal", bed="bed-2")
    send(ward, poor)
    send(ward, poor.ended(poor.start_utc, poor.start_sample))
    send(ward, technical("breath_signal_lost", bed="bed-3"))
    now[0] += 300.0  # the wheeze and the poor signal are long over, still unacknowledged
    changes = ward.take_changes()
    assert changes is not None
    cards = {b["stream_id"]: b["state"] for b in changes["beds"]}
    assert cards == {
        "bed-1": {"key": "wheezes", "text": "wheezes · medium alarm"},
        "bed-2": {"key": "technical", "text": "technical condition: poor signal · medium alarm"},
        "bed-3": {"key": "technical",
                  "text": "technical condition: breath signal lost · medium alarm"},
    }  # fmt: skip
    first = {}
    for row in changes["alarms"]:
        first.setdefault(row["stream_id"], row)
    for bed, row in first.items():  # the card's words are its bed's first row's
        card = cards[bed]["text"]
        assert row["priority"] in card
        assert row["text"] in card or card.split(" ·")[0] in row["text"]
    ward.acknowledge_sent(DEVICE, "bed-1", "CAS", "nurse")
    changes = ward.take_changes()
    assert changes is not None
    assert [b["state"] for b in changes["beds"]] == [
        {"key": "normal", "text": "no alarm · breathing fast (31/min)"}
    ]  # acknowledged and over: gone from the list and from the card
    send(ward, finding("Wheeze", second=40))
    ward.acknowledge_sent(DEVICE, "bed-1", "CAS", "nurse")
    changes = ward.take_changes()
    assert changes is not None
    assert changes["beds"][0]["state"]["text"] == "wheezes · acknowledged"


def test_a_beds_card_shows_its_most_severe_condition() -> None:
    """An apnoea the nurse acknowledged that goes on outranks an alarming crackle on the
    card (the list puts alarming rows first; the card shows what matters most at the bed);
    a breathing reading of apnoea with no alarm listed is not "breathing normal"."""
    from wardview.beds import bed_state

    ward = Ward(SITE)
    send(ward, finding("apnoea", second=1))
    ward.acknowledge_sent(DEVICE, "bed-1", "apnoea", "nurse")
    send(ward, finding("Fine Crackle", second=2))
    rows = ward.alarms()
    assert [(r["condition"], r["state"]) for r in rows] == [
        ("DAS", "alarming"), ("apnoea", "acknowledged")
    ]  # fmt: skip
    assert ward.snapshot()["beds"][0]["state"] == {
        "key": "apnoea", "text": "apnoea · acknowledged (+1 more)"
    }  # fmt: skip
    reading = bed_state(True, [], respiration={"state": "apnoea"})
    assert reading == {"key": "apnoea", "text": "apnoea (breathing reading; no alarm listed)"}
    assert bed_state(True, [], respiration={"state": "signal_lost"})["key"] == "technical"


def test_an_acknowledge_the_device_does_not_confirm_is_pushed_again_with_its_wait() -> None:
    now = [1000.0]
    ward = Ward(SITE, clock=lambda: now[0])
    onset = finding("Stridor", second=4)
    send(ward, onset.ongoing(detail={**onset.detail, "latched": True}))
    ward.acknowledge_sent(DEVICE, "bed-1", "CAS", "nurse-a")
    ward.check_liveness()
    ward.take_changes()
    now[0] += 5.0
    ward.check_liveness()
    early = ward.take_changes()
    assert early is None or "alarms" not in early  # nothing new to say yet
    now[0] += 20.0
    ward.check_liveness()
    changes = ward.take_changes()
    assert changes is not None
    [row] = changes["alarms"]
    assert (row["ack_sent"], row["ack_waiting_s"]) == (True, 25.0)


def test_an_acknowledge_a_device_will_not_take_is_refused_at_once_saying_why() -> None:
    """The device's online status says what it does with commands; the view tells the nurse
    at once why an acknowledge will not be taken, instead of waiting for a confirmation that
    never comes. A device that does not say is sent the acknowledge as before."""
    from lungwatch.events import EventError, status_payload

    cases = [
        ("refused", True, "takes no commands: it has no commands.key_file"),
        ("signed", False, "this ward view signs no commands"),
        ("signed", True, None),
        ("signed_or_unsigned", False, None),
        (None, False, None),
    ]
    for policy, signs, expected in cases:
        ward = Ward("ward-c")
        payload = status_payload("online", "ward-c", "dev-c", "connected", policy)
        assert ward.handle("lungwatch/v1/ward-c/dev-c/status", payload.encode(), retained=True)
        refusal = ward.ack_refusal("dev-c", signs)
        if expected is None:
            assert refusal is None, (policy, signs)
        else:
            assert refusal is not None
            assert expected in refusal
    with pytest.raises(EventError, match=r"status\.commands must be one of"):
        status_payload("online", "ward-c", "dev-c", "connected", "sometimes")


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ({"enabled": "yes"}, "ward.yaml: dashboard.enabled must be true or false, got 'yes'"),
        ({"enabled": True, "prot": 8080}, "ward.yaml: dashboard.prot must be one of ["),
    ],
)
def test_lungwatch_run_checks_the_views_section_of_its_config(
    block: dict[str, Any], expected: str
) -> None:
    """The device keeps the view's section as written; the view beside it checks it, naming
    the file and the key, whether or not it is enabled (a slip must not turn the view off)."""
    import contextlib

    from edge.runtime.config import RuntimeConfig
    from wardview.server import serve_beside

    config = from_mapping(
        RuntimeConfig, {"streams": [{"id": "bed-1", "source": "x.wav"}], "dashboard": block}
    )
    with contextlib.ExitStack() as resources, pytest.raises(ConfigError) as caught:
        serve_beside(config, None, resources, None, source="ward.yaml")
    assert str(caught.value).startswith(expected), str(caught.value)


def test_an_episode_id_is_its_beds_and_another_bed_cannot_take_it() -> None:
    """A device that read bed-1's episode id from the view publishes an event of its own bed
    with it: refused (counted), so bed-1's row, count and clip stay bed-1's."""
    ward = Ward(SITE)
    onset = finding("Stridor", bed="bed-1", priority="high")
    assert send(ward, onset)
    stolen = dataclasses.replace(finding("Wheeze", bed="bed-2"), episode_id=onset.episode_id)
    assert not send(ward, stolen)
    assert ward.rejected_reasons == {"foreign_episode": 1}
    assert [(r["stream_id"], r["condition"]) for r in ward.alarms()] == [("bed-1", "CAS")]
    assert ward.book.owner(onset.episode_id) == (DEVICE, "bed-1")
    assert send(ward, finding("Wheeze", bed="bed-2"))  # its own episodes still go
