"""The ward view's limits without a broker or a browser: what one MQTT message may hold (size,
nesting, numbers) and that nothing in it escapes :meth:`Ward.handle`; silent devices and a
stale broker by the ward's clock; logins that cost the same for an unknown name and are
bounded after failures; the new ``dashboard`` keys' one-line errors."""

from __future__ import annotations

import json
import random
import threading
from typing import Any

import pytest

from lungwatch.events import Event, status_payload
from lungwatch.intake import MessageError, json_depth, parse_message
from lungwatch.passwords import hash_iterations, verify_password
from tests.brokers import SHA256
from tests.wardview.browser import user_entry
from wardview.config import DashboardConfig, DashboardUser
from wardview.login import LoginLimitedError, Logins
from wardview.ward import Ward

SITE, DEVICE = "ward-3", "dev-1"
ROOT = f"lungwatch/v1/{SITE}/{DEVICE}"
DEEP = b"[" * 10_000 + b"]" * 10_000
HUGE_INT = "9" * 401
GENEROUS_S = 30.0  # a guard against a hang, never a bound asserted


def onset(second: int = 0) -> Event:
    return Event.onset(
        type="Wheeze", site=SITE, device_id=DEVICE, stream_id="bed-1",
        start_utc=f"2026-05-09T07:00:{second:02d}.000Z", start_sample=8000 * second,
        confidence=0.9, model_id="edge-test", model_sha256=SHA256, quality={"score": 0.99},
    )  # fmt: skip


def metrics(extra: str = "") -> bytes:
    """A metrics message; ``extra``: raw JSON text put first among its metrics."""
    head = json.dumps({"schema_version": 1, "site": SITE, "device_id": DEVICE,
                       "stream_id": "bed-1", "utc": "2026-05-09T07:00:00.000Z"})  # fmt: skip
    return f'{head[:-1]}, "metrics": {{{extra}"frames": 10}}}}'.encode()


# -- one message ---------------------------------------------------------------------------
def _reference_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_reference_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_reference_depth, value), default=0)
    return 0


def _nest(rng: random.Random, depth: int) -> Any:
    """A JSON value nested exactly ``depth`` deep, with brackets, quotes and backslashes in
    its strings (which must not count)."""
    if depth == 0:
        return rng.choice(['[{"x', 'a\\"]]', "}{", 3, None, "\\", ""])
    inner = [_nest(rng, rng.randrange(min(depth, 3))) for _ in range(rng.randrange(3))]
    inner.insert(rng.randrange(len(inner) + 1), _nest(rng, depth - 1))
    if rng.random() < 0.5:
        return inner
    return {f"k{i}[": v for i, v in enumerate(inner)}


@pytest.mark.parametrize("depth", [0, 1, 2, 5, 31, 32, 33, 200])
def test_the_depth_scan_agrees_with_the_parsed_json(depth: int) -> None:
    rng = random.Random(depth)
    for _ in range(20):
        text = json.dumps(_nest(rng, depth))
        assert json_depth(text) == _reference_depth(json.loads(text)) == depth, text


@pytest.mark.parametrize(
    ("payload", "reason", "text"),
    [
        (DEEP, "too_deep", "JSON nested deeper than 32 levels"),
        (metrics(f'"read_wait_ms_p99": {HUGE_INT}, '), "bad_number",
         "an integer of 401 digits (at most 19)"),
        (metrics('"read_wait_ms_p99": 1e999, '), "bad_number", "the number 1e999 is out of range"),
        (metrics('"read_wait_ms_p99": NaN, '), "bad_number", "NaN is not a JSON number"),
        (b" " * 70_000, "too_large", "70000 bytes, over the limit of 65536"),
        (b'{"a": "\xff"}', "bad_json", "not UTF-8 (invalid start byte at byte 7)"),
        (b"[1, 2]", "bad_json", "not a JSON object but list"),
        (b'{"schema_version": 2}', "invalid", "schema_version must be 1, got 2"),
    ],
)  # fmt: skip
def test_a_message_over_a_limit_is_refused_with_its_reason(
    payload: bytes, reason: str, text: str
) -> None:
    with pytest.raises(MessageError) as caught:
        parse_message(payload, max_bytes=65_536, max_depth=32)
    assert (caught.value.reason, str(caught.value)) == (reason, text)


