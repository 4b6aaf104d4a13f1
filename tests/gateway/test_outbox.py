"""The gateway's queue and courier against a real MLLP receiver (tests/gateway/receiver.py:
a TCP server that validates every message with hl7apy against HL7 v2.6 and acknowledges it):
nothing lost and nothing sent under a second control id while the receiver dies and comes
back, negative acknowledgements retried, a message refused for good set aside."""

from __future__ import annotations

import datetime as dt
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.hl7 import Bed, Sender, rate_message
from gateway.mllp import MllpClient, MllpTransport
from gateway.outbox import Courier, CourierConfig, Outbox, OutboxError, StoreError
from tests.gateway.receiver import Receiver

BED = Bed("edge-1", "bed-2", location="ICU^1^3^HOSP", patient_id="12345^^^HOSP^MR")
SENDER = Sender(facility="WARD-1", receiving_application="HIS")
FAST = CourierConfig(backoff_min_s=0.05, backoff_max_s=0.2, max_refusals=3)


def reading(i: int) -> dict[str, object]:
    utc = dt.datetime(2026, 11, 27, 3, 0, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=10 * i)
    return {"state": "ok", "rate_bpm": 12.0 + i % 10, "low_bpm": 9.0, "high_bpm": 24.0,
            "utc": utc.isoformat().replace("+00:00", "Z")}  # fmt: skip


def put(outbox: Outbox, i: int) -> bool:
    now = dt.datetime.now(dt.timezone.utc)
    return outbox.put(f"reading/{i}", lambda cid: rate_message(reading(i), BED, SENDER, cid, now))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.kill()


def courier_thread(outbox: Outbox, port: int) -> tuple[Courier, threading.Event, threading.Thread]:
    courier = Courier(outbox, MllpTransport(MllpClient("127.0.0.1", port, timeout_s=2.0)), FAST)
    stop = threading.Event()
    thread = threading.Thread(target=courier.run, args=(stop,), daemon=True)
    thread.start()
    return courier, stop, thread


def queued_ids(path: Path) -> dict[str, str]:
    import sqlite3

    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT key, control_id FROM outbox").fetchall())


def test_a_receiver_that_dies_and_comes_back_loses_nothing(
    tmp_path: Path, receiver: Receiver
) -> None:
    """60 readings queued while the courier sends; the receiver dies right after receiving
    the 20th message (before answering it), stays down for a while and comes back on the
    same port: every message is accepted, each under the one control id it was queued with,
    in the order queued; the message it died on is sent again under its own id."""
    outbox = Outbox(tmp_path / "gateway.sqlite")
    receiver.die_on = lambda count: count == 20
    courier, stop, thread = courier_thread(outbox, receiver.port)
    try:
        for i in range(40):
            assert put(outbox, i)
        assert receiver.wait_for(lambda: len(receiver.received) >= 20, 10.0)
        for i in range(40, 60):  # queued while the receiver is down
            assert put(outbox, i)
        threading.Event().wait(1.0)  # down: the courier keeps trying
        assert courier.stats["retries"] >= 2
        assert outbox.counts()["queued"] >= 41
        receiver.die_on = lambda count: False
        receiver.start()  # the same port
        assert receiver.wait_for(lambda: len(receiver.accepted) == 60, 20.0), receiver.errors
    finally:
        stop.set()
        thread.join(5.0)
    ids = queued_ids(tmp_path / "gateway.sqlite")
    assert len(set(ids.values())) == 60  # one control id per reading
    assert set(receiver.accepted) == set(ids.values())  # 0 lost
    order = [ids[f"reading/{i}"] for i in range(60)]
    first_seen = list(dict.fromkeys(receiver.received))
    assert first_seen == order  # sent in the order queued
    resent = [cid for cid in set(receiver.received) if receiver.received.count(cid) > 1]
    assert resent == [order[19]]  # only the one in flight when it died, under its own id
    assert outbox.counts() == {"queued": 0, "sent": 60, "refused": 0}
    assert receiver.errors == []


def settled(outbox: Outbox, counts: dict[str, int], within_s: float = 5.0) -> bool:
    """The queue's counts reach ``counts`` (the courier notes a message sent just after the
    receiver answered)."""
    until = time.monotonic() + within_s
    while outbox.counts() != counts:
        if time.monotonic() > until:
            return False
        time.sleep(0.02)
    return True


