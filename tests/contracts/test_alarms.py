"""Alarm conditions (``lungwatch.alarms``): one per bed and finding, acknowledged, re-alarmed,
escalated and ordered the way a ward reads them; the device acknowledges by condition."""

from __future__ import annotations

from typing import Any

import pytest

from edge.bed.detector import Lifecycle
from lungwatch.alarms import AlarmBook, AlarmSettings, ListedEpisode, condition_of
from lungwatch.errors import ConfigError
from lungwatch.events import Event, kind_of
from tests.brokers import SHA256

SITE, DEVICE = "ward-3", "dev-1"


def episode(type_: str, bed: str = "bed-1", second: int = 0, priority: str | None = None) -> Event:
    values: dict[str, Any] = {
        "type": type_, "site": SITE, "device_id": DEVICE, "stream_id": bed,
        "start_utc": f"2026-05-09T07:{second // 60:02d}:{second % 60:02d}.000Z",
        "start_sample": 8000 * second, "detail": {"key": f"{type_}@{8000 * second}"},
    }  # fmt: skip
    if kind_of(type_) == "physiological":
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


def test_a_condition_alarms_until_acknowledged_then_leaves_hold_s_after_it_is_over() -> None:
    book = AlarmBook(AlarmSettings(hold_s=30.0, continues_s=60.0))
    crackle = episode("Fine Crackle")
    book.take(crackle, 0.0)
    book.take(end(crackle), 5.0)
    [row] = book.conditions(500.0)
    assert (row["state"], row["open_episodes"]) == ("alarming", [])  # latched as a condition
    other = episode("Coarse Crackle", second=600)
    book.take(other, 600.0)
    book.acknowledge(DEVICE, "bed-1", "DAS", 610.0, "nurse")
    assert book.conditions(611.0)[0]["state"] == "acknowledged"
    book.take(end(other), 620.0)
    # crackles recur over breaths: the finding continues continues_s after the last one
    assert book.conditions(679.0)[0]["state"] == "acknowledged"
    assert book.conditions(681.0)[0]["state"] == "ended"
    assert book.conditions(709.0) != []
    assert book.conditions(711.0) == []  # over at 680, held 30 s, gone
    lone = episode("Wheeze", second=700)
    book.take(lone, 700.0)
    book.take(end(lone), 701.0)
    book.acknowledge(DEVICE, "bed-1", "CAS", 800.0)
    assert book.conditions(800.0) == []  # acknowledged once it was over: gone at once


def test_an_acknowledged_finding_that_recurs_stays_one_quiet_row() -> None:
    """A crackle every few breaths after the nurse acknowledged: the row stays, acknowledged
    by her, its episodes counted (it left and came back with each crackle, losing who)."""
    book = AlarmBook(AlarmSettings(realarm_s=600.0, continues_s=60.0))
    first = episode("Fine Crackle", second=0)
    book.take(first, 0.0)
    book.take(end(first), 1.0)
    book.acknowledge(DEVICE, "bed-1", "DAS", 2.0, "nurse")
    for second in range(8, 90, 8):  # over 90 s, each over before the next
        crackle = episode("Fine Crackle", second=second)
        book.take(crackle, float(second))
        [row] = book.conditions(second + 0.5)
        assert (row["state"], row["acknowledged_by"]) == ("acknowledged", "nurse"), second
        book.take(end(crackle), second + 1.0)
        [row] = book.conditions(second + 4.0)
        assert (row["state"], row["acknowledged_by"]) == ("acknowledged", "nurse"), second
    assert book.conditions(90.0)[0]["episodes"] == 12


