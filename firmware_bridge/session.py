"""Version-2 receive policy: the device's key, sessions that only move forward, and a sliding
anti-replay window per stream (docs/firmware-protocol.md, 4.4).

:class:`SessionGuard` checks key, tag, session and counter in that order; nothing is touched by a
frame that did not authenticate, so made-up frames can neither move a session forward nor fill a
window. :class:`SessionStore` persists each device's state, so a replay stays refused across a
bridge restart; without a store (``path`` None) it lives as long as the receiver."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from firmware_bridge.errors import SettingError
from firmware_bridge.protocol import HEADER_V2_BYTES, NONCE, TAG_BYTES, session_key
from lungwatch.private import write_private

log = logging.getLogger("firmware_bridge")

REPLAY_WINDOW = 1024  # counters tracked behind the highest one, per (device, stream)
WINDOW_MASK = (1 << REPLAY_WINDOW) - 1
STORE_FORMAT = "lungwatch-bridge-sessions/1"
# SessionGuard.open's verdicts other than the plaintext (ParserStats counters)
NO_KEY, AUTH_FAILED, STALE_SESSION, REPLAYED = "no_key", "auth_failed", "stale_session", "replayed"
_SAVE_LOCKS: dict[str, threading.Lock] = {}
_SAVE_LOCKS_GUARD = threading.Lock()


def key_id(key: bytes) -> str:
    """A key's fingerprint (16 hex digits), kept with its device's sessions: new key, new start."""
    return hashlib.sha256(b"lungwatch key id" + key).hexdigest()[:16]


class ReplayWindow:
    """Counters seen, as a bitmap of the :data:`REPLAY_WINDOW` counters up to the highest
    (``top``): bit ``d`` is set when ``top - d`` was seen. ``top`` -1: nothing seen yet."""

    __slots__ = ("bits", "top")

    def __init__(self, top: int = -1, bits: int = 0) -> None:
        self.top, self.bits = top, bits & WINDOW_MASK

    @classmethod
    def after(cls, floor: int) -> ReplayWindow:
        """A window that refuses every counter up to ``floor`` (a stored high-water mark)."""
        return cls(floor, WINDOW_MASK)

    def accept(self, counter: int) -> bool:
        """Mark ``counter`` seen; False (nothing marked) if it was seen or is too old."""
        shift = counter - self.top
        if shift > 0:
            self.bits = ((self.bits << shift) | 1) & WINDOW_MASK if shift < REPLAY_WINDOW else 1
            self.top = counter
            return True
        if -shift >= REPLAY_WINDOW or (self.bits >> -shift) & 1:
            return False
        self.bits |= 1 << -shift
        return True


class SessionStore:
    """Per device the key's fingerprint, the latest session and each stream's highest counter,
    in a JSON file written atomically, mode 0600 (docs/firmware-protocol.md, 4.4). Receivers in
    one process or several may share it: a save holds a ``flock`` on ``.<name>.lock``, reads
    the file afresh and rewrites only the devices it was given."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self.devices: dict[int, dict[str, Any]] = self._read() if self.path is not None else {}

    def _read(self) -> dict[int, dict[str, Any]]:
        assert self.path is not None
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise SettingError(f"state_file {self.path}: cannot read ({exc})") from exc
        try:
            data = json.loads(text)
            if data.get("format") != STORE_FORMAT:
                raise ValueError(f"format must be {STORE_FORMAT!r}")
            return {int(d): _entry(v) for d, v in data["devices"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SettingError(
                f"state_file {self.path}: not a session state file ({exc}); remove it to "
                "accept the next session of every device as new"
            ) from None

    def save(self, devices: Mapping[int, dict[str, Any]]) -> bool:
        """False if the file cannot be written (logged: replays of sessions the file misses are
        then accepted once after a restart)."""
        if self.path is None:
            return True
        with _SAVE_LOCKS_GUARD:
            lock = _SAVE_LOCKS.setdefault(str(self.path.resolve()), threading.Lock())
        with lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                lock_path = self.path.with_name(f".{self.path.name}.lock")
                lock_fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o600)
            except OSError as exc:
                log.error("state_file %s: cannot save the device sessions (%s)", self.path, exc)
                return False
            try:  # processes sharing the file (the bridge CLI and a runtime) take turns
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
                return self._merge_and_write(devices)
            finally:
                os.close(lock_fd)  # releases the flock

    def _merge_and_write(self, devices: Mapping[int, dict[str, Any]]) -> bool:
        """Under both locks. A file that no longer reads as a state file is left as it is (its
        other devices' entries are not dropped) and the save fails, logged."""
        assert self.path is not None
        try:
            merged = {**self._read(), **devices}
        except SettingError as exc:
            log.error("%s; not overwritten, the sessions are not saved", exc)
            return False
        body = {"format": STORE_FORMAT, "devices": {str(d): merged[d] for d in sorted(merged)}}
        try:
            write_private(self.path, json.dumps(body, indent=1) + "\n")
        except OSError as exc:
            log.error("state_file %s: cannot save the device sessions (%s)", self.path, exc)
            return False
        return True


def _entry(value: Any) -> dict[str, Any]:
    session = int(value["session"])
    counters = {int(s): int(c) for s, c in dict(value.get("counters", {})).items()}
    return {"key_id": str(value["key_id"]), "session": session, "counters": counters}


class _Stream:
    """One (device, stream)'s current session: its AEAD, its window, the counter last saved."""

    __slots__ = ("cipher", "saved", "session", "window")

    def __init__(self, session: int, cipher: ChaCha20Poly1305, window: ReplayWindow) -> None:
        self.session, self.cipher, self.window = session, cipher, window
        self.saved = window.top


class SessionGuard:
    """Opens v2 frames, never raising on bad input; ``default_key``: for devices not in ``keys``."""

    def __init__(
        self, keys: Mapping[int, bytes], default_key: bytes | None, store: SessionStore
    ) -> None:
        self._keys, self._default_key, self._store = dict(keys), default_key, store
        self._streams: dict[tuple[int, int], _Stream] = {}
        self._current: dict[int, int] = {}  # device -> latest authenticated session
        self._loaded: set[int] = set()  # devices whose stored entry was read

    def open(self, buf: bytes, start: int, nbytes: int, row: tuple[int, ...]) -> bytes | str:
        """The plaintext payload of the v2 frame at ``buf[start:]`` (``nbytes`` of payload;
        ``row``: device, stream, session, counter), or the verdict that rejects it."""
        device, stream, session, counter = row
        header_end = start + HEADER_V2_BYTES
        sealed = buf[header_end : header_end + nbytes + TAG_BYTES]
        aad = buf[start:header_end]
        state = self._streams.get((device, stream))
        if state is not None and state.session == session:  # the common case
            try:
                plain = state.cipher.decrypt(NONCE.pack(session, counter), sealed, aad)
            except InvalidTag:
                return AUTH_FAILED
            if not state.window.accept(counter):
                return REPLAYED
            if counter - state.saved >= REPLAY_WINDOW:
                self._save(device)
            return plain
        return self._open_other(device, stream, session, counter, sealed, aad)

    def _open_other(
        self, device: int, stream: int, session: int, counter: int, sealed: bytes, aad: bytes
    ) -> bytes | str:
        """A frame of a session this stream is not in (yet): authenticate, then judge."""
        key = self._keys.get(device, self._default_key)
        if key is None:
            return NO_KEY
        cipher = ChaCha20Poly1305(session_key(key, device, stream, session))
        try:
            plain = cipher.decrypt(NONCE.pack(session, counter), sealed, aad)
        except InvalidTag:
            return AUTH_FAILED
        current = self._current_session(device, key)
        if current is not None and session < current:
            return STALE_SESSION
        window = ReplayWindow()
        entry = self._stored(device, key) if session == current else None
        if entry is not None and entry["session"] == session and stream in entry["counters"]:
            window = ReplayWindow.after(entry["counters"][stream])
        if not window.accept(counter):
            return REPLAYED
        self._streams[(device, stream)] = _Stream(session, cipher, window)
        if current is None or session > current:
            self._current[device] = session
            for (d, s), other in list(self._streams.items()):
                if d == device and other.session < session:
                    del self._streams[(d, s)]
            self._save(device)
        return plain

    def _stored(self, device: int, key: bytes) -> dict[str, Any] | None:
        """The store's entry of ``device``, if it was saved under ``key``."""
        entry = self._store.devices.get(device)
        return entry if entry is not None and entry["key_id"] == key_id(key) else None

    def _current_session(self, device: int, key: bytes) -> int | None:
        if device not in self._loaded:
            self._loaded.add(device)
            entry = self._stored(device, key)
            if entry is not None:
                self._current[device] = max(self._current.get(device, -1), entry["session"])
        return self._current.get(device)

    def _save(self, device: int) -> None:
        key = self._keys.get(device, self._default_key)
        session = self._current.get(device)
        if key is None or session is None:
            return
        counters = {
            s: state.window.top
            for (d, s), state in self._streams.items()
            if d == device and state.session == session
        }
        stored = self._stored(device, key)
        if stored is not None and stored["session"] == session:
            counters = {**stored["counters"], **counters}
        entry = {"key_id": key_id(key), "session": session, "counters": counters}
        self._store.devices[device] = entry
        self._store.save({device: entry})
        for (d, _), state in self._streams.items():
            if d == device and state.session == session:
                state.saved = state.window.top

    def close(self) -> None:
        """Save every device's counters (a clean stop leaves no replayable tail)."""
        for device in sorted(self._current):
            self._save(device)

    def sessions(self) -> dict[int, int]:
        return dict(self._current)
