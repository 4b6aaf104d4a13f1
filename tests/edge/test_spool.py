"""Tests of edge.sinks.spool on real SQLite files: order, ack, crash survival, the size bound."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge.sinks.spool import Spool, SpoolError, SpoolFullError, SpoolFullMonitor, SpoolLockedError
from lungwatch.events import DEVICE_STREAM, Event
from tests.brokers import REPO_ROOT, make_events


def ids(rows: list[tuple[int, str]]) -> list[str]:
    return [json.loads(payload)["id"] for _, payload in rows]


def test_pending_is_in_insertion_order_and_ack_deletes(tmp_path: Path) -> None:
    events = make_events(5)
    with Spool(tmp_path / "spool.sqlite", max_events=100) as spool:
        seqs = [spool.put(e) for e in events]
        assert seqs == sorted(set(seqs))
        assert len(seqs) == 5
        assert len(spool) == 5
        assert ids(spool.pending(10)) == [e.id for e in events]
        assert ids(spool.pending(2)) == [e.id for e in events[:2]]
        assert ids(spool.pending(10, after_seq=seqs[2])) == [e.id for e in events[3:]]
        assert spool.ack(seqs[1]) is True
        assert spool.ack(seqs[1]) is False, "a second ack of the same seq deletes nothing"
        assert len(spool) == 4
        assert ids(spool.pending(10)) == [e.id for i, e in enumerate(events) if i != 1]
        assert Event.from_json(spool.pending(1)[0][1]) == events[0]


def test_putting_the_same_event_twice_stores_it_once(tmp_path: Path) -> None:
    event = make_events(1)[0]
    with Spool(tmp_path / "spool.sqlite") as spool:
        assert spool.put(event) == spool.put(event)
        assert len(spool) == 1


def test_reopened_spool_keeps_unacked_events_and_never_reuses_seqs(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    events = make_events(3)
    with Spool(path) as spool:
        seqs = [spool.put(e) for e in events]
        spool.ack(seqs[2])  # the newest is acked: its seq must not come back
    with Spool(path) as spool:
        assert [seq for seq, _ in spool.pending(10)] == seqs[:2]
        assert spool.put(make_events(1)[0]) > seqs[2]


def test_spool_file_is_wal(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    with Spool(path) as spool:
        spool.put(make_events(1)[0])
        with sqlite3.connect(path) as other:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


PUT_SCRIPTS = {
    "put": "for line in open(sys.argv[2]):\n    spool.put(Event.from_json(line))\n",
    "put_many": "spool.put_many([Event.from_json(line) for line in open(sys.argv[2])])\n",
}


@pytest.mark.parametrize("how", list(PUT_SCRIPTS))
def test_unacked_events_survive_sigkill(tmp_path: Path, how: str) -> None:
    path = tmp_path / "spool.sqlite"
    events = make_events(20)
    source = tmp_path / "events.jsonl"
    source.write_text("".join(e.to_json() + "\n" for e in events), encoding="utf-8")
    script = (
        "import sys, time\n"
        "from lungwatch.events import Event\nfrom edge.sinks.spool import Spool\n"
        "spool = Spool(sys.argv[1])\n"
        + PUT_SCRIPTS[how]
        + "print('spooled', flush=True)\ntime.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-c", script, str(path), str(source)]
    child = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "spooled"
        with pytest.raises(SpoolLockedError, match="in use by another process"):
            Spool(path)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    with Spool(path) as spool:
        assert ids(spool.pending(100)) == [e.id for e in events]


def test_bound_evicts_oldest_low_then_refuses(tmp_path: Path) -> None:
    low1, low2, low3 = make_events(3, priority="low")
    high, medium, medium2 = make_events(3, priority="high")[0], *make_events(2)
    with Spool(tmp_path / "spool.sqlite", max_events=3) as spool:
        for event in (low1, high, low2):
            spool.put(event)
        spool.put(medium)  # full: the oldest low goes
        assert ids(spool.pending(10)) == [high.id, low2.id, medium.id]
        spool.put(low3)  # full: a low replaces the oldest low
        assert ids(spool.pending(10)) == [high.id, medium.id, low3.id]
        spool.put(medium2)  # full: the last low goes
        with pytest.raises(SpoolFullError, match="none of low priority to evict"):
            spool.put(make_events(1, priority="high")[0])
        with pytest.raises(SpoolFullError, match="refused low Wheeze"):
            spool.put(make_events(1, priority="low")[0])
        assert ids(spool.pending(10)) == [high.id, medium.id, medium2.id]
        assert (spool.evicted_total, spool.refused_total, len(spool)) == (3, 2, 3)


def test_spool_full_monitor_reports_an_episode(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.sqlite", max_events=2) as spool:
        monitor = SpoolFullMonitor(spool, "ward-3", "dev-1", "medium")
        for event in make_events(2, priority="low"):
            spool.put(event)
            monitor.after_put()
        assert len(spool) == 2, "below the bound: no condition"
        for event in make_events(2, priority="low"):
            spool.put(event)
            monitor.after_put()
        onsets = [Event.from_json(p) for _, p in spool.pending(10) if "spool_full" in p]
        assert [(e.state, e.stream_id, e.kind) for e in onsets] == [
            ("onset", DEVICE_STREAM, "technical")
        ]
        assert onsets[0].detail == {"max_events": 2, "evicted": 1, "refused": 0}
        assert len(spool) == 3, "the condition itself is exempt from the bound"
        monitor.maybe_end()
        assert len(spool) == 3, "not drained yet: no ended message"
        for seq, _ in spool.pending(10):
            spool.ack(seq)
        monitor.maybe_end()
        (ended,) = [Event.from_json(p) for _, p in spool.pending(10)]
        assert (ended.state, ended.episode_id) == ("ended", onsets[0].episode_id)
        assert ended.detail == {"max_events": 2, "evicted": 2, "refused": 0}


def test_concurrent_put_and_ack(tmp_path: Path) -> None:
    events = make_events(300)
    with Spool(tmp_path / "spool.sqlite") as spool:
        acked: list[int] = []

        def acker() -> None:
            while len(acked) < len(events):
                for seq, _ in spool.pending(50, after_seq=acked[-1] if acked else 0):
                    assert spool.ack(seq)
                    acked.append(seq)

        thread = threading.Thread(target=acker)
        thread.start()
        for event in events:
            spool.put(event)
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert len(spool) == 0
        assert acked == sorted(acked)
        assert len(acked) == 300


def test_unusable_files_give_one_line_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SpoolError, match=r"junk.sqlite: cannot open \(file is not a database\)"):
        Spool(junk)
    with pytest.raises(SpoolError, match="max_events must be an integer >= 1, got 0"):
        Spool(tmp_path / "ok.sqlite", max_events=0)
    spool = Spool(tmp_path / "ok.sqlite")
    spool.close()
    with pytest.raises(SpoolError, match="is closed"):
        spool.put(make_events(1)[0])


def test_put_many_is_put_in_one_transaction(tmp_path: Path) -> None:
    events = make_events(6)
    with Spool(tmp_path / "spool.sqlite") as spool:
        first = spool.put(events[0])
        seqs = spool.put_many([events[1], events[0], events[2], events[1], *events[3:]])
        assert seqs[1] == first, "an id already stored keeps its seq"
        assert seqs[3] == seqs[0], "an id twice in one batch is stored once"
        new = [seqs[0], seqs[2], *seqs[4:]]
        assert new == sorted(new)
        assert new[0] > first
        assert len(set(new)) == 5
        assert len(spool) == 6
        assert ids(spool.pending(10)) == [e.id for e in events]
        assert spool.put_many([]) == []
        with sqlite3.connect(tmp_path / "spool.sqlite") as other:  # committed: seen by others
            assert other.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 6


def test_put_many_applies_the_bound_per_event(tmp_path: Path) -> None:
    low1, low2 = make_events(2, priority="low")
    high1, high2, high3, high4 = make_events(4, priority="high")
    with Spool(tmp_path / "spool.sqlite", max_events=3) as spool:
        spool.put_many([low1, high1])
        # low2 fills the spool, high2 and high3 evict low1 and low2, high4 finds no low left
        seqs = spool.put_many([low2, high2, high3, high4])
        assert [seq is None for seq in seqs] == [False, False, False, True]
        assert ids(spool.pending(10)) == [high1.id, high2.id, high3.id]
        assert (spool.evicted_total, spool.refused_total, len(spool)) == (2, 1, 3)
        with pytest.raises(SpoolFullError, match="full \\(3 events, none of low priority"):
            spool.put(make_events(1, priority="medium")[0])


def test_ack_many_deletes_in_one_transaction(tmp_path: Path) -> None:
    events = make_events(5)
    with Spool(tmp_path / "spool.sqlite") as spool:
        seqs = spool.put_many(events)
        assert spool.ack_many([seqs[0], seqs[3], seqs[3], 10_000]) == 2
        assert spool.ack_many([]) == 0
        assert len(spool) == 3
        assert ids(spool.pending(10)) == [events[i].id for i in (1, 2, 4)]
    with Spool(tmp_path / "spool.sqlite") as spool:
        assert len(spool) == 3


def test_concurrent_put_many_and_ack_many(tmp_path: Path) -> None:
    events = make_events(300)
    with Spool(tmp_path / "spool.sqlite") as spool:
        acked: list[int] = []

        def acker() -> None:
            while len(acked) < len(events):
                seqs = [seq for seq, _ in spool.pending(50, after_seq=acked[-1] if acked else 0)]
                assert spool.ack_many(seqs) == len(seqs)
                acked.extend(seqs)

        thread = threading.Thread(target=acker)
        thread.start()
        for start in range(0, len(events), 7):
            spool.put_many(events[start : start + 7])
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert len(spool) == 0
        assert acked == sorted(acked)
        assert len(acked) == 300
