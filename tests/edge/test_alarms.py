"""Alarm conditions (``lungwatch.alarms``): one per bed and finding, acknowledged, re-alarmed,
escalated and ordered the way a ward reads them; the device acknowledges by condition."""

from __future__ import annotations

from typing import Any

import pytest

from edge.bed.detector import Lifecycle
from lungwatch.alarms import AlarmBook, AlarmSettings, ListedEpisode, condition_of
from lungwatch.errors import ConfigError
from lungwatch.events import Event
from tests.edge.brokers import SHA256

SITE, DEVICE = "ward-3", "dev-1"


def episode(type_: str, bed: str = "bed-1", second: int = 0, priority: str | None = None) -> Event:
    values: dict[str, Any] = {
        "type": type_, "site": SITE, "device_id": DEVICE, "stream_id": bed,
        "start_utc": f"2026-05-09T07:{second // 60:02d}:{second % 60:02d}.000Z",
        "start_sample": 8000 * second, "detail": {"key": f"{type_}@{8000 * second}"},
    }  # fmt: skip
    if type_ in ("Fine Crackle", "Coarse Crackle", "Wheeze", "Rhonchi", "Stridor", "apnoea"):
        values.update(confidence=0.9, model_id="edge-test", model_sha256=SHA256)
    if priority is not None:
        values["priority"] = priority
    return Event.onset(**values)


def end(event: Event) -> Event:
    return event.ended(event.start_utc, event.start_sample)


def test_conditions_group_a_beds_episodes_by_finding() -> None:
    assert [condition_of(t) for t in ("Wheeze", "Stridor", "Rhonchi", "Wheeze+Crackle")] == [
        "CAS"
    ] * 4
    assert [condition_of(t) for t in ("Fine Crackle", "Coarse Crackle")] == ["DAS", "DAS"]
    assert condition_of("apnoea") == "apnoea"
    assert condition_of("poor_signal") == "poor_signal"
    book = AlarmBook(AlarmSettings(hold_s=30.0))
    for second in range(0, 100, 10):  # ten crackle episodes, each over before the next
        crackle = episode("Fine Crackle", second=second)
        book.take(crackle, float(second))
        book.take(end(crackle), second + 2.0)
    book.take(episode("Coarse Crackle", second=100), 100.0)
    book.take(episode("Wheeze", second=101), 101.0)
    book.take(episode("Fine Crackle", bed="bed-2", second=102), 102.0)
    rows = book.conditions(103.0)
    assert sorted((r["stream_id"], r["condition"]) for r in rows) == [
        ("bed-1", "CAS"), ("bed-1", "DAS"), ("bed-2", "DAS")
    ]  # fmt: skip
    das = next(r for r in rows if (r["stream_id"], r["condition"]) == ("bed-1", "DAS"))
    assert das["episodes"] == 11
    assert das["first_onset_utc"] == "2026-05-09T07:00:00.000Z"
    assert das["last_episode_utc"] == "2026-05-09T07:01:40.000Z"
    assert das["state"] == "alarming"
    assert das["types"] == ["Coarse Crackle"]


def test_a_condition_alarms_until_acknowledged_then_leaves_hold_s_after_its_episodes() -> None:
    book = AlarmBook(AlarmSettings(hold_s=30.0))
    crackle = episode("Fine Crackle")
    book.take(crackle, 0.0)
    book.take(end(crackle), 5.0)
    [row] = book.conditions(500.0)
    assert (row["state"], row["open_episodes"]) == ("alarming", [])  # latched as a condition
    other = episode("Coarse Crackle", second=600)
    book.take(other, 600.0)
    book.acknowledge(DEVICE, "bed-1", "DAS", 610.0)
    assert book.conditions(611.0)[0]["state"] == "acknowledged"
    book.take(end(other), 620.0)
    assert book.conditions(640.0)[0]["state"] == "ended"
    assert book.conditions(651.0) == []
    lone = episode("Wheeze", second=700)
    book.take(lone, 700.0)
    book.take(end(lone), 701.0)
    book.acknowledge(DEVICE, "bed-1", "CAS", 702.0)
    assert book.conditions(702.0) == []  # acknowledged with its episodes over: gone at once


def test_an_episode_ended_by_an_acknowledgement_on_the_device_acknowledges_its_condition() -> None:
    book = AlarmBook()
    stridor = episode("Stridor")
    book.take(stridor, 0.0)
    detail = {**stridor.detail, "ended_by": "acknowledge", "acknowledged_by": "nurse-b"}
    book.take(stridor.ended(stridor.start_utc, 0, detail=detail), 3.0)
    assert book.conditions(4.0) == []


