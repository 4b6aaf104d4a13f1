"""The device's evidence channel: clips spooled on disk, sent over their own MQTT connection (what
is still spooled at :meth:`~EvidencePublisher.close` waits for the next start).

Why MQTT, why a connection of its own, the spool and its bounds: docs/evidence.md ("On the device").
The spool is ``synchronous=NORMAL``: a clip may be lost on power loss, never on a crash."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import IO, Any

from edge.evidence.recorder import Cut, EvidenceConfig
from lungwatch.clip import Clip, EvidenceError, clip_messages
from lungwatch.errors import LungwatchError
from lungwatch.mqtt import MqttConfig, Session
from lungwatch.supervision import Worker

log = logging.getLogger("lungwatch.evidence")

QUEUE_CLIPS = 256  # clips waiting for the spool
SEND_AHEAD = 16  # clips whose parts are handed to paho before waiting for their PUBACKs
POLL_S = 0.05
MB = 1_000_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS clips (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    episode_id TEXT NOT NULL UNIQUE,
    stream_id TEXT NOT NULL,
    created_s REAL NOT NULL,
    bytes INTEGER NOT NULL,
    messages TEXT NOT NULL  -- JSON: [[topic, payload], ...]
);
CREATE INDEX IF NOT EXISTS clips_created ON clips (created_s);
"""


class EvidenceSpoolError(LungwatchError):
    """The evidence spool cannot be opened."""


class EvidenceSpool:
    """Clips waiting for the broker; thread-safe. Its count and bytes are kept in memory and
    every statement reaches its rows through an index, so a long backlog costs no more."""

    def __init__(self, path: str | Path, max_bytes: int, max_age_s: float) -> None:
        self.path, self.max_bytes, self.max_age_s = Path(path), max_bytes, max_age_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file: IO[str] = open(str(self.path) + ".lock", "a")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise EvidenceSpoolError(f"{self.path}: another process has this spool open") from None
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self.evicted = self.expired = 0
        count, size = self._row("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM clips")
        self._count, self._bytes = int(count), int(size)

    def put_many(self, clips: list[tuple[Clip, list[tuple[str, str]]]], now_s: float) -> None:
        """One transaction; evicts the oldest over the bound; replaces an episode's spooled clip."""
        with self._lock, self._db:
            for clip, messages in clips:
                size = sum(len(payload) for _, payload in messages)
                old = self._row("SELECT bytes FROM clips WHERE episode_id = ?", clip.episode_id)
                if old is not None:
                    self._count, self._bytes = self._count - 1, self._bytes - int(old[0])
                self._db.execute(
                    "INSERT OR REPLACE INTO clips (episode_id, stream_id, created_s, bytes,"
                    " messages) VALUES (?, ?, ?, ?, ?)",
                    (clip.episode_id, clip.stream_id, now_s, size, json.dumps(messages)),
                )
                self._count, self._bytes = self._count + 1, self._bytes + size
            while self._bytes > self.max_bytes:
                seq, size = self._row("SELECT seq, bytes FROM clips ORDER BY seq LIMIT 1")
                self._db.execute("DELETE FROM clips WHERE seq = ?", (seq,))
                self._count, self._bytes = self._count - 1, self._bytes - int(size)
                self.evicted += 1

    def oldest_many(self, now_s: float, n: int) -> list[tuple[int, list[tuple[str, str]]]]:
        """The ``n`` oldest clips not expired (expired ones are dropped and counted)."""
        with self._lock, self._db:
            cutoff = (now_s - self.max_age_s,)
            gone = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM clips WHERE created_s < ?", cutoff
            ).fetchone()
            if gone[0]:
                self._db.execute("DELETE FROM clips WHERE created_s < ?", cutoff)
                self._count, self._bytes = self._count - int(gone[0]), self._bytes - int(gone[1])
                self.expired += int(gone[0])
            rows = self._db.execute(
                "SELECT seq, messages FROM clips ORDER BY seq LIMIT ?", (n,)
            ).fetchall()
        return [(int(seq), [(str(t), str(p)) for t, p in json.loads(m)]) for seq, m in rows]

    def remove_many(self, seqs: list[int]) -> None:
        """Forget sent clips (one transaction; a clip evicted meanwhile is already gone)."""
        with self._lock, self._db:
            for seq in seqs:
                row = self._row("SELECT bytes FROM clips WHERE seq = ?", seq)
                if row is not None:
                    self._db.execute("DELETE FROM clips WHERE seq = ?", (seq,))
                    self._count, self._bytes = self._count - 1, self._bytes - int(row[0])

    def _row(self, sql: str, *args: Any) -> Any:
        return self._db.execute(sql, args).fetchone()

    def __len__(self) -> int:
        with self._lock:
            return self._count

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._lock_file.close()


def spool_path(config: EvidenceConfig, mqtt: MqttConfig) -> Path:
    """The configured spool, else ``<mqtt spool>-evidence.sqlite`` beside the events' spool."""
    if config.spool_path is not None:
        return Path(config.spool_path)
    events = Path(mqtt.spool_path)
    return events.with_name(f"{events.stem}-evidence.sqlite")


