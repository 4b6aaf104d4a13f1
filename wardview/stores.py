"""The history store: an SQLite file (the default) or PostgreSQL (psycopg 3), same tables and
SQL, written with ``?`` parameters (docs/evidence.md, "The store: SQLite or PostgreSQL").
Schema versions: 1 events, readings, beds, clips, meta; 2 ``readings.received_s``, the view's
clock, so pruning never trusts a device's; 3 ``alarms``, the alarm conditions the view lists.
``{real}`` is DOUBLE PRECISION on PostgreSQL, whose 4-byte REAL is too coarse for epoch seconds."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, ClassVar

from lungwatch.errors import LungwatchError
from lungwatch.private import create_private

SCHEMA_VERSION = 3
_TABLES = """
CREATE TABLE IF NOT EXISTS events (
    seq {serial},  -- the order received
    id TEXT NOT NULL UNIQUE,
    episode_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    type TEXT NOT NULL,
    kind TEXT NOT NULL,
    priority TEXT NOT NULL,
    state TEXT NOT NULL,
    start_s {real} NOT NULL,
    end_s {real},
    received_s {real} NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_bed ON events (device_id, stream_id, start_s);
CREATE INDEX IF NOT EXISTS events_episode ON events (episode_id);
CREATE TABLE IF NOT EXISTS readings (
    device_id TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    kind TEXT NOT NULL,  -- verdict | respiration
    at_s {real} NOT NULL,
    body TEXT NOT NULL,
    received_s {real}  -- the view's clock (pruning), NULL in rows from before version 2
);
CREATE INDEX IF NOT EXISTS readings_bed ON readings (device_id, stream_id, kind, at_s);
CREATE TABLE IF NOT EXISTS beds (
    device_id TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    summary TEXT NOT NULL,
    at_s {real} NOT NULL,
    PRIMARY KEY (device_id, stream_id)
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,  -- 'site' (the one site this store holds), 'schema_version'
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS clips (
    episode_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    start_s {real} NOT NULL,
    received_s {real} NOT NULL,
    bytes {integer} NOT NULL,
    header TEXT NOT NULL,
    flac {blob} NOT NULL
);
CREATE TABLE IF NOT EXISTS alarms (
    device_id TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    condition TEXT NOT NULL,
    record TEXT NOT NULL,  -- lungwatch.alarms.AlarmCondition.record(), JSON
    at_s {real} NOT NULL,  -- the view's clock when it was written
    PRIMARY KEY (device_id, stream_id, condition)
)
"""


class StoreError(LungwatchError):
    """The history store cannot be used (its engine, its version, its connection)."""


class Backend:
    name = ""
    types: ClassVar[dict[str, str]] = {}

    def create(self) -> None:
        """Make the store reachable before its first connection; StoreError when it cannot be."""

    def connect(self, writer: bool = False) -> Any:
        """A connection (``writer``: the history writer's own, held for its life)."""
        raise NotImplementedError

    def transaction(self, db: Any) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def sql(self, text: str) -> str:
        return text

    def statements(self) -> list[str]:
        """Split at ``;``: no comment in the schema may hold one."""
        text = _TABLES.format(**self.types)
        return [part.strip() for part in text.split(";") if part.strip()]

    def lock(self, db: Any) -> None:
        """Hold off other views' migrations until this transaction ends (PostgreSQL)."""

    def broken(self, db: Any) -> bool:
        """The connection is lost (a database server that restarted): connect again."""
        return False

    def tables(self, db: Any) -> set[str]:
        raise NotImplementedError

    def columns(self, db: Any, table: str) -> set[str]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class SqliteBackend(Backend):
    name = "sqlite"
    types: ClassVar[dict[str, str]] = {
        "serial": "INTEGER PRIMARY KEY", "real": "REAL", "integer": "INTEGER", "blob": "BLOB"
    }  # fmt: skip

    def __init__(self, path: Path) -> None:
        self.path = path

    def create(self) -> None:
        """The file 0600 whatever the umask, a link in its place refused (clips are patient
        audio; SQLite gives its -wal and -shm files the database's mode)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            create_private(self.path)
        except OSError as exc:
            raise StoreError(
                f"{self.path}: cannot open the history file ({exc.strerror})"
            ) from None
        db = self.connect()
        try:
            db.execute("PRAGMA journal_mode=WAL")
        finally:
            db.close()

    def connect(self, writer: bool = False) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), timeout=10.0, check_same_thread=False)
        if writer:
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash loses nothing committed
        return db

    def transaction(self, db: sqlite3.Connection) -> AbstractContextManager[Any]:
        return db  # commits on success, rolls back on an error

    def tables(self, db: Any) -> set[str]:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def columns(self, db: Any, table: str) -> set[str]:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}

    def describe(self) -> str:
        return str(self.path)


class PostgresBackend(Backend):
    name = "postgresql"
    types: ClassVar[dict[str, str]] = {
        "serial": "BIGSERIAL PRIMARY KEY", "real": "DOUBLE PRECISION", "integer": "BIGINT",
        "blob": "BYTEA",
    }  # fmt: skip
    LOCK_KEY = 0x6C756E67  # pg_advisory_xact_lock: the view's migrations, one at a time

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            import psycopg
        except ImportError:
            raise StoreError(
                "a postgresql:// history needs psycopg 3 (pip install 'psycopg[binary]')"
            ) from None
        self._psycopg = psycopg

    def connect(self, writer: bool = False) -> Any:
        try:
            return self._psycopg.connect(self.url, connect_timeout=10)
        except self._psycopg.Error as exc:
            raise StoreError(f"{self.describe()}: cannot connect ({_first_line(exc)})") from None

    @contextmanager
    def transaction(self, db: Any) -> Iterator[Any]:
        with db.transaction():
            yield db

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def broken(self, db: Any) -> bool:
        return bool(db.closed or db.broken)

    def lock(self, db: Any) -> None:
        db.execute("SELECT pg_advisory_xact_lock(%s)", (self.LOCK_KEY,))

    def tables(self, db: Any) -> set[str]:
        rows = db.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        return {r[0] for r in rows}

    def columns(self, db: Any, table: str) -> set[str]:
        rows = db.execute(
            "SELECT column_name FROM information_schema.columns WHERE "
            "table_schema = current_schema() AND table_name = %s", (table,),
        )  # fmt: skip
        return {r[0] for r in rows}

    def describe(self) -> str:
        return re.sub(r"//([^:@/]+):[^@/]*@", r"//\1:***@", self.url)  # no password in logs


def is_database_url(where: str | Path) -> bool:
    return str(where).startswith(("postgresql://", "postgres://"))


def open_backend(where: str | Path) -> Backend:
    return PostgresBackend(str(where)) if is_database_url(where) else SqliteBackend(Path(where))


def migrate(backend: Backend, db: Any) -> int:
    """Bring the store to :data:`SCHEMA_VERSION`; the version found."""
    with backend.transaction(db):
        backend.lock(db)
        found = _version(backend, db)
        if found > SCHEMA_VERSION:
            raise StoreError(f"{backend.describe()}: history schema version {found}, newer than "
                             f"this lungwatch's {SCHEMA_VERSION}: upgrade the view")  # fmt: skip
        if found == 1:  # version 1 lacked the view's clock on readings
            db.execute("ALTER TABLE readings ADD COLUMN received_s " + backend.types["real"])
        for statement in backend.statements():
            db.execute(statement)
        upsert = ("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (name) "
                  "DO UPDATE SET value = excluded.value")  # fmt: skip
        db.execute(backend.sql(upsert), (str(SCHEMA_VERSION),))
    return found


def _version(backend: Backend, db: Any) -> int:
    """0: an empty store; 1: tables but no version row nor readings.received_s; else the row's."""
    tables = backend.tables(db)
    if "meta" in tables:
        row = db.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        if row is not None:
            return int(row[0])
    if "readings" not in tables:
        return 0
    return 2 if "received_s" in backend.columns(db, "readings") else 1


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