def test_the_newest_high_priority_alarm_is_first() -> None:
    """Alarming before acknowledged before ended; then priority; then the newest episode."""
    book = AlarmBook()
    book.take(episode("Wheeze", bed="bed-1", second=0), 0.0)  # medium
    book.take(episode("Stridor", bed="bed-2", second=10), 10.0)  # high
    book.take(episode("Fine Crackle", bed="bed-3", second=20), 20.0)  # low
    book.take(episode("Wheeze", bed="bed-4", second=30), 30.0)  # medium, newer
    book.take(episode("apnoea", bed="bed-5", second=40), 40.0)  # high, newest
    order = [(r["stream_id"], r["priority"]) for r in book.conditions(41.0)]
    assert order == [("bed-5", "high"), ("bed-2", "high"), ("bed-4", "medium"),
                     ("bed-1", "medium"), ("bed-3", "low")]  # fmt: skip
    book.acknowledge(DEVICE, "bed-5", "apnoea", 42.0, "nurse-a")
    rows = book.conditions(43.0)
    assert rows[-1]["stream_id"] == "bed-5"
    assert rows[-1]["state"] == "acknowledged"
    assert rows[-1]["acknowledged_by"] == "nurse-a"


def test_after_an_acknowledgement_new_episodes_stay_quiet_until_realarm_s() -> None:
    book = AlarmBook(AlarmSettings(realarm_s=100.0, hold_s=10.0))
    first = episode("Wheeze", second=0)
    book.take(first, 0.0)
    assert book.acknowledge(DEVICE, "bed-1", "CAS", 5.0) is not None
    second = episode("Rhonchi", second=30)
    book.take(second, 30.0)
    [row] = book.conditions(31.0)
    assert (row["state"], row["episodes"]) == ("acknowledged", 2)
    book.take(end(first), 40.0)
    book.take(end(second), 41.0)
    assert book.conditions(60.0) == []  # over, held 10 s, gone
    book.take(episode("Wheeze", second=70), 70.0)  # the condition anew, still inside 100 s
    assert book.conditions(71.0)[0]["state"] == "acknowledged"
    book.take(episode("Wheeze", second=110), 110.0)  # 105 s after the acknowledgement
    assert book.conditions(111.0)[0]["state"] == "alarming"


def test_an_unacknowledged_condition_rises_one_priority_per_escalate_after_s() -> None:
    book = AlarmBook(AlarmSettings(escalate_after_s=60.0))
    book.take(episode("Fine Crackle"), 0.0)
    book.take(episode("poor_signal", bed="bed-2"), 0.0)
    at = {r["stream_id"]: r for r in book.conditions(59.0)}
    assert (at["bed-1"]["priority"], at["bed-1"]["escalated"]) == ("low", False)
    assert book.conditions(61.0)[0]["priority"] == "medium"
    rows = {r["stream_id"]: r for r in book.conditions(125.0)}
    assert (rows["bed-1"]["priority"], rows["bed-1"]["escalated"]) == ("high", True)
    assert rows["bed-2"]["priority"] == "medium"  # technical: no higher than medium
    assert rows["bed-1"]["base_priority"] == "low"
    assert rows["bed-1"] == book.conditions(125.0)[0]  # escalated: first
    book.acknowledge(DEVICE, "bed-1", "DAS", 130.0)
    assert {r["stream_id"]: r["priority"] for r in book.conditions(131.0)}["bed-1"] == "low"
    never = AlarmBook(AlarmSettings(escalate_after_s=0.0))
    never.take(episode("Fine Crackle"), 0.0)
    assert never.conditions(1e6)[0]["priority"] == "low"


def test_targets_clips_and_listed_episodes() -> None:
    book = AlarmBook()
    crackle = episode("Fine Crackle", second=3)
    book.take(crackle, 0.0)
    assert book.find(DEVICE, "bed-1", "DAS") is book.find(DEVICE, "bed-1", "Fine Crackle")
    assert book.find(DEVICE, "bed-1", crackle.detail["key"]) is not None
    assert book.find(DEVICE, "bed-1", "CAS") is None
    assert book.find(DEVICE, "bed-2", "DAS") is None
    assert book.add_clip(crackle.episode_id) is not None
    assert book.add_clip("no-such-episode") is None
    assert book.conditions(1.0)[0]["clip_episode_id"] == crackle.episode_id
    detail = {"key": "apnoea@1", "latched": True}
    listed = ListedEpisode("ep-9", DEVICE, "bed-4", "apnoea", "physiological", "high",
                           "ongoing", "2026-05-09T06:00:00.000Z", detail)  # fmt: skip
    book.take(listed, 2.0)
    top = book.conditions(3.0)[0]
    assert (top["stream_id"], top["condition"], top["latched"]) == ("bed-4", "apnoea", True)
    assert book.acknowledge(DEVICE, "bed-4", "apnoea@1", 4.0) is not None


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="realarm_s"):
        AlarmSettings(realarm_s=-1.0)


def test_the_device_acknowledges_every_episode_of_a_condition() -> None:
    """``Lifecycle.acknowledge("CAS")`` ends latched wheezes and rhonchi, not crackles."""
    life = Lifecycle("physiological", lambda t: "high", ("high",))
    wheeze = life.onset("Wheeze", 0, 10, 0.9)
    rhonchi = life.onset("Rhonchi", 20, 30, 0.9)
    crackle = life.onset("Fine Crackle", 40, 50, 0.9)
    for key in (wheeze, rhonchi, crackle):
        life.close(key, 60)
    life.take()
    life.acknowledge("CAS")
    ended = life.take()
    assert sorted(t.key for t in ended) == sorted([wheeze, rhonchi])
    assert all(t.state == "ended" for t in ended)
    assert life.active_keys == (crackle,)