class EvidencePublisher:
    def __init__(self, config: EvidenceConfig, mqtt: MqttConfig) -> None:
        self.config, self.mqtt = config, mqtt
        self.spool = EvidenceSpool(
            spool_path(config, mqtt), int(config.max_spool_mb * MB), config.max_age_h * 3600.0
        )
        self._queue: queue.Queue[Clip | Cut] = queue.Queue(QUEUE_CLIPS)
        self._encoding = 0  # clips taken from the queue and not yet in the spool
        user = config.username
        login = mqtt if user is None else dataclasses.replace(mqtt, username=user)
        self._session = Session(login, f"{mqtt.effective_client_id}-evidence", "evidence",
                                max_inflight=config.max_inflight,
                                on_connected=self._on_connected)  # fmt: skip
        self._connected = self._session.connected
        self._client = self._session.client
        self._client.on_publish = self._on_publish
        self._stop = threading.Event()
        self._acked: set[int] = set()
        self._ack_lock = threading.Condition()  # notified on every PUBACK
        self._thread = Worker(self._run, "lungwatch-evidence", self._stop.is_set)
        self.counts = {"submitted": 0, "dropped": 0, "sent": 0, "failed": 0}

    def connect(self) -> EvidencePublisher:
        self._session.start(wait=False)
        self._thread.start()
        return self

    def submit(self, clip: Clip | Cut) -> None:
        """Hand a clip over (never blocks the caller; a full queue drops it, counted). A
        :class:`~edge.evidence.recorder.Cut` is encoded here, in this channel's thread."""
        try:
            self._queue.put_nowait(clip)
            self.counts["submitted"] += 1
        except queue.Full:
            self.counts["dropped"] += 1
            log.warning("evidence of %s dropped: %d clips wait already", clip.episode_id,
                        QUEUE_CLIPS)  # fmt: skip

    def failure(self) -> str | None:
        """Why the sending thread stopped unasked (None: it runs): no clip leaves the spool."""
        return self._thread.failure()

    def stats(self) -> dict[str, int]:
        """For the metrics topic (``evidence_*``)."""
        return {"spooled": len(self.spool), "spooled_bytes": self.spool.bytes,
                "evicted": self.spool.evicted, "expired": self.spool.expired,
                "queued": self._queue.qsize(), **self.counts}  # fmt: skip

    def flush(self, timeout_s: float) -> bool:
        """Wait until every clip handed over has left the spool; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._queue.empty() and self._encoding == 0 and len(self.spool) == 0:
                return True
            time.sleep(POLL_S)
        return False

    def close(self, timeout_s: float = 5.0) -> None:
        """Spool what is queued, send for at most ``timeout_s``, stop (idempotent)."""
        if self._thread.is_alive():
            self.flush(timeout_s)
            self._stop.set()
            self._thread.join()
        if self._thread.started:  # also a sender that stopped unasked: its connection goes too
            self._session.stop()
        self._stop.set()
        self._spool_queued()
        self.spool.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._spool_queued()
            connected = self._connected.is_set()
            batch = self.spool.oldest_many(time.time(), SEND_AHEAD) if connected else []
            sent = self._send(batch) if batch else []
            if not sent:  # nothing to send, or the connection dropped (or the channel stops)
                self._stop.wait(POLL_S)
                continue
            self.spool.remove_many(sent)
            self.counts["sent"] += len(sent)

    def _spool_queued(self) -> None:
        """Encode what the loop handed over (at most a queue's worth, so sending is not
        starved) and spool it, in one transaction."""
        encoded = []
        for _ in range(QUEUE_CLIPS):
            try:
                self._encoding += 1  # before the get: a flush never sees the clip nowhere
                clip = self._queue.get_nowait()
            except queue.Empty:
                self._encoding -= 1
                break
            try:
                if isinstance(clip, Cut):
                    clip = clip.encode()
                encoded.append((clip, clip_messages(clip, self.config.part_bytes)))
            except (EvidenceError, ValueError, RuntimeError) as exc:
                self.counts["failed"] += 1
                log.error("evidence of %s not sent: %s", clip.episode_id, exc)
        try:
            if encoded:
                self.spool.put_many(encoded, time.time())
        finally:
            self._encoding = 0

    def _send(self, batch: list[tuple[int, list[tuple[str, str]]]]) -> list[int]:
        """Send every part of the ``batch``'s clips; the clips whose every part the broker
        acknowledged, once all are or the connection dropped (the others go again whole)."""
        mids: list[tuple[int, list[int], bool]] = []  # (seq, its parts' mids, all handed)
        for seq, messages in batch:
            own = []
            for topic, payload in messages:
                info = self._session.publish(topic, payload, qos=1)
                if info.rc != 0:  # not connected: what was handed over may still be acked
                    break
                own.append(info.mid)
            whole = len(own) == len(messages)
            mids.append((seq, own, whole))
            if not whole:
                break
        every = [mid for _, own, _ in mids for mid in own]
        with self._ack_lock:
            while not self._stop.is_set() and self._connected.is_set():
                if self._acked.issuperset(every):
                    break
                self._ack_lock.wait(POLL_S)
            sent = [seq for seq, own, whole in mids if whole and self._acked.issuperset(own)]
            self._acked.difference_update(every)
        return sent

    def _on_connected(self, client: Any) -> None:
        with self._ack_lock:
            self._acked.clear()  # a clip cut short by the drop is sent again whole

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._ack_lock:
            self._acked.add(mid)
            self._ack_lock.notify()
