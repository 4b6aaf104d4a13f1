"""SQLite store-and-forward spool: events are committed here before they are published, and
deleted only when the broker's PUBACK arrives, so a new ``Spool`` on the same file after a
crash sees every event not acknowledged. Durability (WAL, ``synchronous=FULL``: one fsync per
commit, hence puts and acks in batches) and the size bound's policy (the oldest low-priority
event is evicted; high and medium ones never are, a new one is refused instead; ``spool_full``
events are exempt): docs/events.md, "Delivery: store-and-forward".

Thread-safe: one connection, used under a lock, so the publisher thread and the MQTT network
thread may share a spool. One process per spool file (``flock`` on ``<path>.lock``). The
``spool_full`` episode lives in memory: after a restart a new one opens if needed."""

from __future__ import annotations

import fcntl
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

from lungwatch.errors import LungwatchError
from lungwatch.events import DEVICE_STREAM, Event, utc_now
from lungwatch.mqtt import DEFAULT_MAX_EVENTS

SPOOL_FORMAT = 1  # PRAGMA user_version of a spool file
EXEMPT_TYPES: tuple[str, ...] = ("spool_full",)
BUSY_TIMEOUT_MS = 5_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: insertion order across restarts
    event_id TEXT NOT NULL UNIQUE,
    priority TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_priority ON events (priority, seq);
