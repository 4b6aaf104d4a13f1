"""The ward view's memory and evidence without a browser: the history, on SQLite and on a
real PostgreSQL server alike (wardview.history: per-hour trends, bounds, what a restart
restores, one site per store), the ward built on it
(wardview.ward: bed names, alarms latched before the view started, episodes that ended
while it was away, clips marked on their rows), and the evidence routes of a real
DashboardServer on a real Mosquitto (who may listen, the FLAC, the picture, the trend, no
broker credentials in what the page gets)."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import soundfile

from lungwatch.alarms import AlarmSettings
from lungwatch.clip import Clip, clip_messages, encode_flac, quantise
from lungwatch.errors import ConfigError
from lungwatch.events import (
    SHUTDOWN_REASON,
    Event,
    format_utc,
    kind_of,
    status_topic,
    summary_payload,
    summary_topic,
)
from lungwatch.mqtt import MqttConfig
from tests.brokers import HOST, SHA256, Mosquitto, make_password_file
from tests.wardview.browser import user_entry, wait_until
from wardview.config import DashboardConfig, DashboardUser
from wardview.history import History
from wardview.server import DashboardServer
from wardview.ward import STOPPED_END, Ward

SITE, DEVICE = "ward-h", "dev-h"
RATE_HZ = 8000
OUTPUTS = ("Fine Crackle", "Wheeze", "Poor Quality")
NOW = 1_780_000_000.0 // 3600 * 3600 + 1800  # half past an hour (POSIX s)
USERS = {"nurse": ("ack", "nurse-pw"), "porter": ("view", "porter-pw")}
BROKER_USER, BROKER_PASSWORD = "ward-login-7", "br0ker-s3cret-pw"


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def onset(type_: str, at_s: float, bed: str = "bed-1", **extra: Any) -> Event:
    values: dict[str, Any] = {
        "type": type_, "site": SITE, "device_id": DEVICE, "stream_id": bed,
        "start_utc": format_utc(at_s), "start_sample": int(at_s * RATE_HZ) % 10**9,
        "detail": {"key": f"{type_}@{int(at_s)}", **extra.pop("detail", {})}, **extra,
    }  # fmt: skip
    if kind_of(type_) == "physiological":  # a finding or breathing alarm: confidence, model
        values.update(confidence=0.9, model_id="edge-test", model_sha256=SHA256,
                      quality={"score": 0.99})  # fmt: skip
    return Event.onset(**values)


def ended(event: Event, at_s: float) -> Event:
    return event.ended(format_utc(at_s), end_sample=event.start_sample + 8000)


def a_clip(episode: str, bed: str = "bed-1", seconds: float = 5.0, seed: int = 0) -> Clip:
    rng = np.random.default_rng(seed)
    audio = (0.1 * rng.standard_normal(int(seconds * RATE_HZ))).astype(np.float32)
    frames = quantise(rng.random((int(seconds * 25), len(OUTPUTS))))
    return Clip(SITE, DEVICE, bed, episode, "Wheeze", 24000, 0, format_utc(NOW - 60), RATE_HZ,
                encode_flac(audio, RATE_HZ), OUTPUTS, 88, 320, frames,
                event_end_sample=32000)  # fmt: skip


def summary(bed: str = "bed-1", open_rows: list[dict[str, Any]] | None = None) -> tuple[str, bytes]:
    body = {"name": "Bed 4 (Mrs A.)", "location": "Ward 3 East, bay 2", "open": open_rows or [],
            "utc": format_utc(NOW)}  # fmt: skip
    return summary_topic(SITE, DEVICE, bed), summary_payload(SITE, DEVICE, bed, body).encode()


def status(state: str, reason: str, at_s: float) -> tuple[str, bytes]:
    """The device's retained status, stamped ``at_s`` by its clock."""
    body = {"schema_version": 1, "state": state, "site": SITE, "device_id": DEVICE,
            "utc": format_utc(at_s), "reason": reason}  # fmt: skip
    return status_topic(SITE, DEVICE), json.dumps(body).encode()


def send(ward: Ward, event: Event) -> bool:
    return ward.handle(event.topic, event.to_json().encode())


def send_clip(ward: Ward, clip: Clip) -> None:
    for topic, payload in clip_messages(clip, part_bytes=8192):
        assert ward.handle(topic, payload.encode()), ward.last_rejected


def respiration(bed: str, at_s: float, rate: float) -> tuple[str, bytes]:
    body = {"schema_version": 1, "site": SITE, "device_id": DEVICE, "stream_id": bed,
            "utc": format_utc(at_s), "state": "ok", "rate_bpm": rate, "age_band": "adult",
            "low_bpm": 9, "high_bpm": 24}  # fmt: skip
    return f"lungwatch/v1/{SITE}/{DEVICE}/{bed}/respiration", json.dumps(body).encode()


# -- the store -------------------------------------------------------------------------------
def started(store: History, clock: Clock, settings: AlarmSettings | None = None) -> Ward:
    """A view on ``store`` after a (re)start: what the store restores, listed again (alarms
    not held by default)."""
    alarms = settings if settings is not None else AlarmSettings(hold_s=0.0)
    ward = Ward(SITE, DashboardConfig(alarms=alarms), history=store, clock=clock)
    ward.restore(store.restore())
    return ward


ROW_KEYS = ("stream_id", "condition", "state", "latched", "open_episodes")