def test_an_acknowledgement_quiets_a_continuing_finding_until_realarm_s() -> None:
    book = AlarmBook(AlarmSettings(realarm_s=100.0, hold_s=10.0, continues_s=60.0))
    first = episode("Wheeze", second=0)
    book.take(first, 0.0)
    assert book.acknowledge(DEVICE, "bed-1", "CAS", 5.0) is not None
    second = episode("Rhonchi", second=30)
    book.take(second, 30.0)
    [row] = book.conditions(31.0)
    assert (row["state"], row["episodes"]) == ("acknowledged", 2)
    book.take(end(first), 40.0)
    book.take(end(second), 41.0)
    book.take(episode("Wheeze", second=70), 70.0)  # it continues, inside 100 s: quiet
    assert book.conditions(71.0)[0]["state"] == "acknowledged"
    book.take(episode("Wheeze", second=110), 110.0)  # 105 s after the acknowledgement
    [row] = book.conditions(111.0)
    assert (row["state"], row["episodes"]) == ("alarming", 4)


def test_a_finding_that_is_over_and_starts_again_is_a_new_condition() -> None:
    book = AlarmBook(AlarmSettings(realarm_s=600.0, continues_s=60.0))
    first = episode("Wheeze", second=0)
    book.take(first, 0.0)
    book.take(end(first), 2.0)
    book.acknowledge(DEVICE, "bed-1", "CAS", 10.0, "nurse")
    assert book.conditions(63.0) == []
    again = episode("Wheeze", second=120)  # 110 s after the acknowledgement: a new condition
    book.take(again, 120.0)
    [row] = book.conditions(121.0)
    assert (row["state"], row["episodes"], row["acknowledged_by"]) == ("alarming", 1, None)
    assert row["first_onset_utc"] == again.start_utc


def test_an_episode_ended_by_an_acknowledgement_on_the_device_acknowledges_its_condition() -> None:
    book = AlarmBook()
    stridor = episode("Stridor")
    book.take(stridor, 0.0)
    detail = {**stridor.detail, "ended_by": "acknowledge", "acknowledged_by": "nurse-b"}
    book.take(stridor.ended(stridor.start_utc, 0, detail=detail), 3.0)
    assert book.conditions(4.0) == []


@pytest.mark.parametrize("how", ["view", "device"])
def test_a_new_apnoea_after_an_acknowledged_one_alarms_at_once(how: str) -> None:
    """An apnoea that starts 68 s after the nurse acknowledged the bed's previous one is a
    new alarm condition (IEC 60601-1-8: an acknowledgement applies to the condition present
    when it is given): alarming, high, the top row, whatever ``realarm_s`` says."""
    book = AlarmBook(AlarmSettings(realarm_s=600.0))
    book.take(episode("Wheeze", bed="bed-2", second=0), 0.0)
    first = episode("apnoea", second=10)
    book.take(first, 10.0)
    latched = first.ongoing(detail={**first.detail, "latched": True})
    book.take(latched, 20.0)  # breathing again: latched on the device
    if how == "view":
        book.acknowledge(DEVICE, "bed-1", "apnoea", 30.0, "nurse")
    detail = {**latched.detail, "ended_by": "acknowledge", "acknowledged_by": "nurse"}
    book.take(latched.ended(latched.start_utc, latched.start_sample, detail=detail), 30.1)
    assert [r["condition"] for r in book.conditions(31.0)] == ["CAS"]
    second = episode("apnoea", second=98)
    book.take(second, 98.0)  # 68 s after the acknowledgement
    top = book.conditions(99.0)[0]
    assert (top["stream_id"], top["condition"], top["state"], top["priority"]) == (
        "bed-1", "apnoea", "alarming", "high",
    )  # fmt: skip
    assert top["acknowledged_by"] is None


def test_a_high_condition_does_not_continue_past_its_episodes() -> None:
    """Stridor acknowledged while heard; a second stridor episode sounds again (a new
    high-priority episode is always heard); acknowledged, over, and heard again 5 s later:
    a new condition (a continuing finding below high priority would be quiet)."""
    book = AlarmBook(AlarmSettings(realarm_s=600.0, continues_s=60.0))
    first = episode("Stridor", second=0)
    book.take(first, 0.0)
    book.acknowledge(DEVICE, "bed-1", "CAS", 1.0, "nurse")
    assert book.conditions(1.5)[0]["state"] == "acknowledged"
    second = episode("Stridor", second=2)
    book.take(second, 2.0)
    assert book.conditions(2.5)[0]["state"] == "alarming"
    book.acknowledge(DEVICE, "bed-1", "CAS", 3.0, "nurse")
    book.take(end(first), 3.0)
    book.take(end(second), 4.0)
    assert book.conditions(4.5) == []
    book.take(episode("Stridor", second=9), 9.0)
    [row] = book.conditions(9.5)
    assert (row["state"], row["priority"], row["episodes"]) == ("alarming", "high", 1)