def test_a_negative_acknowledgement_is_retried_a_rejection_set_aside_and_resent_on_request(
    tmp_path: Path, receiver: Receiver
) -> None:
    """AE is retried (an application error may pass); AR is set aside at once (the receiver
    will not take these bytes: sending them again unchanged cannot help) and the messages
    behind it go on; ``lungwatch gateway --resend`` puts it back, to be sent as it was."""
    from gateway.cli import main

    queue = tmp_path / "gateway.sqlite"
    outbox = Outbox(queue)
    for i in range(3):
        put(outbox, i)
    ids = queued_ids(queue)
    refuse_twice, rejected = ids["reading/0"], ids["reading/1"]
    fixed = threading.Event()  # the receiver's side was mended

    def answer(control_id: str, seen: int) -> str | None:
        if control_id == refuse_twice and seen <= 2:
            return "AE"
        return "AR" if control_id == rejected and not fixed.is_set() else None

    receiver.answer = answer
    courier, stop, thread = courier_thread(outbox, receiver.port)
    try:
        assert receiver.wait_for(lambda: ids["reading/2"] in receiver.accepted, 10.0)
        assert receiver.received.count(refuse_twice) == 3  # AE, AE, then accepted
        assert refuse_twice in receiver.accepted
        assert receiver.received.count(rejected) == 1  # AR: never sent unchanged again
        assert settled(outbox, {"queued": 0, "sent": 2, "refused": 1}), outbox.counts()
        [(key, control_id, why)] = outbox.refusals()
        assert (key, control_id) == ("reading/1", rejected)
        assert why.startswith("AR")
        assert courier.stats["refused"] == 1
        fixed.set()
        config = tmp_path / "gateway.yaml"
        config.write_text(f"site: ward-3\nhl7: {{host: 127.0.0.1}}\nqueue: {queue}\n")
        assert main(["--config", str(config), "--resend", "all"]) == 0
        assert receiver.wait_for(lambda: rejected in receiver.accepted, 10.0)
        with pytest.raises(SystemExit):  # nothing refused is left to resend: said, not silent
            main(["--config", str(config), "--resend", "all"])
        assert settled(outbox, {"queued": 0, "sent": 3, "refused": 0}), outbox.counts()
    finally:
        stop.set()
        thread.join(5.0)


def test_a_reply_to_another_message_counts_as_a_refusal_and_cannot_block_the_queue(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A receiver whose ACK names another control id (MSA-2) is out of step: the message is
    tried again on a new connection up to max_refusals times, then set aside, and the
    messages behind it go out."""
    outbox = Outbox(tmp_path / "gateway.sqlite")
    for i in range(2):
        put(outbox, i)
    ids = queued_ids(tmp_path / "gateway.sqlite")
    wrong = ids["reading/0"]
    receiver.answer = lambda control_id, seen: "AA:SOMEONE-ELSE" if control_id == wrong else None
    _, stop, thread = courier_thread(outbox, receiver.port)
    try:
        assert receiver.wait_for(lambda: ids["reading/1"] in receiver.accepted, 10.0)
    finally:
        stop.set()
        thread.join(5.0)
    assert receiver.received.count(wrong) == FAST.max_refusals
    [(key, control_id, why)] = outbox.refusals()
    assert (key, control_id) == ("reading/0", wrong)
    assert "SOMEONE-ELSE" in why


def test_a_key_is_queued_once_and_the_queue_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "gateway.sqlite"
    outbox = Outbox(path)
    built: list[str] = []
    assert outbox.put("reading/1", lambda cid: built.append(cid) or f"MSH|x|{cid}")
    assert not outbox.put("reading/1", lambda cid: built.append(cid) or "again")
    assert len(built) == 1
    head = outbox.head()
    outbox.close()
    again = Outbox(path)  # a restarted gateway sends the same bytes under the same id
    assert again.head() == head
    assert head is not None
    assert head.control_id == built[0]


def test_a_queue_that_cannot_be_read_for_a_while_loses_nothing_and_stops_no_courier(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Another program holding the file (here it moves the table aside, as a repair tool might)
    makes the queue unreadable for a while: ``put`` says so as a StoreError (the error the
    intake leaves a message unacked at the broker for) and builds nothing; the courier waits
    and keeps running; once the file is back the message is stored and delivered."""
    import sqlite3

    path = tmp_path / "gateway.sqlite"
    outbox = Outbox(path)
    courier, stop, thread = courier_thread(outbox, receiver.port)
    built: list[str] = []
    try:
        assert put(outbox, 0)
        assert receiver.wait_for(lambda: len(receiver.accepted) == 1, 10.0), receiver.errors
        with sqlite3.connect(path, isolation_level=None) as other:
            other.execute("ALTER TABLE outbox RENAME TO outbox_aside")
            with pytest.raises(StoreError, match="cannot read the queue now"):
                outbox.put("reading/1", lambda cid: built.append(cid) or f"MSH|x|{cid}")
            assert built == []
            until = time.monotonic() + 10.0
            while courier.stats["store_waits"] == 0 and time.monotonic() < until:
                time.sleep(0.02)
            assert courier.stats["store_waits"] >= 1  # the courier met the unreadable queue ...
            assert thread.is_alive()  # ... and waits
            other.execute("ALTER TABLE outbox_aside RENAME TO outbox")
        assert put(outbox, 1)
        assert receiver.wait_for(lambda: len(receiver.accepted) == 2, 10.0), receiver.errors
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(5.0)
    assert set(receiver.accepted) == set(queued_ids(path).values())
    assert settled(outbox, {"queued": 0, "sent": 2, "refused": 0})
    outbox.close()


def test_the_queue_is_private_and_a_planted_link_is_refused(tmp_path: Path) -> None:
    before = os.umask(0o022)
    try:
        Outbox(tmp_path / "gateway.sqlite").close()
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "gateway.sqlite").stat().st_mode) == 0o600
    (tmp_path / "target").write_text("")
    (tmp_path / "link.sqlite").symlink_to(tmp_path / "target")
    with pytest.raises(OutboxError, match=r"link\.sqlite: cannot open the queue"):
        Outbox(tmp_path / "link.sqlite")