def test_nothing_in_one_message_escapes_the_ward_and_each_reason_is_counted() -> None:
    """The probe's two messages (a 10,000-deep array on an event topic: RecursionError; a
    401-digit integer in a metrics message: OverflowError) and the other limits are refused
    and counted per reason; the next valid event is taken as if nothing had happened."""
    ward = Ward(SITE)
    bad = [
        (f"{ROOT}/bed-1/event", DEEP),
        (f"{ROOT}/metrics", metrics(f'"read_wait_ms_p99": {HUGE_INT}, ')),
        (f"{ROOT}/metrics", metrics(f'"read_wait_warn_ms": -{HUGE_INT}, ')),
        (f"{ROOT}/bed-1/live", b'{"classes": {"Wheeze": Infinity}}'),
        (f"{ROOT}/bed-1/event", b"{" * 70_000),
        (f"{ROOT}/bed-1/event", b"not json"),
    ]
    for topic, payload in bad:
        assert ward.handle(topic, payload) is False
    assert ward.counts["rejected"] == len(bad)
    assert ward.rejected_reasons == {"too_deep": 1, "bad_number": 3, "too_large": 1, "bad_json": 1}
    assert ward.last_rejected == (
        f"bad_json: {ROOT}/bed-1/event: not JSON (Expecting value: line 1 column 1 (char 0))"
    )
    good = onset()
    assert ward.handle(good.topic, good.to_json().encode())
    snapshot = ward.snapshot()
    assert [a["episode_id"] for a in snapshot["alarms"]] == [good.episode_id]
    assert snapshot["rejected_reasons"] == ward.rejected_reasons
    assert snapshot["counts"]["rejected"] == len(bad)


class FailingWard(Ward):
    """A ward whose live-point handling has a bug: the fault the last guard is for."""

    def _live_point(self, device_id: str, stream_id: str, body: dict[str, Any]) -> None:
        raise KeyError("a bug")


def test_an_unexpected_failure_is_counted_as_internal_error_and_the_feed_goes_on() -> None:
    ward = FailingWard(SITE)
    live = {"schema_version": 1, "site": SITE, "device_id": DEVICE, "stream_id": "bed-1",
            "classes": {"Wheeze": 0.5}, "quality_score": 1.0}  # fmt: skip
    assert ward.handle(f"{ROOT}/bed-1/live", json.dumps(live).encode()) is False
    assert ward.rejected_reasons == {"internal_error": 1}
    assert ward.last_rejected == f"internal_error: {ROOT}/bed-1/live: KeyError: 'a bug'"
    good = onset()
    assert ward.handle(good.topic, good.to_json().encode())


# -- what the ward keeps -----------------------------------------------------------------
def body(device_id: str = DEVICE, **fields: Any) -> bytes:
    """A message of ``device_id`` of the site with ``fields``."""
    return json.dumps({"schema_version": 1, "site": SITE, "device_id": device_id,
                       "utc": "2026-05-09T07:00:00.000Z", **fields}).encode()  # fmt: skip


def test_topic_names_a_publisher_makes_up_create_nothing() -> None:
    """A device or stream in the topic that is not a topic segment is refused before
    anything is kept, and a withdrawn verdict (empty, retained) of a bed the ward does not
    know creates neither it nor its device; one of a known bed clears its verdict."""
    ward = Ward(SITE)
    long = "x" * 65
    site = f"lungwatch/v1/{SITE}"
    refused = [
        (f"{site}/{long}/status", body(long, state="online")),
        (f"{site}/$dev/status", body("$dev", state="online")),
        (f"{site}/{DEVICE}/{long}/verdict", b""),
        (f"{site}/{DEVICE}/{long}/live", body(stream_id=long, classes={}, quality_score=1.0)),
    ]
    for topic, payload in refused:
        assert ward.handle(topic, payload, retained=True) is False, topic
    assert ward.rejected_reasons == {"invalid": len(refused)}
    assert ward.last_rejected == (
        f"invalid: {site}/{DEVICE}/{long}/live: the topic's stream '{long}' is not a topic segment"
    )
    for topic in (f"{ROOT}/bed-9/verdict", f"{site}/dev-9/anything/verdict"):
        assert ward.handle(topic, b"", retained=True), topic  # nothing to withdraw: fine
    assert (ward.devices, ward.snapshot()["beds"]) == ({}, [])

    verdict = body(stream_id="bed-2", verdict="CAS", window_s=30.0)
    assert ward.handle(f"{ROOT}/bed-2/verdict", verdict, retained=True)
    assert ward.snapshot()["beds"][0]["verdict"]["label"] == "CAS"
    assert ward.handle(f"{ROOT}/bed-2/verdict", b"", retained=True)
    assert ward.snapshot()["beds"][0]["verdict"] is None