def test_an_old_episodes_acknowledged_end_does_not_quiet_a_new_condition() -> None:
    """The device confirms the acknowledge of the previous apnoea's latched episode only
    after a new apnoea started (a device that was slow to confirm): the new one still alarms."""
    book = AlarmBook()
    first = episode("apnoea", second=0)
    book.take(first, 0.0)
    latched = first.ongoing(detail={**first.detail, "latched": True})
    book.take(latched, 20.0)
    book.acknowledge(DEVICE, "bed-1", "apnoea", 30.0, "nurse")  # sent; the device is slow
    book.take(episode("apnoea", second=60), 60.0)
    detail = {**latched.detail, "ended_by": "acknowledge", "acknowledged_by": "nurse"}
    book.take(latched.ended(latched.start_utc, latched.start_sample, detail=detail), 61.0)
    [row] = book.conditions(62.0)
    assert (row["state"], row["episodes"]) == ("alarming", 1)


def test_a_high_or_life_threatening_episode_sounds_in_a_continuing_acknowledged_condition() -> None:
    """Wheezes acknowledged and going on, then a stridor (high) in the same family: it
    alarms at once. An apnoea a device set to medium is still life-threatening: acknowledged
    and going on, a new apnoea episode raises it; over, the next one is a new condition
    however soon."""
    book = AlarmBook(AlarmSettings(realarm_s=600.0, continues_s=60.0))
    book.take(episode("Wheeze", second=0), 0.0)
    book.acknowledge(DEVICE, "bed-1", "CAS", 1.0, "nurse")
    book.take(episode("Wheeze", second=5), 5.0)
    assert book.conditions(5.5)[0]["state"] == "acknowledged"
    book.take(episode("Stridor", second=8), 8.0)
    [row] = book.conditions(8.5)
    assert (row["state"], row["priority"], row["episodes"]) == ("alarming", "high", 3)
    quiet = AlarmBook(AlarmSettings(realarm_s=600.0, continues_s=60.0))
    first = episode("apnoea", bed="bed-2", second=0, priority="medium")
    quiet.take(first, 0.0)
    quiet.acknowledge(DEVICE, "bed-2", "apnoea", 1.0, "nurse")
    quiet.take(episode("apnoea", bed="bed-2", second=3, priority="medium"), 3.0)
    assert quiet.conditions(3.5)[0]["state"] == "alarming"  # live: raised again
    quiet.acknowledge(DEVICE, "bed-2", "apnoea", 4.0, "nurse")
    for event in list(quiet.get((DEVICE, "bed-2", "apnoea")).open.values()):  # type: ignore[union-attr]
        quiet.take(end(event), 5.0)  # type: ignore[arg-type]
    quiet.take(episode("apnoea", bed="bed-2", second=10, priority="medium"), 10.0)
    [row] = quiet.conditions(10.5)
    assert (row["state"], row["episodes"]) == ("alarming", 1)  # over: a new condition