def listed(ward: Ward, keys: tuple[str, ...] = ROW_KEYS) -> list[tuple[Any, ...]]:
    """The alarm list's rows, each as the values of ``keys``."""
    return [tuple(row[k] for k in keys) for row in ward.alarms()]


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a test's store lives: an SQLite file, or a fresh database on the test run's
    PostgreSQL server (tests/postgres.py)."""
    if request.param == "sqlite":
        return tmp_path / "ward" / "history.sqlite"
    return str(request.getfixturevalue("postgres").new_database())


def test_a_beds_hours_count_onsets_by_family_poor_signal_and_rate(where: str | Path) -> None:
    clock = Clock()
    store = History(where, clock=clock)
    hour = NOW // 3600 * 3600
    wheeze = onset("Wheeze", hour - 3000)  # two hours ago (bin 4 of 6)
    store.add_event(wheeze)
    store.add_event(ended(wheeze, hour - 2990))  # an ending is not an onset
    for minute in (5, 20):
        store.add_event(onset("Fine Crackle", hour + 60 * minute))  # this hour
    store.add_event(onset("apnoea", hour + 600))
    poor = onset("poor_signal", hour - 1200)  # 20 min in the last hour, 30 in this one
    store.add_event(poor)
    store.add_event(ended(poor, hour + 1800))
    store.add_event(onset("Wheeze", hour - 3000, bed="bed-2"))  # another bed
    for minute, rate, wheeze in ((1, 18.0, 10.0), (2, 20.0, 15.0), (3, None, None)):
        reading = json.loads(respiration("bed-1", hour + 60 * minute, rate)[1])
        store.add_reading(DEVICE, "bed-1", "respiration", {**reading, "wheeze_rate_pct": wheeze})
    store.close()

    reopened = History(where, clock=clock)  # the view restarted
    trend = reopened.trend(DEVICE, "bed-1", hours=6)
    reopened.close()
    assert len(trend["hours"]) == 6
    assert trend["hours"][-1] == format_utc(hour)[:13] + ":00Z"
    assert trend["onsets"] == {
        "CAS": [0, 0, 0, 0, 1, 0],
        "DAS": [0, 0, 0, 0, 0, 2],
        "breathing": [0, 0, 0, 0, 0, 1],
    }
    assert trend["poor_signal_min"] == [0, 0, 0, 0, 20.0, 30.0]
    assert trend["rate_bpm"] == [None, None, None, None, None, 19.0]
    assert trend["wheeze_rate_pct"] == [None, None, None, None, None, 12.5]
    assert trend["crackle_rate_pct"] == [None] * 6  # the device never said


def test_a_restart_restores_open_episodes_recent_events_names_and_clips(
    where: str | Path,
) -> None:
    store = History(where, clock=Clock())
    stridor = onset("Stridor", NOW - 100, priority="high")
    wheeze = onset("Wheeze", NOW - 90)
    store.add_event(stridor)
    store.add_event(stridor.ongoing(detail={**stridor.detail, "latched": True}))
    store.add_event(wheeze)
    store.add_event(ended(wheeze, NOW - 80))
    store.set_summary(DEVICE, "bed-1", {"name": "Bed 4", "location": "bay 2", "open": []})
    store.add_clip(a_clip(stridor.episode_id))
    store.close()
    again = History(where)
    restored = again.restore()
    again.close()
    assert [(e.episode_id, e.state) for e in restored.open_events] == [
        (stridor.episode_id, "ongoing")
    ]
    assert [e.state for e in restored.recent] == ["onset", "ongoing", "onset", "ended"]
    assert restored.summaries == [
        (DEVICE, "bed-1", {"name": "Bed 4", "location": "bay 2", "open": []})
    ]
    assert restored.clips == {stridor.episode_id}


def test_the_store_is_bounded_by_age_and_by_the_clips_bytes(where: str | Path) -> None:
    clock = Clock()
    clips = [a_clip(f"ep-{i}", seed=i) for i in range(4)]
    one = len(clips[0].flac)
    store = History(where, max_age_days=1.0, max_evidence_mb=2.5 * one / 1e6,
                    clock=clock)  # fmt: skip
    old = onset("Wheeze", NOW - 3 * 86400)
    store.add_event(old)  # received now: kept
    for clip in clips:
        store.add_clip(clip)
        clock.now += 1.0
    store.prune_now()
    assert [store.clip(c.episode_id) is not None for c in clips] == [False, False, True, True]
    assert store.clip("ep-3")[1] == clips[3].flac  # type: ignore[index]
    clock.now += 2 * 86400  # two days on: everything received before is too old
    store.prune_now()
    assert store.restore().recent == []
    assert store.clip("ep-3") is None
    store.close()


def test_a_row_that_cannot_be_stored_costs_only_itself(where: str | Path) -> None:
    """A row the database cannot take (here a lone surrogate, which neither SQLite nor
    PostgreSQL's UTF-8 can encode) is left out alone: the rows beside it in the same batch
    are stored, the writer goes on, the failure is counted and reported."""
    reports: list[str] = []
    store = History(where, clock=Clock(), on_failure=reports.append)
    good = onset("Wheeze", NOW - 60)
    store._put("INSERT INTO readings VALUES (?,?,?,?,?,?)",
               (DEVICE, "bed-\ud800", "verdict", NOW, "{}", NOW))  # fmt: skip
    store.add_event(good)
    assert store.flush()
    store.add_event(onset("Fine Crackle", NOW - 30))  # the writer is still there
    assert store.flush()
    assert [e.type for e in store.restore().recent] == ["Wheeze", "Fine Crackle"]
    assert store.failed == 1
    assert len(reports) == 1
    assert "readings row was not stored: " in reports[0]
    assert "UnicodeEncodeError" in reports[0] or "encod" in reports[0].lower()
    store.close()


def test_device_times_ahead_of_the_views_clock_are_not_believed(where: str | Path) -> None:
    """An event an hour ahead and readings stamped 2099 are stored at the time they were
    received: the trend answers and counts them in this hour, and pruning by the view's
    clock removes them like any other row."""
    clock = Clock()
    store = History(where, max_age_days=1.0, clock=clock)
    store.add_event(onset("Wheeze", NOW + 3900))  # a device clock 65 min fast
    far = 4_070_908_800.0  # 2099
    for i in range(20):
        store.add_reading(DEVICE, "bed-1", "respiration",
                          json.loads(respiration("bed-1", far + i, 18.0)[1]))  # fmt: skip
    store.add_event(onset("Fine Crackle", far))
    store.flush()
    trend = store.trend(DEVICE, "bed-1", hours=6)
    assert trend["onsets"]["CAS"][-1] == 1
    assert trend["onsets"]["DAS"][-1] == 1
    assert trend["rate_bpm"][-1] == 18.0
    clock.now += 2 * 86400
    store.prune_now()
    assert store.trend(DEVICE, "bed-1", hours=6)["rate_bpm"] == [None] * 6
    assert store.restore().readings == []
    store.close()


def test_one_file_holds_one_sites_history_written_privately(tmp_path: Path) -> None:
    """The file is made 0600 whatever the umask (patient audio); a view of another site
    refuses it, naming both sites."""
    import os

    from wardview.history import HistoryError

    path = tmp_path / "ward" / "h.sqlite"
    old = os.umask(0o022)
    try:
        store = History(path, clock=Clock(), site="ward-a")
        store.add_clip(a_clip("ep-1"))
        store.flush()
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    store.close()
    History(path, clock=Clock(), site="ward-a").close()
    with pytest.raises(HistoryError, match="the history of site 'ward-a', not of 'ward-b'"):
        History(path, clock=Clock(), site="ward-b")


def test_one_database_holds_one_site_and_two_views_share_it(postgres: Any) -> None:
    """Two views of one site on one PostgreSQL database: both write, each reads the other's
    rows, a row both received is stored once; a view of another site refuses the database;
    a URL with a password in it is refused (the password belongs in a pgpass file)."""
    from wardview.history import HistoryError

    url = postgres.new_database()
    first, second = (
        History(url, clock=Clock(), site="ward-a"),
        History(url, clock=Clock(), site="ward-a"),
    )
    wheeze, crackle = onset("Wheeze", NOW - 60), onset("Fine Crackle", NOW - 30)
    first.add_event(wheeze)
    second.add_event(wheeze)  # both views received it
    second.add_event(crackle)
    assert first.flush()
    assert second.flush()
    assert [e.type for e in first.restore().recent] == ["Wheeze", "Fine Crackle"]
    first.close()
    second.close()
    with pytest.raises(HistoryError, match="the history of site 'ward-a', not of 'ward-b'"):
        History(url, clock=Clock(), site="ward-b")
    with pytest.raises(ConfigError, match="without a password"):
        DashboardConfig(history_path=url.replace("lungwatch@", "lungwatch:s3cret@"))


def test_a_store_from_a_newer_lungwatch_is_refused(where: str | Path) -> None:
    from wardview.history import HistoryError
    from wardview.stores import SCHEMA_VERSION, open_backend

    History(where, clock=Clock()).close()
    backend = open_backend(where)
    db = backend.connect()
    with backend.transaction(db):
        db.execute(backend.sql("UPDATE meta SET value = ? WHERE name = 'schema_version'"),
                   (str(SCHEMA_VERSION + 1),))  # fmt: skip
    db.close()
    with pytest.raises(HistoryError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        History(where, clock=Clock())


def test_a_file_of_the_first_schema_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    """An SQLite history written before versions were kept (readings without received_s)
    opens at the current version with its rows."""
    import sqlite3

    from wardview.stores import SCHEMA_VERSION

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE readings (device_id TEXT NOT NULL, stream_id TEXT NOT NULL, "
                   "kind TEXT NOT NULL, at_s REAL NOT NULL, body TEXT NOT NULL)")  # fmt: skip
        db.execute("INSERT INTO readings VALUES (?,?,?,?,?)",
                   (DEVICE, "bed-1", "respiration", NOW - 60,
                    json.dumps(json.loads(respiration("bed-1", NOW - 60, 17.0)[1]))))  # fmt: skip
    db.close()
    store = History(path, clock=Clock())
    assert store.trend(DEVICE, "bed-1", hours=1)["rate_bpm"] == [17.0]
    store.close()
    with sqlite3.connect(path) as db:
        version = db.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
    db.close()
    assert version == (str(SCHEMA_VERSION),)


# -- the ward on it --------------------------------------------------------------------------
def test_names_alarms_and_evidence_survive_the_views_restart(where: str | Path) -> None:
    path = where
    store = History(path)
    ward = Ward(SITE, DashboardConfig(alarms=AlarmSettings(hold_s=0.0)), history=store)
    assert ward.handle(*summary())
    stridor = onset("Stridor", NOW - 100, priority="high")
    latched = stridor.ongoing(detail={**stridor.detail, "latched": True})
    assert send(ward, stridor)
    assert send(ward, latched)
    send_clip(ward, a_clip(stridor.episode_id))
    [alarm] = ward.alarms()
    assert (alarm["bed_name"], alarm["bed_location"], alarm["evidence"]) == (
        "Bed 4 (Mrs A.)", "Ward 3 East, bay 2", True)  # fmt: skip
    [bed] = ward.snapshot()["beds"]
    assert (bed["name"], bed["location"]) == ("Bed 4 (Mrs A.)", "Ward 3 East, bay 2")
    assert [e["evidence"] for e in bed["events"]] == [True, True]
    store.close()

    store = History(path)  # the view restarts: nothing from the broker yet
    ward = Ward(SITE, DashboardConfig(alarms=AlarmSettings(hold_s=0.0)), history=store)
    ward.restore(store.restore())
    [alarm] = ward.alarms()
    assert (alarm["episode_id"], alarm["latched"], alarm["bed_name"], alarm["evidence"]) == (
        stridor.episode_id, True, "Bed 4 (Mrs A.)", True)  # fmt: skip
    [bed] = ward.snapshot()["beds"]
    assert [e["id"] for e in bed["events"]] == [latched.id, stridor.id]  # newest first
    # the device's retained summary no longer lists it: it ended while the view was away
    assert ward.handle(*summary(open_rows=[]))
    assert ward.alarms() == []
    store.close()


def test_a_views_restart_lists_every_alarm_as_it_was(where: str | Path) -> None:
    """Eleven conditions on six beds: unacknowledged ones whose episodes are over (some
    escalated), technical ones (a lost breath signal, a poor signal), an acknowledged
    crackle that continues, a latched apnoea, findings with many episodes. The view stops
    and starts again on the same store: the same rows, states, priorities, escalations,
    episode counts and who acknowledged (only alarms the device itself latched came back,
    and escalation and counts started over). The devices' retained summaries that follow
    change nothing; a new episode of a restored condition counts on from where it was."""
    clock = Clock(NOW - 900)  # the view's clock: the episodes come as they happen
    settings = AlarmSettings(escalate_after_s=300.0, hold_s=0.0)

    store = History(where, clock=clock)
    ward = started(store, clock, settings)
    at = NOW - 900
    for bed in ("bed-1", "bed-2"):  # breathing fast, long over, never acknowledged
        fast = onset("tachypnoea", at, bed=bed)
        assert send(ward, fast)
        assert send(ward, ended(fast, at + 60))
    for n in range(7):  # crackles on bed-3, each over before the next
        crackle = onset("Fine Crackle", at + 10 * n, bed="bed-3")
        assert send(ward, crackle)
        assert send(ward, ended(crackle, at + 10 * n + 2))
    clock.now = at + 100
    for type_, bed in (("breath_signal_lost", "bed-4"), ("poor_signal", "bed-4")):
        lost = onset(type_, at + 100, bed=bed)
        assert send(ward, lost)
        assert send(ward, ended(lost, at + 160))
    wheeze = onset("Wheeze", at + 200, bed="bed-5")
    assert send(ward, wheeze)
    clock.now = NOW - 30
    crackle = onset("Coarse Crackle", NOW - 40, bed="bed-5")
    assert send(ward, crackle)
    ward.acknowledge_sent(DEVICE, "bed-5", "DAS", "nurse")  # acknowledged while it goes on
    assert send(ward, ended(crackle, NOW - 35))
    apnoea = onset("apnoea", NOW - 20, bed="bed-6")
    assert send(ward, apnoea)
    assert send(ward, apnoea.ongoing(detail={**apnoea.detail, "latched": True}))
    for type_ in ("Stridor", "Rhonchi"):
        other = onset(type_, NOW - 15, bed="bed-6")
        assert send(ward, other)
        assert send(ward, ended(other, NOW - 14))
    clock.now = NOW
    keys = ("stream_id", "condition", "state", "priority", "escalated", "episodes",
            "acknowledged_by", "first_onset_utc", "last_episode_utc", "latched")  # fmt: skip

    before = listed(ward, keys)
    assert len(before) == 9
    assert sum(r[4] for r in before) == 4
    ward.check_liveness()  # the view's round: what changed goes to the store
    store.close()

    store = History(where, clock=clock)
    ward = started(store, clock, settings)  # nothing from the broker yet
    assert listed(ward, keys) == before
    # the devices' retained summaries: bed-6 still holds its latched apnoea, the others none
    open_row = {"episode_id": apnoea.episode_id, "type": "apnoea", "kind": "physiological",
                "priority": "high", "start_utc": apnoea.start_utc, "key": apnoea.detail["key"],
                "latched": True}  # fmt: skip
    for bed in ("bed-1", "bed-2", "bed-3", "bed-4", "bed-5", "bed-6"):
        assert ward.handle(*summary(bed, [open_row] if bed == "bed-6" else []))
    assert listed(ward, keys) == before
    more = onset("Fine Crackle", NOW + 5, bed="bed-3")
    assert send(ward, more)
    das = next(r for r in ward.alarms() if (r["stream_id"], r["condition"]) == ("bed-3", "DAS"))
    assert (das["episodes"], das["state"], das["priority"]) == (8, "alarming", "medium")
    store.close()


@pytest.mark.parametrize("reason", [SHUTDOWN_REASON, "connection lost"])
def test_a_device_that_shut_down_while_the_view_was_away_ends_its_restored_alarms(
    where: str | Path, reason: str
) -> None:
    """The device's bed-1 holds a latched apnoea nobody acknowledged, bed-2 a stridor the
    nurse acknowledged while it goes on, bed-3 a latched crackle known only from its summary,
    acknowledged. The view stops; the device stops too, its ends unseen, its summaries
    cleared, and its retained status says why. The view starts again and lists them as they
    were. ``shutdown`` (it stopped cleanly: its streams ended, every episode with them): the
    restored episodes end, nothing latched; the acknowledged alarms leave the list, the apnoea
    nobody acknowledged stays alarming until an acknowledge, which ends it; the history says
    so (a second restart lists nothing). A later ``online`` changes nothing. The last will
    (``connection lost``): the device may be alarming at the bedside, so everything stays and
    an acknowledge waits for the device's end, after a restart too."""
    clock = Clock(NOW - 60)

    store = History(where, clock=clock)
    ward = started(store, clock)
    assert ward.handle(*status("online", "connected", NOW - 600))
    apnoea = onset("apnoea", NOW - 50)
    assert send(ward, apnoea)
    assert send(ward, apnoea.ongoing(detail={**apnoea.detail, "latched": True}))
    stridor = onset("Stridor", NOW - 40, bed="bed-2", priority="high")
    assert send(ward, stridor)
    crackle = {"episode_id": "ep-crackle-3", "type": "Coarse Crackle", "kind": "physiological",
               "priority": "high", "start_utc": format_utc(NOW - 30), "key": "DAS@3",
               "latched": True}  # fmt: skip
    assert ward.handle(*summary("bed-3", [crackle]))
    clock.now = NOW - 20
    ward.acknowledge_sent(DEVICE, "bed-2", "CAS", "nurse")
    ward.acknowledge_sent(DEVICE, "bed-3", "DAS", "nurse")
    before = listed(ward)
    assert before == [
        ("bed-1", "apnoea", "alarming", True, [apnoea.episode_id]),
        ("bed-3", "DAS", "acknowledged", True, ["ep-crackle-3"]),
        ("bed-2", "CAS", "acknowledged", False, [stridor.episode_id]),
    ]
    ward.save_alarms()
    store.close()

    clock.now = NOW
    store = History(where, clock=clock)
    ward = started(store, clock)  # the store's list, then the retained status
    restored = listed(ward)  # bed-3's crackle held for its summary, which does not come
    assert [row[:3] for row in restored] == [row[:3] for row in before]
    assert ward.handle(*status("offline", reason, NOW - 10))
    if reason == SHUTDOWN_REASON:
        assert listed(ward) == [("bed-1", "apnoea", "alarming", False, [])]
        [bed] = [b for b in ward.snapshot()["beds"] if b["stream_id"] == "bed-1"]
        last = bed["events"][0]
        assert (last["episode_id"], last["state"], last["end_utc"], last["ended_by"]) == (
            apnoea.episode_id, "ended", format_utc(NOW - 10), STOPPED_END)  # fmt: skip
        ward.acknowledge_sent(DEVICE, "bed-1", "apnoea", "nurse")
        assert listed(ward) == []
    else:
        assert listed(ward) == restored
        ward.acknowledge_sent(DEVICE, "bed-1", "apnoea", "nurse")
        [first, *_] = ward.alarms()
        assert (first["condition"], first["state"], first["latched"], first["ack_sent"]) == (
            "apnoea", "acknowledged", True, True)  # fmt: skip
    after = listed(ward)
    assert ward.handle(*status("online", "connected", NOW))  # it starts again
    assert listed(ward) == after
    ward.save_alarms()
    store.flush()
    kept = store.restore()
    still_open = {e.episode_id for e in kept.open_events}
    if reason == SHUTDOWN_REASON:
        assert (still_open, kept.alarms) == (set(), [])
    else:
        assert still_open == {apnoea.episode_id, stridor.episode_id}
        assert len(kept.alarms) == 3
    store.close()

    store = History(where, clock=clock)
    ward = started(store, clock)  # and again: what ended stays ended
    assert listed(ward) == after
    store.close()


@pytest.mark.parametrize("how", ["withdrawn", "unlisted"])
def test_a_restored_episode_its_summary_drops_stays_ended_after_the_next_restart(
    where: str | Path, how: str
) -> None:
    """bed-1 holds a latched stridor, bed-2 a wheeze the nurse acknowledged while it goes on.
    The view stops and starts again and lists both. bed-1's stream ends (its retained summary
    withdrawn: an empty message) or its summary no longer lists the stridor (acknowledged on
    the device meanwhile): the stridor ends, acknowledged there, and leaves the list, in the
    history too; bed-2's summary still lists its wheeze, which stays. The view restarts again:
    the stridor is not listed again and the history holds no open episode of it."""
    clock = Clock(NOW - 60)

    store = History(where, clock=clock)
    ward = started(store, clock)
    stridor = onset("Stridor", NOW - 50, priority="high")
    assert send(ward, stridor)
    assert send(ward, stridor.ongoing(detail={**stridor.detail, "latched": True}))
    wheeze = onset("Wheeze", NOW - 40, bed="bed-2")
    assert send(ward, wheeze)
    clock.now = NOW - 20
    ward.acknowledge_sent(DEVICE, "bed-2", "CAS", "nurse")
    before = listed(ward)
    assert before == [
        ("bed-1", "CAS", "alarming", True, [stridor.episode_id]),
        ("bed-2", "CAS", "acknowledged", False, [wheeze.episode_id]),
    ]
    ward.save_alarms()
    store.close()

    clock.now = NOW
    store = History(where, clock=clock)
    ward = started(store, clock)  # the store's list, then the devices' retained summaries
    assert listed(ward) == before
    held = {"episode_id": wheeze.episode_id, "type": "Wheeze", "kind": "physiological",
            "priority": wheeze.priority, "start_utc": wheeze.start_utc,
            "key": wheeze.detail["key"], "latched": False}  # fmt: skip
    assert ward.handle(*summary("bed-2", [held]))
    if how == "withdrawn":
        assert ward.handle(summary_topic(SITE, DEVICE, "bed-1"), b"")
        # released by the stream's end, acknowledged by no one: listed until someone does
        assert listed(ward)[0] == ("bed-1", "CAS", "alarming", False, [])
        ward.acknowledge_sent(DEVICE, "bed-1", "CAS", "nurse")
    else:
        assert ward.handle(*summary("bed-1", []))
    after = listed(ward)
    assert after == [("bed-2", "CAS", "acknowledged", False, [wheeze.episode_id])]
    ward.save_alarms()
    store.close()

    store = History(where, clock=clock)
    kept = store.restore()
    ward = started(store, clock)  # and again, before any retained message: what ended stays ended
    assert listed(ward) == after
    assert {e.episode_id for e in kept.open_events} == {wheeze.episode_id}
    assert [(s, r["condition"], r["open"]) for _, s, r in kept.alarms] == [
        ("bed-2", "CAS", [wheeze.episode_id])]  # fmt: skip
    # bed-1's card: the stridor's end, from the history
    [bed] = [b for b in ward.snapshot()["beds"] if b["stream_id"] == "bed-1"]
    last = bed["events"][0]
    ended_by = "end of stream" if how == "withdrawn" else "acknowledge"
    assert (last["episode_id"], last["state"], last["end_utc"], last["ended_by"]) == (
        stridor.episode_id, "ended", format_utc(NOW), ended_by)  # fmt: skip
    store.close()


def test_a_shutdown_leaves_what_the_device_holds_over_its_restart() -> None:
    """A runtime with an alarm store keeps its unacknowledged alarms over a clean shutdown and
    lists them in the bed's retained summary: the view keeps them listed, latched, with the
    acknowledge the nurse sent still waiting for the device; what the summary does not list
    ends."""
    clock = Clock(NOW - 60)
    ward = Ward(SITE, DashboardConfig(alarms=AlarmSettings(hold_s=0.0)), clock=clock)
    apnoea = onset("apnoea", NOW - 50)
    assert send(ward, apnoea)
    latched = apnoea.ongoing(detail={**apnoea.detail, "latched": True})
    assert send(ward, latched)
    wheeze = onset("Wheeze", NOW - 45, bed="bed-2")
    assert send(ward, wheeze)
    clock.now = NOW - 30
    ward.acknowledge_sent(DEVICE, "bed-1", "apnoea", "nurse")
    held = {"episode_id": apnoea.episode_id, "type": "apnoea", "kind": "physiological",
            "priority": apnoea.priority, "start_utc": apnoea.start_utc,
            "key": apnoea.detail["key"], "latched": True}  # fmt: skip
    assert ward.handle(*summary("bed-1", [held]))  # the device holds it over the restart
    assert ward.handle(*status("offline", SHUTDOWN_REASON, NOW - 20))
    rows = {r["stream_id"]: r for r in ward.alarms()}
    first = rows["bed-1"]
    assert (first["condition"], first["latched"], first["open_episodes"], first["ack_sent"]) == (
        "apnoea", True, [apnoea.episode_id], True)  # fmt: skip
    assert rows["bed-2"]["open_episodes"] == []  # not held: its stream ended


@pytest.mark.parametrize("status_first", [False, True])
def test_what_the_device_holds_over_a_shutdown_stays_listed_after_the_views_restart(
    where: str | Path, status_first: bool
) -> None:
    """The view restarts while the device is shut down holding its latched apnoea (an alarm
    store): its retained summary and its status come in either order, and the apnoea is
    listed, latched, either way."""
    clock = Clock(NOW - 60)

    store = History(where, clock=clock)
    ward = started(store, clock)
    apnoea = onset("apnoea", NOW - 50)
    assert send(ward, apnoea)
    assert send(ward, apnoea.ongoing(detail={**apnoea.detail, "latched": True}))
    ward.save_alarms()
    store.close()

    clock.now = NOW
    store = History(where, clock=clock)
    ward = started(store, clock)
    held = {"episode_id": apnoea.episode_id, "type": "apnoea", "kind": "physiological",
            "priority": apnoea.priority, "start_utc": apnoea.start_utc,
            "key": apnoea.detail["key"], "latched": True}  # fmt: skip
    retained = [summary("bed-1", [held]), status("offline", SHUTDOWN_REASON, NOW - 30)]
    for message in reversed(retained) if status_first else retained:
        assert ward.handle(*message)
    [row] = ward.alarms()
    assert (row["condition"], row["state"], row["latched"], row["open_episodes"]) == (
        "apnoea", "alarming", True, [apnoea.episode_id])  # fmt: skip
    store.close()


def test_a_shutdown_ends_only_what_started_before_it() -> None:
    """An old ``shutdown`` status that comes late ends nothing its device started since."""
    clock = Clock(NOW)
    ward = Ward(SITE, DashboardConfig(alarms=AlarmSettings(hold_s=0.0)), clock=clock)
    old, new = onset("Wheeze", NOW - 60), onset("apnoea", NOW - 5, bed="bed-2")
    for event in (old, new):
        assert send(ward, event)
    assert ward.handle(*status("offline", SHUTDOWN_REASON, NOW - 30))
    assert [(r["stream_id"], r["open_episodes"]) for r in ward.alarms()] == [
        ("bed-2", [new.episode_id]), ("bed-1", [])]  # fmt: skip


def test_an_unreadable_alarm_in_the_store_costs_only_itself(where: str | Path) -> None:
    """A row of the alarm list that is not a record (a damaged file, a hand edit) is left
    out and reported as not stored; the other alarms are listed and the view starts."""
    clock = Clock(NOW)
    failures: list[str] = []
    store = History(where, clock=clock)
    ward = Ward(SITE, history=store, clock=clock)
    assert send(ward, onset("Wheeze", NOW - 10))
    ward.save_alarms()
    store.set_alarm(DEVICE, "bed-2", "DAS", {"condition": "DAS"})  # fields missing
    store.flush()
    backend = store.backend
    db = backend.connect()
    with backend.transaction(db):
        db.execute(backend.sql("INSERT INTO alarms VALUES (?,?,?,?,?)"),
                   (DEVICE, "bed-3", "CAS", "{not json", NOW))  # fmt: skip
    db.close()
    store.close()
    store = History(where, clock=clock, on_failure=failures.append)
    ward = Ward(SITE, history=store, clock=clock)
    ward.restore(store.restore())
    assert [(r["stream_id"], r["condition"]) for r in ward.alarms()] == [("bed-1", "CAS")]
    assert len(failures) == 1, failures
    assert "bed-3" in failures[0]
    assert ward.rejected_reasons == {"not_stored": 1}, ward.last_rejected
    store.close()


def test_an_alarm_latched_before_the_view_started_is_listed_from_the_summary() -> None:
    ward = Ward(
        SITE, DashboardConfig(alarms=AlarmSettings(hold_s=0.0))
    )  # no history: a first start
    stridor = onset("Stridor", NOW - 100, priority="high")
    row = {"episode_id": stridor.episode_id, "type": "Stridor", "kind": "physiological",
           "priority": "high", "start_utc": stridor.start_utc, "confidence": 0.9,
           "latched": True, "key": stridor.detail["key"]}  # fmt: skip
    assert ward.handle(*summary(open_rows=[row]))
    [alarm] = ward.alarms()
    assert alarm["episode_id"] == stridor.episode_id
    assert (alarm["condition"], alarm["types"], alarm["priority"], alarm["latched"]) == (
        "CAS", ["Stridor"], "high", True)  # fmt: skip
    assert alarm["bed_name"] == "Bed 4 (Mrs A.)"
    assert ward.acknowledgeable(DEVICE, alarm["stream_id"], "CAS")  # a late view acknowledges it
    # its acknowledged end arrives (acknowledged on the device): the alarm leaves
    detail = {**stridor.detail, "ended_by": "acknowledge"}
    assert send(ward, stridor.ended(format_utc(NOW), stridor.start_sample + 8000, detail=detail))
    assert ward.alarms() == []


def test_a_summary_or_clip_for_another_bed_or_malformed_is_rejected_naming_why() -> None:
    ward = Ward(SITE)
    topic, payload = summary("bed-1")
    assert not ward.handle(summary_topic(SITE, DEVICE, "bed-2"), payload)
    assert "summary must be for 'bed-2'" in str(ward.last_rejected)
    [(_, part)] = clip_messages(a_clip("ep-x", seconds=1.0))
    body = json.loads(part)
    body["data"] = base64.b64encode(b"not the clip").decode()
    assert not ward.handle(topic.replace("/summary", "/evidence"), json.dumps(body).encode())
    assert "sha256" in str(ward.last_rejected)
    assert ward.clips == set()


def test_a_clip_that_comes_before_any_message_of_its_bed_leaves_the_pages_feed_whole() -> None:
    """Under load a bed's evidence clip can reach the view before its episode's onset (they
    travel apart): the clip is kept, and the next changes for the pages are built (they
    raised KeyError for the bed the clip named, which the view did not hold yet)."""
    ward = Ward(SITE)
    assert send(ward, onset("Wheeze", NOW - 90, bed="bed-1"))
    ward.take_changes()
    wheeze = onset("Wheeze", NOW - 60, bed="bed-2")
    send_clip(ward, a_clip(wheeze.episode_id, bed="bed-2"))
    assert wheeze.episode_id in ward.clips
    ward.take_changes()
    assert send(ward, wheeze)
    changes = ward.take_changes()
    assert changes is not None
    assert [bed["stream_id"] for bed in changes["beds"]] == ["bed-2"]


def test_a_clip_naming_another_devices_episode_is_refused(where: str | Path) -> None:
    """Device B's clip carrying an episode id of device A's bed is refused (counted); A's
    own clip is kept and, once stored, a second clip for the episode does not replace it."""
    store = History(where, clock=Clock(), site=SITE)
    ward = Ward(SITE, history=store)
    wheeze = onset("Wheeze", NOW - 30)
    assert send(ward, wheeze)
    theirs = a_clip(wheeze.episode_id, seed=1)
    forged = dataclasses.replace(theirs, device_id="dev-b")
    for topic, payload in clip_messages(forged, part_bytes=8192):
        ward.handle(topic, payload.encode())
    assert "sends clips of its own beds' episodes only" in str(ward.last_rejected)
    assert ward.clips == set()
    mine = a_clip(wheeze.episode_id, seed=2)
    send_clip(ward, mine)
    store.add_clip(a_clip(wheeze.episode_id, seed=3))  # a late second copy
    store.flush()
    assert store.clip(wheeze.episode_id)[1] == mine.flac  # type: ignore[index]
    store.close()


# -- the routes on a real server ---------------------------------------------------------------
def get(url: str, user: str | None = None, password: str | None = None) -> tuple[int, bytes, str]:
    headers = {}
    if user is not None:
        secret = password if password is not None else USERS[user][1]
        headers["Authorization"] = "Basic " + base64.b64encode(
            f"{user}:{secret}".encode()).decode()  # fmt: skip
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read(), r.headers.get_content_type()
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers.get_content_type()


def publish(port: int, messages: list[tuple[str, str | bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.username_pw_set(BROKER_USER, BROKER_PASSWORD)
    client.connect(HOST, port)
    client.loop_start()
    for topic, payload in messages:
        client.publish(topic, payload, qos=1).wait_for_publish(5.0)
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    password_file = make_password_file(tmp_path, BROKER_USER, BROKER_PASSWORD)
    with Mosquitto(tmp_path, password_file=password_file) as running:
        yield running


def test_evidence_needs_a_named_user_and_comes_as_flac_picture_and_description(
    tmp_path: Path, broker: Mosquitto
) -> None:
    users = tuple(DashboardUser(**user_entry(n, r, p)) for n, (r, p) in USERS.items())  # type: ignore[arg-type]
    config = DashboardConfig(port=0, users=users, history_path=str(tmp_path / "h.sqlite"))
    mqtt_config = MqttConfig(host=HOST, port=broker.port, username=BROKER_USER,
                             password=BROKER_PASSWORD, connect_timeout_s=5.0)  # fmt: skip
    wheeze = onset("Wheeze", time.time() - 60)  # in the trend's last hour
    clip = a_clip(wheeze.episode_id, seconds=6.0)
    with DashboardServer(config, mqtt_config, SITE) as server:
        wait_until(server.feed.connected.is_set, 10.0, "the view connected")
        publish(broker.port, [(wheeze.topic, wheeze.to_json()), *clip_messages(clip, 8192)])
        wait_until(lambda: wheeze.episode_id in server.ward.clips, 10.0, "the clip assembled")
        base = f"{server.url}api/evidence/{wheeze.episode_id}"

        assert get(base + ".flac")[0] == 401  # no credentials
        assert get(base + ".flac", "porter", "wrong")[0] == 401
        status, flac, kind = get(base + ".flac", "porter")  # a view user may listen
        assert (status, kind) == (200, "audio/flac")
        assert flac == clip.flac
        assert soundfile.info(io.BytesIO(flac)).duration == pytest.approx(6.0)
        status, png, kind = get(base + ".png", "nurse")
        assert (status, kind, png[:8]) == (200, "image/png", b"\x89PNG\r\n\x1a\n")
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert width > 300
        assert height > 100
        status, raw, _ = get(base, "nurse")
        about = json.loads(raw)
        assert status == 200
        assert (about["event_type"], about["stream_id"], about["outputs"]) == (
            "Wheeze", "bed-1", list(OUTPUTS))  # fmt: skip
        assert about["duration_s"] == pytest.approx(6.0)
        assert about["event_offset_s"] == pytest.approx(3.0)
        assert get(f"{server.url}api/evidence/no-such-episode.flac", "nurse")[0] == 404
        assert get(f"{server.url}api/evidence/..%2Fetc.flac", "nurse")[0] == 404

        status, raw, _ = get(f"{server.url}api/trend/{DEVICE}/bed-1?hours=3", "porter")
        trend = json.loads(raw)
        assert status == 200
        assert sum(trend["onsets"]["CAS"]) == 1
        assert len(trend["hours"]) == 3
        assert get(f"{server.url}api/trend/{DEVICE}/bed-1?hours=500", "porter")[0] == 400
        assert get(f"{server.url}api/trend/{DEVICE}/bed-1?hours=3")[0] == 401

        # what the page gets never holds the broker's credentials
        pages = [get(server.url + p, "porter") for p in ("", "static/app.js", "api/state")]
        assert [status for status, _, _ in pages] == [200, 200, 200]
        token = base64.b64encode(f"porter:{USERS['porter'][1]}".encode()).decode()
        request = urllib.request.Request(server.url + "events",
                                         headers={"Authorization": f"Basic {token}"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as stream:
            snapshot = b"".join(stream.readline() for _ in range(4))
        assert b"event: snapshot" in snapshot
        for body in [snapshot, *(body for _, body, _ in pages)]:
            assert BROKER_PASSWORD.encode() not in body
            assert BROKER_USER.encode() not in body


def test_without_named_users_nobody_listens(tmp_path: Path, broker: Mosquitto) -> None:
    """The loopback demo (no users): the ward view works, its audio answers 401 with why."""
    config = DashboardConfig(port=0, history_path=str(tmp_path / "h.sqlite"))
    mqtt_config = MqttConfig(host=HOST, port=broker.port, username=BROKER_USER,
                             password=BROKER_PASSWORD, connect_timeout_s=5.0)  # fmt: skip
    with DashboardServer(config, mqtt_config, SITE) as server:
        status, raw, _ = get(f"{server.url}api/evidence/ep-1.flac")
        assert status == 401
        assert "view or ack role" in json.loads(raw)["error"]
        assert get(f"{server.url}api/trend/{DEVICE}/bed-1")[0] == 200


def test_a_device_cannot_fill_the_history_with_verdicts(tmp_path: Path) -> None:
    """1,000 verdicts a second apart, each with 20 kB of fields the contract does not have
    and times jumping back and forth: the history keeps a verdict on a change of verdict or
    once a minute by its own time, later only, and only the contract's fields."""
    import sqlite3

    path = tmp_path / "history.sqlite"
    store = History(path, clock=Clock(), site=SITE)
    ward = Ward(SITE, history=store)
    base = time.time() - 3600
    for i in range(1000):
        at = base + i + (7200 if i % 2 else 0)
        body = {"schema_version": 1, "site": SITE, "device_id": DEVICE, "stream_id": "bed-1",
                "verdict": "CAS" if i < 500 else "Normal", "window_s": 30.0,
                "utc": format_utc(at), "junk": "x" * 20_000}  # fmt: skip
        assert ward.handle(f"lungwatch/v1/{SITE}/{DEVICE}/bed-1/verdict", json.dumps(body).encode())
    store.flush()
    store.close()
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT body FROM readings WHERE kind = 'verdict'").fetchall()
    # once a minute of the device's own 1,000 s, and the change to Normal: not 1,000 rows
    assert len(rows) <= 1000 / 60 + 3, len(rows)
    assert all("junk" not in body for (body,) in rows)
    assert path.stat().st_size < 2_000_000
