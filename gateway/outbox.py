"""The gateway's durable queue and its courier (docs/gateway.md, "Delivery": order, retries,
refusals). A message is stored before it is sent, as built under its control id (MSH-10), so
every retry sends the same bytes under the same id; it leaves the queue only once the receiver
accepted it. The file is created 0600; SQLite in WAL mode, synchronous FULL: a message ``put``
returned for survives a power cut."""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from lungwatch.errors import LungwatchError
from lungwatch.private import create_private

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    control_id TEXT NOT NULL UNIQUE,
    message TEXT NOT NULL,
    queued_s REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'sent', 'refused')),
    attempts INTEGER NOT NULL DEFAULT 0,
    refusals INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    done_s REAL
);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox (state, seq);
CREATE TABLE IF NOT EXISTS notes (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


# what a queue made before messages had a bed and a priority lacks (added when it is opened)
ADDED_COLUMNS = (
    ("device", "TEXT NOT NULL DEFAULT ''"),
    ("bed", "TEXT NOT NULL DEFAULT ''"),
    ("priority", "INTEGER NOT NULL DEFAULT 2"),
)
PRIORITY = {"high": 0, "medium": 1, "low": 2}  # a message's urgency (the lower, the sooner)
HEADS = """
WITH heads AS (SELECT MIN(seq) AS seq FROM outbox WHERE state = 'queued' GROUP BY bed)
SELECT o.seq, o.key, o.control_id, o.message, o.attempts, o.refusals, o.device FROM outbox o
JOIN heads ON o.seq = heads.seq ORDER BY o.priority, o.device = ?, o.seq LIMIT 1
"""
SET_NOTE = """INSERT INTO notes (name, value) VALUES (?, ?)
ON CONFLICT (name) DO UPDATE SET value = excluded.value"""


class OutboxError(LungwatchError):
    """The queue's file cannot be used."""


class StoreError(OutboxError):
    """Not stored now (disk or queue full, file locked): the caller keeps it unacked, retries."""


@dataclass(frozen=True)
class Queued:
    seq: int
    key: str
    control_id: str
    message: str
    attempts: int
    refusals: int


def new_control_id() -> str:
    """Random, not counted: a receiver deduplicates by it, and a restarted counter would repeat."""
    return uuid.uuid4().hex[:20].upper()


class Outbox:
    """The queue's SQLite file; thread-safe."""

    def __init__(self, path: Path, keep_sent_s: float = 2 * 86400.0) -> None:
        self.path, self.keep_sent_s = Path(path), keep_sent_s
        try:
            create_private(self.path)
        except OSError as exc:
            raise OutboxError(f"{self.path}: cannot open the queue ({exc.strerror})") from None
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            have = {str(row[1]) for row in db.execute("PRAGMA table_info(outbox)")}
            for name, kind in ADDED_COLUMNS:
                if name not in have:
                    db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {kind}")
            db.execute("CREATE INDEX IF NOT EXISTS outbox_bed ON outbox (state, bed, seq)")
            problems = [
                " ".join(str(row[0]).split()) for row in db.execute("PRAGMA quick_check(3)")
            ]
        except sqlite3.Error as exc:
            if db is not None:
                db.close()
            raise OutboxError(f"{self.path}: cannot use the queue ({exc})") from None
        self._db = db
        if problems != ["ok"]:  # found at the start, not by a courier that then stops
            db.close()
            raise OutboxError(
                f"{self.path}: the queue is corrupted ({'; '.join(problems)}); move it aside "
                "(its messages can be read back with sqlite3's .recover) and start again"
            )
        self._lock = threading.Lock()
        self._queued = threading.Condition(self._lock)
        self._pruned_s = 0.0
        self._last_device = ""  # whose message went last: at equal urgency, another's next

    def put(self, key: str, build: Callable[[str], str]) -> bool:
        """Queue ``build(control_id)`` under ``key``; False (nothing built) when queued before."""
        return self._put(key, build, new_control_id())

    def put_built(
        self,
        key: str,
        control_id: str,
        message: str,
        note: tuple[str, str | None] | None = None,
        bed: tuple[str, str] = ("", ""),
        priority: str = "low",
    ) -> bool:
        """:meth:`put` of a built message, with a ``(name, value)`` note in the same
        transaction (value None deletes it): it never disagrees with the queue after a crash."""
        return self._put(key, lambda _: message, control_id, note, bed, priority)

    def set_note(self, name: str, value: str) -> None:
        """Keep what the gateway must know after a restart; StoreError where it cannot."""
        try:
            with self._lock, self._db:
                self._db.execute(SET_NOTE, (name, value))
        except sqlite3.OperationalError as exc:
            raise StoreError(f"{self.path}: cannot store a note now ({exc})") from None

    def notes(self) -> dict[str, str]:
        with self._lock:
            rows = self._db.execute("SELECT name, value FROM notes").fetchall()
        return {str(name): str(value) for name, value in rows}

    def _put(
        self,
        key: str,
        build: Callable[[str], str],
        control_id: str,
        note: tuple[str, str | None] | None = None,
        bed: tuple[str, str] = ("", ""),
        priority: str = "low",
    ) -> bool:
        with self._lock:
            try:
                queued = self._db.execute("SELECT 1 FROM outbox WHERE key = ?", (key,)).fetchone()
            except sqlite3.OperationalError as exc:  # unreadable now: nothing built, nothing lost
                raise StoreError(f"{self.path}: cannot read the queue now ({exc})") from None
            if queued:
                return False
            message = build(control_id)
            try:
                with self._db:  # one transaction: the message and its note, or neither
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.execute(
                        "INSERT INTO outbox (key, control_id, message, queued_s, device, bed, "
                        "priority) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (key, control_id, message, time.time(), bed[0], "/".join(bed),
                         PRIORITY.get(priority, 2)),
                    )  # fmt: skip
                    if note is not None and note[1] is None:
                        self._db.execute("DELETE FROM notes WHERE name = ?", (note[0],))
                    elif note is not None:
                        self._db.execute(SET_NOTE, note)
            except sqlite3.OperationalError as exc:  # disk full, locked: nothing was stored
                raise StoreError(f"{self.path}: cannot store a message now ({exc})") from None
            self._queued.notify_all()
            return True

    def head(self, wait_s: float = 0.0) -> Queued | None:
        """The next message to send (:meth:`_head`), waiting up to ``wait_s`` for one;
        StoreError while the queue cannot be read."""
        with self._lock:
            try:
                row = self._head()
                if row is None and wait_s > 0:
                    self._queued.wait(wait_s)
                    row = self._head()
            except sqlite3.OperationalError as exc:
                raise StoreError(f"{self.path}: cannot read the queue now ({exc})") from None
            return row

    def sent(self, seq: int) -> None:
        self._finish(seq, "sent", "")

    def refused(self, seq: int, error: str) -> None:
        self._finish(seq, "refused", error)

    def attempted(self, seq: int, error: str, refusal: bool) -> int:
        """Note a failed attempt; the message's refusals so far."""
        with self._lock:
            try:
                self._db.execute(
                    "UPDATE outbox SET attempts = attempts + 1, refusals = refusals + ?, "
                    "last_error = ? WHERE seq = ?",
                    (int(refusal), error, seq),
                )
                row = self._db.execute(
                    "SELECT refusals FROM outbox WHERE seq = ?", (seq,)
                ).fetchone()
            except sqlite3.OperationalError as exc:
                raise StoreError(f"{self.path}: cannot note an attempt now ({exc})") from None
            return int(row[0]) if row else 0

    def counts(self) -> dict[str, int]:
        """Messages per state (queued, sent and still kept, refused)."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
        return {"queued": 0, "sent": 0, "refused": 0, **{state: int(n) for state, n in rows}}

    def refusals(self) -> list[tuple[str, str, str]]:
        """(key, control id, the receiver's last reply) of every refused message."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, control_id, last_error FROM outbox WHERE state = 'refused' "
                "ORDER BY seq"
            ).fetchall()
        return [(str(k), str(c), str(e)) for k, c, e in rows]

    def resend(self, which: str = "all") -> int:
        """Refused messages (``all``, a control id or key) back in their place, refusals reset."""
        with self._lock:
            done = self._db.execute(
                "UPDATE outbox SET state = 'queued', refusals = 0, done_s = NULL "
                "WHERE state = 'refused' AND (? = 'all' OR control_id = ? OR key = ?)",
                (which, which, which),
            )
            return int(done.rowcount)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _head(self) -> Queued | None:
        """Of each bed's oldest queued message, the most urgent, then another device's than
        the last one sent (no device's flood holds back another's), then the oldest."""
        row = self._db.execute(HEADS, (self._last_device,)).fetchone()
        if row is None:
            return None
        self._last_device = str(row[6])
        return Queued(*row[:6])

    def _finish(self, seq: int, state: str, error: str) -> None:
        now = time.time()
        try:
            with self._lock:
                self._db.execute(
                    "UPDATE outbox SET state = ?, last_error = ?, done_s = ? WHERE seq = ?",
                    (state, error, now, seq),
                )
                if now - self._pruned_s > 60.0:
                    self._pruned_s = now
                    self._db.execute(
                        "DELETE FROM outbox WHERE state = 'sent' AND done_s < ?",
                        (now - self.keep_sent_s,),
                    )
        except sqlite3.OperationalError as exc:
            raise StoreError(f"{self.path}: cannot note a message {state} now ({exc})") from None