def test_a_late_confirmation_of_an_old_acknowledge_quiets_no_new_apnoea() -> None:
    """The device's ack message of the first apnoea's acknowledge arrives again (QoS 1)
    after a new apnoea started: older than the new alarm's start, it acknowledges nothing;
    an acknowledge taken after the new start does."""
    book = AlarmBook()
    first = episode("apnoea", second=0)
    book.take(first, 0.0)
    book.acknowledge(DEVICE, "bed-1", "apnoea", 30.0, "nurse")
    book.take(end(first), 31.0)
    second = episode("apnoea", second=90)
    book.take(second, 90.0)
    book.device_took_ack(DEVICE, "bed-1", "apnoea", 91.0, "nurse", "2026-05-09T07:00:30.000Z")
    assert book.conditions(92.0)[0]["state"] == "alarming"
    book.device_took_ack(DEVICE, "bed-1", "apnoea", 95.0, "nurse", "2026-05-09T07:01:35.000Z")
    assert book.conditions(96.0)[0]["state"] == "acknowledged"


def test_a_late_end_of_an_episode_whose_condition_is_over_starts_nothing() -> None:
    book = AlarmBook(AlarmSettings(continues_s=0.0))
    crackle = episode("Fine Crackle")
    book.take(crackle, 0.0)
    book.acknowledge(DEVICE, "bed-1", "DAS", 1.0, "nurse")
    book.take(end(crackle), 2.0)
    assert book.conditions(3.0) == []
    assert book.take(end(crackle), 10.0) is None  # repeated by a broker, or late
    assert book.conditions(11.0) == []
    book.retire(["ep-from-the-store"])
    late = ListedEpisode("ep-from-the-store", DEVICE, "bed-3", "Wheeze", "physiological",
                         "medium", "ended", "2026-05-09T06:00:00.000Z", {})  # fmt: skip
    assert book.take(late, 12.0) is None


def test_a_restored_condition_is_held_until_its_beds_summary_says() -> None:
    """A restarted view's acknowledged condition whose latched episode it knew only from
    the bed's summary stays listed (acknowledged, by whom) until that summary comes: then
    it is listed from the summary's episode, or over if the device no longer holds it."""
    book = AlarmBook()
    listed = ListedEpisode("ep-1", DEVICE, "bed-1", "apnoea", "physiological", "high",
                           "ongoing", "2026-05-09T07:00:00.000Z",
                           {"key": "apnoea@1", "latched": True})  # fmt: skip
    book.take(listed, 0.0)
    book.acknowledge(DEVICE, "bed-1", "apnoea", 5.0, "nurse")
    record = book.get((DEVICE, "bed-1", "apnoea")).record()  # type: ignore[union-attr]
    again = AlarmBook()
    again.restore(DEVICE, "bed-1", record)
    [row] = again.conditions(100.0)  # before any summary
    assert (row["state"], row["acknowledged_by"]) == ("acknowledged", "nurse")
    again.take(listed, 101.0)  # the summary still lists it
    again.release_held(DEVICE, "bed-1")
    assert again.conditions(102.0)[0]["state"] == "acknowledged"
    gone = AlarmBook()
    gone.restore(DEVICE, "bed-1", record)
    gone.release_held(DEVICE, "bed-1")  # the summary lists nothing any more
    assert gone.conditions(103.0) == []


def test_the_order_puts_apnoea_first_and_holds_still() -> None:
    """Alarming before acknowledged before ended; then priority; within high, apnoea first;
    then the condition that started alarming last. A new episode of a condition that
    already alarms does not move it."""
    book = AlarmBook()
    book.take(episode("Wheeze", bed="bed-1", second=0), 0.0)  # medium
    book.take(episode("Stridor", bed="bed-2", second=10), 10.0)  # high
    book.take(episode("Fine Crackle", bed="bed-3", second=20), 20.0)  # low
    book.take(episode("apnoea", bed="bed-5", second=25), 25.0)  # high, life-threatening
    book.take(episode("Wheeze", bed="bed-4", second=30), 30.0)  # medium, newer
    book.take(episode("Stridor", bed="bed-6", second=35), 35.0)  # high, newer than apnoea
    order = [(r["stream_id"], r["priority"]) for r in book.conditions(41.0)]
    expected = [("bed-5", "high"), ("bed-6", "high"), ("bed-2", "high"), ("bed-4", "medium"),
                ("bed-1", "medium"), ("bed-3", "low")]  # fmt: skip
    assert order == expected
    for second in range(42, 60, 3):  # more episodes of the older ones: nothing moves
        book.take(episode("Wheeze", bed="bed-1", second=second), float(second))
        book.take(episode("Stridor", bed="bed-2", second=second + 1), second + 1.0)
        assert [(r["stream_id"], r["priority"]) for r in book.conditions(second + 2.0)] == expected
    book.acknowledge(DEVICE, "bed-5", "apnoea", 62.0, "nurse-a")
    rows = book.conditions(63.0)
    assert rows[-1]["stream_id"] == "bed-5"
    assert rows[-1]["state"] == "acknowledged"
    assert rows[-1]["acknowledged_by"] == "nurse-a"


