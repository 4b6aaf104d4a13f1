"""What the ward view received and the alarms it lists, in SQLite or PostgreSQL
(:mod:`wardview.stores`), so they survive restarts (docs/evidence.md, "History store").
One writer thread commits, so the MQTT thread never waits on the disk; a row that cannot be
written is lost alone, counted in :attr:`History.failed` and reported through ``on_failure``.
Reads open their own connection (WAL lets them run beside the writer)."""

from __future__ import annotations

import itertools
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lungwatch.clip import Clip
from lungwatch.errors import LungwatchError
from lungwatch.events import FINDING_RATE_KEYS, RESPIRATION_TYPES, Event, parse_utc
from lungwatch.labels import FAMILY_CLASSES
from lungwatch.supervision import RESTARTS, Worker
from wardview.stores import Backend, StoreError, migrate, open_backend

log = logging.getLogger("lungwatch.dashboard")

FLUSH_S = 0.2  # the writer commits what came in this often
FUTURE_TOLERANCE_S = 300.0  # a device time further ahead of the view's clock is not believed
PRUNE_EVERY_S = 60.0
RECENT_EVENTS = 8  # per bed, restored at start
RESTORED_READINGS = 720  # per bed and kind, restored at start (the page's trend)
RESTORED_IDS = 100_000  # the newest event ids restored at start (duplicates are not taken)
# the onsets counted: each family's sounds and its finding episodes, and the breathing alarms
FAMILIES = {**{f: (*types, f) for f, types in FAMILY_CLASSES.items()},
            "breathing": RESPIRATION_TYPES}  # fmt: skip


def epoch_s(utc: str | None) -> float | None:
    """POSIX seconds of a ``...Z`` time (None for None or a bad one)."""
    if not utc:
        return None
    try:
        return parse_utc(utc).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class Restored:
    summaries: list[tuple[str, str, dict[str, Any]]]  # (device, stream, summary)
    open_events: list[Event]  # the last message of every episode not ended
    recent: list[Event]  # each bed's last events, oldest first
    readings: list[tuple[str, str, str, dict[str, Any]]]  # (device, stream, kind, body)
    clips: set[str]  # episodes that have evidence
    alarms: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    #        (device, stream, condition record): the conditions the view listed
    event_ids: list[str] = field(default_factory=list)  # the newest messages' ids, oldest first
    episode_ids: list[str] = field(default_factory=list)  # their episodes, oldest first


class HistoryError(LungwatchError):
    """The history file cannot be used by this view (another site's)."""