@dataclass(frozen=True)
class CourierConfig:
    """How the courier retries: ``backoff_min_s`` doubling to ``backoff_max_s``."""

    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    max_refusals: int = 5


# what one delivery attempt came to; refused is tried again up to max_refusals, rejected never
SENT, RETRY, REFUSED, REJECTED = "sent", "retry", "refused", "rejected"


T = TypeVar("T")
STORE_RETRY_S = 1.0  # a queue read or write that failed (a full disk, a held file): tried again


class Transport(Protocol):
    def deliver(self, row: Queued) -> tuple[str, str]:
        """The outcome (:data:`SENT`, :data:`RETRY`, ...) and why."""
        ...

    def close(self) -> None: ...


class Courier:
    """Sends the outbox's messages one at a time through one transport."""

    def __init__(self, outbox: Outbox, transport: Transport, config: CourierConfig) -> None:
        self.outbox, self.transport, self.config = outbox, transport, config
        self.stats = {"sent": 0, "retries": 0, "refused": 0, "store_waits": 0}
        self.last_error = self.last_sent_utc = ""
        self._stop = threading.Event()

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        delay = self.config.backoff_min_s
        while not stop.is_set():
            row = self._noted(lambda: self.outbox.head(wait_s=0.5))
            if row is None:
                continue
            if self.send(row):
                delay = self.config.backoff_min_s
            else:
                stop.wait(delay)
                delay = min(2.0 * delay, self.config.backoff_max_s)
        self.transport.close()

    def _noted(self, write: Callable[[], T]) -> T | None:
        """A read or write of the queue, retried every ``STORE_RETRY_S`` while it raises
        StoreError (nothing else is sent meanwhile); None at a stop."""
        said = False
        while True:
            try:
                return write()
            except StoreError as exc:
                self.stats["store_waits"] += 1
                self.last_error = str(exc)[:200]
                if not said:
                    log.error("%s; the courier waits for the queue", exc)
                    said = True
                if self._stop.wait(STORE_RETRY_S):
                    return None

    def send(self, row: Queued) -> bool:
        """One attempt at ``row``; True when it left the queue."""
        outcome, why = self.transport.deliver(row)
        if outcome == SENT:
            self._noted(lambda: self.outbox.sent(row.seq))
            self.stats["sent"] += 1
            self.last_sent_utc = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            return True
        refusal = outcome in (REFUSED, REJECTED)
        refusals = self._noted(lambda: self.outbox.attempted(row.seq, why, refusal)) or 0
        self.last_error = f"{row.control_id}: {why}"
        if outcome == REJECTED or (refusal and refusals >= self.config.max_refusals):
            self._noted(lambda: self.outbox.refused(row.seq, why))
            self.stats["refused"] += 1
            log.error("message %s (%s) refused %d times, kept as refused: %s", row.control_id,
                      row.key, refusals, why)  # fmt: skip
            return True
        self.stats["retries"] += 1
        log.warning("message %s not delivered (%s); trying again", row.control_id, why)
        return False