def test_escalation_stops_at_medium_and_apnoea_stays_on_top() -> None:
    """Ten minutes of unacknowledged advisory findings: crackles and a fast rate rise from
    low to medium and no further; stridor keeps its own high; the apnoea raised at minute 8
    is the top row through new crackle episodes (they sorted above it)."""
    book = AlarmBook(AlarmSettings(escalate_after_s=300.0))
    book.take(episode("Fine Crackle", bed="bed-1", second=0), 0.0)
    book.take(episode("tachypnoea", bed="bed-2", second=1), 1.0)
    book.take(episode("poor_signal", bed="bed-3", second=2), 2.0)
    book.take(episode("Stridor", bed="bed-4", second=3), 3.0)
    book.take(episode("apnoea", bed="bed-5", second=480), 480.0)
    for second in range(481, 600, 7):
        book.take(episode("Fine Crackle", bed="bed-1", second=second), float(second))
        rows = book.conditions(second + 0.5)
        assert (rows[0]["stream_id"], rows[0]["condition"]) == ("bed-5", "apnoea")
    rows = {r["stream_id"]: r for r in book.conditions(650.0)}
    assert {b: r["priority"] for b, r in rows.items()} == {
        "bed-1": "medium", "bed-2": "medium", "bed-3": "medium", "bed-4": "high",
        "bed-5": "high",
    }  # fmt: skip
    assert (rows["bed-1"]["escalated"], rows["bed-4"]["escalated"]) == (True, False)
    book.acknowledge(DEVICE, "bed-1", "DAS", 651.0)
    assert {r["stream_id"]: r["priority"] for r in book.conditions(652.0)}["bed-1"] == "low"
    never = AlarmBook(AlarmSettings(escalate_after_s=0.0))
    never.take(episode("Fine Crackle"), 0.0)
    assert never.conditions(1e6)[0]["priority"] == "low"


def test_a_conditions_record_restores_it_as_it_was() -> None:
    """What a view's store keeps: state, escalation, count, who acknowledged; its open
    episodes are not counted twice when their messages come back."""
    settings = AlarmSettings(escalate_after_s=60.0)
    book = AlarmBook(settings)
    crackle = episode("Fine Crackle", second=0)
    book.take(crackle, 0.0)
    book.take(end(crackle), 1.0)
    wheeze = episode("Wheeze", bed="bed-2", second=5)
    book.take(wheeze, 5.0)
    book.acknowledge(DEVICE, "bed-2", "CAS", 6.0, "nurse")
    book.add_clip(wheeze.episode_id)
    records = {k: book.get(k).record() for k in book.take_changed() if book.get(k)}  # type: ignore[union-attr]
    again = AlarmBook(settings)
    for (device, bed, _), record in records.items():
        again.restore(device, bed, record)
    again.take(wheeze, 100.0)  # its message, from the view's store: not a new episode
    before = {(r["stream_id"], r["condition"]): r for r in book.conditions(100.0)}
    after = {(r["stream_id"], r["condition"]): r for r in again.conditions(100.0)}
    assert after == before
    assert after[("bed-1", "DAS")]["priority"] == "medium"  # escalated, still
    assert after[("bed-2", "CAS")]["acknowledged_by"] == "nurse"
    assert again.owner(wheeze.episode_id) == ("dev-1", "bed-2")


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