class History:
    def __init__(
        self,
        path: str | Path,
        max_age_days: float = 30.0,
        max_evidence_mb: float = 2000.0,
        clock: Callable[[], float] = time.time,
        site: str | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.backend: Backend = open_backend(path)
        self.where = self.backend.describe()
        self.max_age_s, self.max_evidence_bytes = max_age_days * 86400.0, max_evidence_mb * 1e6
        self.clock = clock
        self.on_failure = on_failure
        self.failed = 0  # rows that could not be written
        try:
            self.backend.create()
            self._prepare(site)
        except StoreError as exc:
            raise HistoryError(str(exc)) from None
        self._queue: queue.Queue[tuple[str, tuple[Any, ...]] | None] = queue.Queue()
        self._flushed = threading.Condition()
        self._written = 0  # items committed
        self._queued = 0
        self._closing = False
        self._taken = 0  # items the writer holds, not yet committed
        self._writer = Worker(self._write, "lungwatch-history", lambda: self._closing).start()

    def _prepare(self, site: str | None) -> None:
        db = self.backend.connect()
        try:
            migrate(self.backend, db)
            if site is None:
                return
            with self.backend.transaction(db):
                insert = "INSERT INTO meta VALUES ('site', ?) ON CONFLICT DO NOTHING"
                db.execute(self.backend.sql(insert), (site,))
                owner = db.execute("SELECT value FROM meta WHERE name='site'").fetchone()[0]
        finally:
            db.close()
        if owner != site:
            raise HistoryError(
                f"{self.where}: the history of site {owner!r}, not of {site!r}; "
                "give each site its own dashboard.history_path"
            )

    @contextmanager
    def _reading(self) -> Iterator[Any]:
        db = self.backend.connect()
        try:
            with self.backend.transaction(db):
                yield db
        finally:
            db.close()

    # -- writing (any thread) --------------------------------------------------------------
    def _device_time(self, utc: str | None) -> float:
        now, at = self.clock(), epoch_s(utc)
        return now if at is None or at > now + FUTURE_TOLERANCE_S else at

    def add_event(self, event: Event) -> None:
        start = self._device_time(event.start_utc)
        end = epoch_s(event.end_utc)
        end = None if end is None else max(start, min(end, self.clock() + FUTURE_TOLERANCE_S))
        self._put("INSERT INTO events (id, episode_id, device_id, stream_id, type, "
                  "kind, priority, state, start_s, end_s, received_s, body) "
                  "VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING", (
            event.id, event.episode_id, event.device_id, event.stream_id, event.type,
            event.kind, event.priority, event.state, start, end, self.clock(), event.to_json(),
        ))  # fmt: skip

    def add_reading(self, device_id: str, stream_id: str, kind: str, body: dict[str, Any]) -> None:
        at = self._device_time(body.get("utc"))
        self._put("INSERT INTO readings (device_id, stream_id, kind, at_s, body, received_s) "
                  "VALUES (?,?,?,?,?,?)",
                  (device_id, stream_id, kind, at, json.dumps(body), self.clock()))  # fmt: skip

    def set_summary(self, device_id: str, stream_id: str, summary: dict[str, Any]) -> None:
        self._put("INSERT INTO beds VALUES (?,?,?,?) ON CONFLICT (device_id, stream_id) DO "
                  "UPDATE SET summary = excluded.summary, at_s = excluded.at_s",
                  (device_id, stream_id, json.dumps(summary), self.clock()))  # fmt: skip

    def set_alarm(
        self, device_id: str, stream_id: str, condition: str, record: dict[str, Any]
    ) -> None:
        self._put("INSERT INTO alarms VALUES (?,?,?,?,?) ON CONFLICT (device_id, stream_id, "
                  "condition) DO UPDATE SET record = excluded.record, at_s = excluded.at_s",
                  (device_id, stream_id, condition, json.dumps(record), self.clock()))  # fmt: skip

    def drop_alarm(self, device_id: str, stream_id: str, condition: str) -> None:
        """The condition left the view's list (acknowledged and over, or its bed gone)."""
        self._put("DELETE FROM alarms WHERE device_id = ? AND stream_id = ? AND condition = ?",
                  (device_id, stream_id, condition))  # fmt: skip

    def add_clip(self, clip: Clip) -> None:
        start = self._device_time(clip.start_utc)
        self._put("INSERT INTO clips VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING", (
            clip.episode_id, clip.device_id, clip.stream_id, clip.event_type, start,
            self.clock(), len(clip.flac), json.dumps(clip.header()), clip.flac,
        ))  # fmt: skip

    def _put(self, sql: str, row: tuple[Any, ...]) -> None:
        with self._flushed:
            self._queued += 1
        self._queue.put((self.backend.sql(sql), row))

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything added so far is committed."""
        deadline = time.monotonic() + timeout_s
        with self._flushed:
            target = self._queued
            while self._written < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._flushed.wait(left)
        return True

    def supervise(self) -> str | None:
        """None while the writer runs; else why it stopped (restarted within Worker's bounds)."""
        why = self._writer.failure()
        if why is None:
            return None
        with self._flushed:
            lost, self._taken = self._taken, 0
            self._written += lost  # nobody waits for them any more
            self._flushed.notify_all()
        if lost:
            self._failure(f"{lost} row(s) the writer held were not stored")
        if self._writer.restart():
            return f"{why}; started again"
        return f"{why}; not started again ({RESTARTS} times already): nothing more is stored"

    def close(self) -> None:
        self.flush()
        self._closing = True
        self._queue.put(None)
        self._writer.join()

    def _write(self) -> None:
        db = self.backend.connect(writer=True)
        pruned = 0.0
        running = True
        while running:
            batch = []
            try:
                batch.append(self._queue.get(timeout=FLUSH_S))
                while True:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            rows = [item for item in batch if item is not None]
            running = len(rows) == len(batch)
            self._taken = len(rows)
            if self.backend.broken(db):  # a database server that restarted: connect again
                db = self.backend.connect(writer=True)
            try:
                with self.backend.transaction(db):
                    cursor = db.cursor()
                    # psycopg pipelines each run of one statement: a round trip per run, not per row
                    for sql, run in itertools.groupby(rows, key=lambda item: item[0]):
                        cursor.executemany(sql, [row for _, row in run])
            except Exception:  # one bad row must not cost the others
                self._one_by_one(db, rows)
            try:
                if self.clock() - pruned > PRUNE_EVERY_S:
                    pruned = self.clock()
                    with self.backend.transaction(db):
                        self._prune(db)
            except Exception as exc:  # the writer goes on; said once a minute
                self._failure(f"pruning the history failed: {type(exc).__name__}: {exc}")
            with self._flushed:
                self._written += len(rows)
                self._taken = 0
                self._flushed.notify_all()
        db.close()

    def _one_by_one(self, db: Any, rows: list[tuple[str, tuple[Any, ...]]]) -> None:
        """The batch again, a transaction per row: only the rows that fail are lost."""
        for sql, row in rows:
            try:
                with self.backend.transaction(db):
                    db.execute(sql, row)
            except Exception as exc:  # counted, reported, the writer goes on
                found = re.search(r"(?:INTO|FROM) (\w+)", sql)
                table = found.group(1) if found else "?"
                self._failure(f"a {table} row was not stored: {type(exc).__name__}: {exc}")

    def _failure(self, why: str) -> None:
        self.failed += 1
        log.error("history: %s", why)
        if self.on_failure is not None:
            try:
                self.on_failure(why)
            except Exception:  # the report must not stop the writer
                log.exception("history: reporting a failure failed")

    def _prune(self, db: Any) -> None:
        oldest, q = self.clock() - self.max_age_s, self.backend.sql
        db.execute(q("DELETE FROM events WHERE received_s < ?"), (oldest,))
        db.execute(q("DELETE FROM readings WHERE COALESCE(received_s, at_s) < ?"), (oldest,))
        db.execute(q("DELETE FROM clips WHERE received_s < ?"), (oldest,))
        total = int(db.execute("SELECT COALESCE(SUM(bytes), 0) FROM clips").fetchone()[0])
        while total > self.max_evidence_bytes:
            row = db.execute("SELECT episode_id, bytes FROM clips ORDER BY received_s LIMIT 1"
                             ).fetchone()  # fmt: skip
            db.execute(q("DELETE FROM clips WHERE episode_id = ?"), (row[0],))
            total -= int(row[1])

    def prune_now(self) -> None:
        """Apply the bounds now (the writer does it once a minute)."""
        self.flush()
        with self._reading() as db:
            self._prune(db)

    def clip(self, episode_id: str) -> tuple[dict[str, Any], bytes, dict[str, str]] | None:
        """(header, FLAC, identity) of an episode's clip, else None."""
        with self._reading() as db:
            query = "SELECT header, flac, device_id, stream_id FROM clips WHERE episode_id = ?"
            row = db.execute(self.backend.sql(query), (episode_id,)).fetchone()
        if row is None:
            return None
        return json.loads(row[0]), bytes(row[1]), {"device_id": row[2], "stream_id": row[3]}

    def trend(self, device_id: str, stream_id: str, hours: int, now_s: float | None = None
              ) -> dict[str, Any]:  # fmt: skip
        """A bed's last ``hours``, hour by hour: event onsets per family, minutes under
        ``poor_signal``, the mean respiratory rate and finding rates (% of breathing time)."""
        now = self.clock() if now_s is None else now_s
        start = (int(now // 3600) - hours + 1) * 3600.0
        stop = start + 3600.0 * hours  # rows stamped later (device clocks) are not shown
        bins = [start + 3600.0 * i for i in range(hours)]
        counts = {family: [0] * hours for family in FAMILIES}
        poor = [0.0] * hours
        keys = ("rate_bpm", *FINDING_RATE_KEYS)
        rates: dict[str, list[list[float]]] = {k: [[] for _ in range(hours)] for k in keys}
        with self._reading() as db:
            bed, q = (device_id, stream_id), self.backend.sql
            onsets = db.execute(q(
                "SELECT type, start_s FROM events WHERE device_id=? AND stream_id=? AND "
                "state='onset' AND start_s >= ? AND start_s < ?"), (*bed, start, stop)
            ).fetchall()  # fmt: skip
            spans = db.execute(q(
                "SELECT episode_id, MIN(start_s), MAX(COALESCE(end_s, ?)) FROM events "
                "WHERE device_id=? AND stream_id=? AND type='poor_signal' AND start_s < ? "
                "GROUP BY episode_id"), (now, device_id, stream_id, now)).fetchall()  # fmt: skip
            readings = db.execute(q(
                "SELECT at_s, body FROM readings WHERE device_id=? AND stream_id=? AND "
                "kind='respiration' AND at_s >= ? AND at_s < ?"), (*bed, start, stop)
            ).fetchall()  # fmt: skip
        for type_, at in onsets:
            for family, types in FAMILIES.items():
                if type_ in types:
                    counts[family][int((at - start) // 3600)] += 1
        for _, lo, hi in spans:
            for i, b in enumerate(bins):
                poor[i] += max(0.0, min(hi, b + 3600.0) - max(lo, b)) / 60.0
        for at, body in readings:
            reading = json.loads(body)
            for key in keys:
                value = reading.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    rates[key][int((at - start) // 3600)].append(float(value))
        return {
            "hours": [
                datetime.fromtimestamp(b, timezone.utc).strftime("%Y-%m-%dT%H:00Z") for b in bins
            ],
            "onsets": counts,
            "poor_signal_min": [round(m, 1) for m in poor],
            **{k: [round(sum(r) / len(r), 1) if r else None for r in rates[k]] for k in keys},
        }

    def restore(self) -> Restored:
        q = self.backend.sql
        with self._reading() as db:
            summaries = [(d, s, json.loads(b)) for d, s, b in db.execute(
                "SELECT device_id, stream_id, summary FROM beds")]  # fmt: skip
            last = db.execute(
                "SELECT e.body FROM events e JOIN (SELECT MAX(seq) AS s FROM events "
                "GROUP BY episode_id) l ON e.seq = l.s WHERE e.state != 'ended' ORDER BY e.seq"
            ).fetchall()
            recent = db.execute(q(
                "SELECT body FROM (SELECT body, seq, ROW_NUMBER() OVER (PARTITION BY "
                "device_id, stream_id ORDER BY seq DESC) AS n FROM events) AS r "
                "WHERE n <= ? ORDER BY seq"), (RECENT_EVENTS,)).fetchall()  # fmt: skip
            readings = db.execute(q(
                "SELECT device_id, stream_id, kind, body FROM (SELECT *, ROW_NUMBER() OVER "
                "(PARTITION BY device_id, stream_id, kind ORDER BY at_s DESC) AS n FROM "
                "readings) AS r WHERE n <= ? ORDER BY at_s"), (RESTORED_READINGS,)
            ).fetchall()  # fmt: skip
            clips = {row[0] for row in db.execute("SELECT episode_id FROM clips")}
            alarms = db.execute("SELECT device_id, stream_id, record FROM alarms").fetchall()
            ids = db.execute(q("SELECT id, episode_id FROM events ORDER BY seq DESC LIMIT ?"),
                             (RESTORED_IDS,)).fetchall()  # fmt: skip
        return Restored(
            summaries=summaries,
            open_events=[Event.from_json(row[0]) for row in last],
            recent=[Event.from_json(row[0]) for row in recent],
            readings=[(d, s, k, json.loads(b)) for d, s, k, b in readings],
            clips=clips,
            alarms=self._alarm_records(alarms),
            event_ids=[row[0] for row in reversed(ids)],
            episode_ids=list(dict.fromkeys(row[1] for row in reversed(ids))),
        )

    def _alarm_records(self, rows: list[Any]) -> list[tuple[str, str, dict[str, Any]]]:
        """One that is not a JSON object is left out and reported."""
        records = []
        for device_id, stream_id, text in rows:
            try:
                record = json.loads(text)
            except ValueError as exc:
                record = exc
            if isinstance(record, dict):
                records.append((str(device_id), str(stream_id), record))
            else:
                self._failure(f"an alarm of {device_id}/{stream_id} kept in the history cannot be "
                              f"read and is not listed again ({record})")  # fmt: skip
        return records