def finding(stream_id: str, second: int, device_id: str = DEVICE) -> Event:
    return Event.onset(
        type="Wheeze", site=SITE, device_id=device_id, stream_id=stream_id,
        start_utc=f"2026-05-09T07:00:{second:02d}.000Z", start_sample=8000 * second,
        confidence=0.9, model_id="edge-test", model_sha256=SHA256, quality={"score": 0.99},
    )  # fmt: skip


def test_devices_beds_and_open_episodes_are_capped_and_the_excess_counted() -> None:
    """``max_devices``, ``max_beds_per_device``, ``max_open_episodes_per_bed`` (2 each here):
    what would be one more is rejected as ``over_limit`` and nothing of it is kept; what is
    kept goes on being updated, and a bed takes a new episode once one of its own ends."""
    ward = Ward(
        SITE, DashboardConfig(max_devices=2, max_beds_per_device=2, max_open_episodes_per_bed=2)
    )
    site = f"lungwatch/v1/{SITE}"
    for device_id, taken in (("dev-1", True), ("dev-2", True), ("dev-3", False)):
        status = status_payload("online", SITE, device_id, "connected").encode()
        assert ward.handle(f"{site}/{device_id}/status", status, retained=True) is taken
    assert ward.last_rejected == (
        f"over_limit: {site}/dev-3/status: device 'dev-3' would be one over "
        "dashboard.max_devices (2)"
    )
    for bed, taken in (("bed-1", True), ("bed-2", True), ("bed-3", False)):
        report = body(stream_id=bed, metrics={"frames": 1})
        assert ward.handle(f"{ROOT}/metrics", report) is taken, bed
    live = body(stream_id="bed-3", classes={"Wheeze": 0.5}, quality_score=1.0)
    assert ward.handle(f"{ROOT}/bed-3/live", live) is False
    verdict = body("dev-3", stream_id="bed-1", verdict="CAS", window_s=30.0)
    assert ward.handle(f"{site}/dev-3/bed-1/verdict", verdict, retained=True) is False

    first, second, third = (finding("bed-1", s) for s in range(3))
    assert send(ward, first)
    assert send(ward, second)
    assert send(ward, third) is False
    assert ward.last_rejected == (
        f"over_limit: {ROOT}/bed-1/event: episode {third.episode_id} would be one open episode "
        f"of {DEVICE}/bed-1 over dashboard.max_open_episodes_per_bed (2)"
    )
    assert send(ward, second.ongoing(confidence=0.8)), "an open episode is still updated"
    assert send(ward, first.ended("2026-05-09T07:00:05.000Z", 40_000))
    assert send(ward, third), "one ended: the bed takes a new one"
    assert ward.rejected_reasons == {"over_limit": 5}
    snapshot = ward.snapshot()
    assert snapshot["rejected_reasons"] == {"over_limit": 5}
    assert [d["device_id"] for d in snapshot["devices"]] == ["dev-1", "dev-2"]
    assert [(b["device_id"], b["stream_id"]) for b in snapshot["beds"]] == [
        ("dev-1", "bed-1"), ("dev-1", "bed-2")
    ]  # fmt: skip
    open_episodes = [ep for a in snapshot["alarms"] for ep in a["open_episodes"]]
    assert sorted(open_episodes) == sorted([second.episode_id, third.episode_id])


def send(ward: Ward, event: Event) -> bool:
    return ward.handle(event.topic, event.to_json().encode())


