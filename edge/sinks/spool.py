"""SQLite store-and-forward spool: events are committed here before they are published.

The MQTT sink writes events with :meth:`Spool.put_many` (one runtime round's events in one
transaction; the rows are committed, and on disk, when it returns), publishes from
:meth:`Spool.pending` in insertion order and deletes rows with :meth:`Spool.ack_many` only
when the broker's PUBACKs for them arrive (every ack taken together in one transaction).
:meth:`Spool.put` and :meth:`Spool.ack` are the one-row forms. A new ``Spool`` on the same
file after a crash sees every event that was not acknowledged.

Durability: WAL journal with ``synchronous=FULL``. In WAL mode ``NORMAL`` already survives a
*process* crash, but a commit may be lost on power loss or a kernel crash; a bedside device
can lose power, so FULL is the stated choice. Its cost is one fsync per commit (about a
millisecond on flash), which is why puts and acks are grouped: one commit per runtime round
and one per batch of PUBACKs, not one per event (a few per minute per bed, but one process
serves hundreds of beds).

Size bound (``max_events``), the stated policy:

1. Below the bound every event is stored.
2. At the bound, storing a new event first evicts the **oldest low-priority** event. High and
   medium events are never evicted.
3. If no low-priority event is stored, the new event is **refused**: :meth:`Spool.put` raises
   :class:`SpoolFullError` and nothing is stored (the events already waiting are kept; the
   newest is the one lost).
4. ``spool_full`` technical events are exempt from the bound, so the condition itself can be
   reported; the sink publishes at most one ``onset`` and one ``ended`` per episode.

Evictions and refusals are counted (:attr:`Spool.evicted_total`, :attr:`Spool.refused_total`);
:class:`SpoolFullMonitor` (used by the MQTT sink) turns them into a ``spool_full`` technical
episode: ``onset`` at the first eviction or refusal, ``ended`` once the spool has drained to
half its bound. The episode lives in memory: after a restart a new one opens if needed.

Thread safety: one connection, used under a lock, so the publisher thread and the MQTT
network thread may share a spool. One process per spool file: an exclusive ``flock`` on
``<path>.lock`` (released by the kernel when the process dies) refuses a second opener.
"""

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
    """A bounded, crash-safe FIFO of event JSON keyed by a growing sequence number.

    Args:
        path: the SQLite file (created with its directory when missing).
        max_events: the bound (>= 1), see the module docstring for the policy.
    """

    def __init__(self, path: str | Path, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        if not (isinstance(max_events, int) and not isinstance(max_events, bool)) or max_events < 1:
            raise SpoolError(f"spool max_events must be an integer >= 1, got {max_events!r}")
        self.path = Path(path)
        self.max_events = max_events
        self.evicted_total = 0
        self.refused_total = 0
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
        """Store ``event`` (committed on return) and give its sequence number.

        Putting an event whose id is already stored returns the stored seq (idempotent).

        Raises:
            SpoolFullError: at the bound with nothing evictable; nothing was stored.
        """
        (result,) = self._store([event])
        if isinstance(result, SpoolFullError):
            raise result
        return result

    def put_many(self, events: Sequence[Event]) -> list[int | None]:
        """Store ``events`` in order, in one transaction (committed on return, one fsync).

        Each gets its sequence number (the stored one for an id already stored), or None
        where the bound refused it (counted in ``refused_total``; the others are stored).
        """
        return [None if isinstance(r, SpoolFullError) else r for r in self._store(events)]

    def pending(self, limit: int = 1000, after_seq: int = 0) -> list[tuple[int, str]]:
        """Up to ``limit`` unacked ``(seq, event_json)`` with ``seq > after_seq``, oldest first."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT seq, payload FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [(int(seq), str(payload)) for seq, payload in rows]

    def ack(self, seq: int) -> bool:
        """Delete the event ``seq`` (its PUBACK came); False if it was not stored."""
        return self.ack_many([seq]) == 1

    def ack_many(self, seqs: Iterable[int]) -> int:
        """Delete the events ``seqs`` (their PUBACKs came) in one transaction; returns how
        many of them were stored."""
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
        """Close the database and release the file lock (idempotent)."""
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
        """One transaction for all ``events``: per event its seq, or the refusal."""
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
        """Inside the transaction: dedupe, evict if the bound demands it, insert; returns the
        results, rows added and rows evicted."""
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
        """Delete the oldest low-priority row (1), or count a refusal and raise."""
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
    """Turns the spool's evictions and refusals into ``spool_full`` technical events.

    :meth:`after_put` (after every put) spools an ``onset`` when the first eviction or refusal
    of an episode happens; :meth:`maybe_end` (periodically) spools the ``ended`` message once
    the spool has drained to ``CLEAR_FRACTION`` of its bound. ``detail`` holds ``max_events``
    and the episode's ``evicted`` and ``refused`` counts. Both methods are thread-safe.
    """

    CLEAR_FRACTION = 0.5

    def __init__(self, spool: Spool, site: str, device_id: str, priority: str) -> None:
        self._spool = spool
        self._identity = {"site": site, "device_id": device_id, "priority": priority}
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
                    type="spool_full",
                    stream_id=DEVICE_STREAM,
                    **self._identity,
                    start_utc=utc_now(),
                    detail=self._detail(),
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
    """Open and flock ``<path>.lock``; SpoolLockedError if another process holds it."""
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
    """The connection (autocommit; transactions are explicit) with WAL and FULL sync."""
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