"""


class SpoolError(LungwatchError):
    """The spool file cannot be opened or used; the message names the file."""


class SpoolFullError(SpoolError):
    """The spool is at its bound and holds no low-priority event to evict."""


class SpoolLockedError(SpoolError):
    """Another process has the spool file open."""


class Spool:
    """A bounded, crash-safe FIFO of event JSON keyed by a growing sequence number."""

    def __init__(self, path: str | Path, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        if not (isinstance(max_events, int) and not isinstance(max_events, bool)) or max_events < 1:
            raise SpoolError(f"spool max_events must be an integer >= 1, got {max_events!r}")
        self.path, self.max_events = Path(path), max_events
        self.evicted_total = self.refused_total = 0
        self._lock = threading.Lock()
        self._lock_file = _lock_exclusively(self.path)
        try:
            self._db = _open_db(self.path)
            self._count = int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        except sqlite3.Error as exc:
            self._lock_file.close()
            raise SpoolError(f"spool {self.path}: cannot open ({exc})") from None
        self._closed = False

    def put(self, event: Event) -> int:
        """Store ``event`` (committed on return) and give its sequence number (the stored one
        for an id already stored); SpoolFullError at the bound with nothing evictable."""
        (result,) = self._store([event])
        if isinstance(result, SpoolFullError):
            raise result
        return result

    def put_many(self, events: Sequence[Event]) -> list[int | None]:
        """:meth:`put` for each of ``events`` in one transaction (one fsync); None where the
        bound refused one (counted in ``refused_total``)."""
        return [None if isinstance(r, SpoolFullError) else r for r in self._store(events)]

    def pending(self, limit: int = 1000, after_seq: int = 0) -> list[tuple[int, str]]:
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT seq, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [(int(seq), str(payload)) for seq, payload in rows]

    def last_seq(self) -> int:
        """The highest sequence number stored now (0: none)."""
        with self._lock:
            self._check_open()
            row = self._db.execute("SELECT MAX(seq) FROM events").fetchone()
        return int(row[0] or 0)

    def ack(self, seq: int) -> bool:
        """Delete the event ``seq`` (its PUBACK came); False if it was not stored."""
        return self.ack_many([seq]) == 1

    def ack_many(self, seqs: Iterable[int]) -> int:
        """:meth:`ack` for each of ``seqs`` in one transaction; how many were stored."""
        rows = [(seq,) for seq in seqs]
        if not rows:
            return 0
        with self._lock:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                deleted = self._db.executemany("DELETE FROM events WHERE seq = ?", rows).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count -= deleted
        return int(deleted)

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.close()
            self._lock_file.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _store(self, events: Sequence[Event]) -> list[int | SpoolFullError]:
        payloads = [event.to_json() for event in events]
        with self._lock:
            self._check_open()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                results, added, evicted = self._insert_all(events, payloads)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._count += added - evicted
            self.evicted_total += evicted
        return results

    def _insert_all(
        self, events: Sequence[Event], payloads: list[str]
    ) -> tuple[list[int | SpoolFullError], int, int]:
        """Inside the transaction: the results, rows added and rows evicted."""
        results: list[int | SpoolFullError] = []
        added = evicted = 0
        for event, payload in zip(events, payloads, strict=True):
            row = self._db.execute("SELECT seq FROM events WHERE event_id = ?", (event.id,))
            found = row.fetchone()
            if found is not None:
                results.append(int(found[0]))
                continue
            stored = self._count + added - evicted
            if stored >= self.max_events and event.type not in EXEMPT_TYPES:
                try:
                    evicted += self._evict_oldest_low(event, stored)
                except SpoolFullError as exc:
                    results.append(exc)
                    continue
            cursor = self._db.execute(
                "INSERT INTO events (event_id, priority, payload) VALUES (?, ?, ?)",
                (event.id, event.priority, payload),
            )
            results.append(int(cursor.lastrowid or 0))
            added += 1
        return results, added, evicted

    def _evict_oldest_low(self, event: Event, stored: int) -> int:
        victim = self._db.execute(
            "SELECT seq FROM events WHERE priority = 'low' ORDER BY seq LIMIT 1"
        ).fetchone()
        if victim is None:
            self.refused_total += 1
            raise SpoolFullError(
                f"spool {self.path} is full ({stored} events, none of low priority to "
                f"evict): refused {event.priority} {event.type} event {event.id}"
            )
        self._db.execute("DELETE FROM events WHERE seq = ?", (victim[0],))
        return 1

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError(f"spool {self.path} is closed")


class SpoolFullMonitor:
    """``spool_full`` events of evictions and refusals: ``onset`` at an episode's first, ``ended``
    once the spool has drained to ``CLEAR_FRACTION`` of its bound. Thread-safe."""

    CLEAR_FRACTION = 0.5

    def __init__(self, spool: Spool, site: str, device_id: str, priority: str) -> None:
        self._spool = spool
        self._fields = {"type": "spool_full", "stream_id": DEVICE_STREAM, "site": site}
        self._fields.update(device_id=device_id, priority=priority)
        self._lock = threading.Lock()
        self._onset: Event | None = None
        self._seen = (0, 0)  # (evicted, refused) already reported
        self._episode = [0, 0]

    def after_put(self) -> None:
        now = (self._spool.evicted_total, self._spool.refused_total)
        with self._lock:
            new = (now[0] - self._seen[0], now[1] - self._seen[1])
            if new == (0, 0):
                return
            self._seen = now
            self._episode = [self._episode[0] + new[0], self._episode[1] + new[1]]
            if self._onset is None:
                self._onset = Event.onset(
                    **self._fields, start_utc=utc_now(), detail=self._detail()
                )
                self._spool.put(self._onset)

    def maybe_end(self) -> None:
        with self._lock:
            clear_at = self._spool.max_events * self.CLEAR_FRACTION
            if self._onset is None or len(self._spool) > clear_at:
                return
            self._spool.put(self._onset.ended(utc_now(), detail=self._detail()))
            self._onset = None
            self._episode = [0, 0]

    def _detail(self) -> dict[str, int]:
        evicted, refused = self._episode
        return {"max_events": self._spool.max_events, "evicted": evicted, "refused": refused}


def _lock_exclusively(path: Path) -> IO[str]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_name(path.name + ".lock"), "a+", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise SpoolError(f"spool {path}: cannot create ({exc.strerror or exc})") from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise SpoolLockedError(f"spool {path} is in use by another process") from None
    return handle


def _open_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version not in (0, SPOOL_FORMAT):
        db.close()
        raise sqlite3.DatabaseError(f"spool format {version}, this version reads {SPOOL_FORMAT}")
    db.executescript(_SCHEMA)
    db.execute(f"PRAGMA user_version = {SPOOL_FORMAT}")
    return db