# -- liveness --------------------------------------------------------------------------------
class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def watched_ward(probing: bool, state: str, reason: str) -> tuple[Clock, Ward]:
    """A ward on a test clock, its broker connected, the device's retained status in."""
    clock = Clock()
    ward = Ward(
        SITE,
        DashboardConfig(stale_after_s=30.0, probe_interval_s=5.0 if probing else 0.0),
        monotonic=clock,
    )
    ward.set_broker("127.0.0.1:1883", connected=True)
    status = status_payload(state, SITE, DEVICE, reason).encode()
    assert ward.handle(f"{ROOT}/status", status, retained=True)
    return clock, ward


def test_a_silent_device_and_a_stale_broker_are_shown_until_something_arrives() -> None:
    clock, ward = watched_ward(probing=True, state="online", reason="connected")
    assert ward.handle(f"{ROOT}/metrics", metrics())
    ward.take_changes()
    clock.now_s += 30.0
    ward.check_liveness()
    assert ward.take_changes() is None, "not before stale_after_s has passed"

    clock.now_s += 5.0
    ward.check_liveness()
    changes = ward.take_changes()
    assert changes is not None
    assert changes["broker"] == {"address": "127.0.0.1:1883", "connected": False,
                                 "state": "stale", "quiet_s": 35.0, "refused": None}  # fmt: skip
    assert changes["devices"][0]["silent_s"] == 35.0
    assert changes["beds"][0]["state"] == {"key": "stale", "text": "no data from the device"}

    ward.probe_returned()  # the broker answers again; the device still says nothing
    snapshot = ward.snapshot()
    assert (snapshot["broker"]["state"], snapshot["broker"]["connected"]) == ("connected", True)
    assert snapshot["devices"][0]["silent_s"] == 35.0
    assert ward.handle(f"{ROOT}/metrics", metrics())
    snapshot = ward.snapshot()
    assert snapshot["devices"][0]["silent_s"] is None
    assert snapshot["beds"][0]["state"]["key"] == "normal"


def test_nothing_is_expected_from_an_offline_device_nor_without_a_probe() -> None:
    clock, ward = watched_ward(probing=False, state="offline", reason="stopped")
    clock.now_s += 3600.0
    ward.check_liveness()
    snapshot = ward.snapshot()
    assert snapshot["broker"]["state"] == "connected"
    assert snapshot["devices"][0]["silent_s"] is None
    assert snapshot["beds"] == []
    ward.set_broker("127.0.0.1:1883", connected=False)
    assert ward.snapshot()["broker"]["state"] == "disconnected"


def test_a_refused_subscription_outranks_connected_and_stale_not_disconnected() -> None:
    clock = Clock()
    ward = Ward(SITE, DashboardConfig(stale_after_s=30.0, probe_interval_s=5.0), monotonic=clock)
    ward.set_broker("127.0.0.1:1883", connected=True)
    ward.take_changes()
    ward.set_refused([f"lungwatch/v1/{SITE}/+/status"])
    changes = ward.take_changes()
    assert changes is not None
    assert changes["broker"] == {
        "address": "127.0.0.1:1883", "connected": False, "state": "refused", "quiet_s": None,
        "refused": f"not allowed to read lungwatch/v1/{SITE}/+/status",
    }  # fmt: skip
    clock.now_s += 60.0
    ward.check_liveness()
    assert ward.snapshot()["broker"]["state"] == "refused", "not stale: refused says more"
    ward.set_broker("127.0.0.1:1883", connected=False)
    assert ward.snapshot()["broker"]["state"] == "disconnected"
    ward.set_broker("127.0.0.1:1883", connected=True)
    assert ward.snapshot()["broker"]["state"] == "refused", "until a SUBACK grants them all"
    ward.set_refused([])
    broker = ward.snapshot()["broker"]
    assert (broker["state"], broker["refused"]) == ("connected", None)


# -- logins ----------------------------------------------------------------------------------
def users() -> tuple[DashboardUser, ...]:
    return (
        DashboardUser(**user_entry("nurse", "ack", "nurse-pw")),  # type: ignore[arg-type]
        DashboardUser(**user_entry("porter", "view", "porter-pw")),  # type: ignore[arg-type]
    )