def test_a_corrupted_queue_is_refused_at_the_start_naming_what_to_do(tmp_path: Path) -> None:
    """Pages overwritten in the middle of the queue's file (a disk fault): the gateway says so
    when it opens the queue, instead of a courier failing on it later."""
    path = tmp_path / "gateway.sqlite"
    outbox = Outbox(path)
    for i in range(300):
        outbox.put(f"reading/{i}", lambda cid, i=i: f"MSH|{cid}|{i:04d}|" + "x" * 900)
    outbox.close()
    size = path.stat().st_size
    assert size > 20 * 4096
    with path.open("r+b") as raw:
        raw.seek(size // 2 // 4096 * 4096)
        raw.write(os.urandom(3 * 4096))
    with pytest.raises(
        OutboxError, match=r"gateway\.sqlite: the queue is corrupted .*move it aside"
    ):
        Outbox(path)


def test_a_flood_from_one_device_cannot_hold_back_another_beds_alarm(tmp_path: Path) -> None:
    """3,000 readings of one device's bed are queued before another bed's high finding: the
    finding goes next; each bed's own messages keep their order (a high report of a bed waits
    for that bed's older messages); at equal urgency the devices take turns."""
    outbox = Outbox(tmp_path / "gateway.sqlite")
    for i in range(3000):
        outbox.put_built(f"reading/{i}", f"R{i:05d}", f"MSH|reading {i}", None, ("dev-a", "bed-1"))
    outbox.put_built("finding/1", "F1", "MSH|apnoea", None, ("dev-b", "bed-2"), "high")
    outbox.put_built("alert/1", "A1", "MSH|bed-1's alert", None, ("dev-a", "bed-1"), "high")
    order = []
    for _ in range(6):
        head = outbox.head()
        assert head is not None
        order.append(head.control_id)
        outbox.sent(head.seq)
    assert order == ["F1", "R00000", "R00001", "R00002", "R00003", "R00004"]
    turns = Outbox(tmp_path / "turns.sqlite")
    for i in range(3):
        for device in ("dev-a", "dev-b"):
            turns.put_built(f"{device}/{i}", f"{device}-{i}", "MSH|x", None, (device, "bed-1"))
    taken = []
    while (head := turns.head()) is not None:
        taken.append(head.control_id)
        turns.sent(head.seq)
    assert taken == ["dev-a-0", "dev-b-0", "dev-a-1", "dev-b-1", "dev-a-2", "dev-b-2"]


def test_a_queue_from_before_beds_and_priorities_opens_and_keeps_its_messages(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,"
            " control_id TEXT NOT NULL UNIQUE, message TEXT NOT NULL, queued_s REAL NOT NULL,"
            " state TEXT NOT NULL DEFAULT 'queued', attempts INTEGER NOT NULL DEFAULT 0,"
            " refusals INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '',"
            " done_s REAL);"
            "INSERT INTO outbox (key, control_id, message, queued_s) VALUES ('k1', 'C1', 'm', 0);"
            "INSERT INTO outbox (key, control_id, message, queued_s) VALUES ('k2', 'C2', 'm', 0);"
        )
    path.chmod(0o600)
    outbox = Outbox(path)
    heads = []
    while (head := outbox.head()) is not None:
        heads.append(head.control_id)
        outbox.sent(head.seq)
    assert heads == ["C1", "C2"]  # one bed (none named): queued order