def test_an_unknown_name_costs_the_same_hash_verification_as_a_known_one() -> None:
    """No timing oracle: a name that is not configured is verified against the dummy hash,
    of the users' cost, by the same function a known name is."""
    nurse, porter = users()
    verified: list[str] = []

    def verify(password: str, password_hash: str) -> bool:
        verified.append(password_hash)
        return verify_password(password, password_hash)

    logins = Logins((nurse, porter), max_failures=5, window_s=60.0, verify=verify)
    assert logins.check("nurse", "wrong", "10.0.0.1") is None
    assert logins.check("ghost", "wrong", "10.0.0.2") is None
    assert logins.check("", "", "10.0.0.3") is None
    assert logins.check("porter", "porter-pw", "10.0.0.4") == porter
    assert verified == [nurse.password_hash, logins.dummy_hash, logins.dummy_hash,
                        porter.password_hash]  # fmt: skip
    assert hash_iterations(logins.dummy_hash) == hash_iterations(nurse.password_hash) == 100_000
    assert logins.counts == {"ok": 1, "failed": 3, "limited": 0}


def test_a_name_over_its_bound_still_lets_its_right_password_in() -> None:
    """Wrong guesses at ``nurse`` from everywhere bound the name: further wrong ones get 429
    (not 401), but its password is still verified, so the nurse is not locked out by them;
    a name nobody has is bounded the same way (a 429 does not tell them apart)."""
    nurse, porter = users()
    clock = Clock()
    logins = Logins((nurse, porter), max_failures=3, window_s=60.0, clock=clock)
    for second in range(3):  # one guess per address: only the name reaches its bound
        clock.now_s = 1000.0 + second
        assert logins.check("nurse", "guess", f"10.0.0.{second}") is None
        assert logins.check("ghost", "guess", f"10.0.1.{second}") is None
    clock.now_s = 1003.0
    with pytest.raises(LoginLimitedError, match="for this user"):
        logins.check("nurse", "guess", "10.0.0.9")
    assert logins.check("nurse", "nurse-pw", "10.0.0.8") == nurse, "not locked out"
    with pytest.raises(LoginLimitedError) as caught:
        logins.check("ghost", "guess", "10.0.1.9")
    assert caught.value.retry_after_s == 58.0  # the oldest of its last three: 1001
    assert str(caught.value) == "too many failed logins for this user; retry in 58 s"
    assert logins.check("nurse", "guess", "10.0.0.7") is None, "the success cleared the name"
    assert logins.counts == {"ok": 1, "failed": 7, "limited": 2}


def test_an_address_over_its_bound_is_refused_unverified() -> None:
    verified: list[str] = []

    def verify(password: str, password_hash: str) -> bool:
        verified.append(password)
        return verify_password(password, password_hash)

    clock = Clock()
    logins = Logins(users(), max_failures=3, window_s=60.0, clock=clock, verify=verify)
    for second in range(3):
        clock.now_s = 1000.0 + second
        assert logins.check(("nurse", "porter", "ghost")[second], "guess", "10.0.0.1") is None
    with pytest.raises(LoginLimitedError) as caught:  # any name, the right password too
        logins.check("porter", "porter-pw", "10.0.0.1")
    assert str(caught.value) == "too many failed logins from this address; retry in 58 s"
    assert verified == ["guess"] * 3, "nothing verified for an address over its bound"
    assert logins.check("porter", "porter-pw", "10.0.0.2") is not None
    clock.now_s = 1060.0  # the oldest failure is window_s old: one more try
    assert logins.check("porter", "porter-pw", "10.0.0.1") is not None
    assert logins.counts == {"ok": 2, "failed": 3, "limited": 1}


def test_a_success_clears_its_names_failures_inside_the_window() -> None:
    """A success clears the name's failures and its own at the address, within the window
    (so it is the success that clears them, not time); another user's success at that
    address leaves the failed guesses at other names there."""
    clock = Clock()
    logins = Logins(users(), max_failures=3, window_s=60.0, clock=clock)
    for second, password in enumerate(("guess", "guess", "nurse-pw", "guess")):
        clock.now_s = 1000.0 + second
        logins.check("nurse", password, "10.0.0.1")
    clock.now_s = 1005.0  # every failure is within window_s: only the success cleared some
    assert logins.check("nurse", "guess", "10.0.0.1") is None, "a success clears both"
    assert logins.check("porter", "porter-pw", "10.0.0.1") is not None
    clock.now_s = 1006.0
    assert logins.check("nurse", "guess", "10.0.0.1") is None
    with pytest.raises(LoginLimitedError, match="from this address"):
        logins.check("nurse", "guess", "10.0.0.1")


def test_concurrent_guesses_from_one_address_reach_the_hash_at_most_the_bound() -> None:
    """Twenty wrong logins at once from one address: each is recorded before its (slow)
    verification, so only ``login_max_failures`` of them are verified; the rest get 429."""
    attempts, bound = 20, 3
    cond, release = threading.Condition(), threading.Event()
    verifying, refused = [0], [0]

    def verify(password: str, password_hash: str) -> bool:
        with cond:
            verifying[0] += 1
            cond.notify_all()
        release.wait(GENEROUS_S)  # held until every attempt has verified or been refused
        return verify_password(password, password_hash)

    logins = Logins(users(), max_failures=bound, window_s=60.0, verify=verify)

    def guess(index: int) -> None:
        try:
            logins.check(("nurse", "porter")[index % 2], f"guess-{index}", "10.0.0.1")
        except LoginLimitedError:
            with cond:
                refused[0] += 1
                cond.notify_all()

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(attempts)]
    for thread in threads:
        thread.start()
    with cond:
        decided = cond.wait_for(lambda: verifying[0] + refused[0] == attempts, GENEROUS_S)
    release.set()
    for thread in threads:
        thread.join(GENEROUS_S)
    assert decided, (verifying, refused)
    assert (verifying[0], refused[0]) == (bound, attempts - bound)
    assert logins.counts == {"ok": 0, "failed": bound, "limited": attempts - bound}


@pytest.mark.parametrize(
    ("detail", "named"),
    [
        ({"latched": True, "key": ["x"]}, "detail.key"),
        ({"latched": "yes", "key": "Wheeze@0"}, "detail.latched"),
        ({"key": "Wheeze@0", "condition_end_sample": 1.5}, "detail.condition_end_sample"),
        ({"acknowledged_by": "\x1b[2Jnurse"}, "detail.acknowledged_by"),
        ({"note": "\ud800"}, "detail"),
        ({"ended_by": "x" * 257}, "detail.ended_by"),
    ],
)
def test_a_detail_field_of_the_wrong_kind_is_refused_at_intake(
    detail: dict[str, Any], named: str
) -> None:
    """The detail fields the view reads (indexes, compares, stores) must be of their one
    type: a list for a key once killed the push thread (unhashable), a lone surrogate the
    history writer (not encodable). Refused as invalid, counted; the ward goes on."""
    ward = Ward(SITE)
    hostile = json.loads(onset().to_json())
    hostile["detail"] = detail
    payload = json.dumps(hostile).encode()  # ensure_ascii: the surrogate travels as \ud800
    assert ward.handle(f"{ROOT}/bed-1/event", payload) is False
    assert ward.rejected_reasons == {"invalid": 1}
    assert ward.last_rejected is not None
    assert named in ward.last_rejected
    assert ward.alarms() == []
    assert ward.handle(f"{ROOT}/bed-1/event", onset(1).to_json().encode())
    assert [a["condition"] for a in ward.alarms()] == ["CAS"]


def test_free_text_of_an_event_is_printable() -> None:
    """model_id and the quality's names are stored and shown: printable text only (a lone
    surrogate once reached the history store, which could not encode it)."""
    good = json.loads(onset().to_json())
    for field, value in (("model_id", "edge-\ud800"), ("quality", {"\ud800": 0.5})):
        hostile = {**good, field: value}
        ward = Ward(SITE)
        assert ward.handle(f"{ROOT}/bed-1/event", json.dumps(hostile).encode()) is False
        assert ward.rejected_reasons == {"invalid": 1}, field
