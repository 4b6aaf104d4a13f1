"""Commands authenticated end to end: a device acts on a command only when an authorised ward
view signed it, whatever the broker lets through.

A ward view holds the site's command master key; each device holds only its own key, derived
from the master key and its identity, so a device's key (read off a stolen device) signs
commands for that device alone::

    device key = HMAC-SHA256(master key, "lungwatch-command-v1" 0x00 site 0x00 device_id)

A signed command is the acknowledge command (``edge.runtime.config.parse_command``) with four
more keys::

    {"action": "acknowledge", "stream_id": "bed-1", "target": "Wheeze",
     "user": "nurse-a", "issued_at_ms": 1764090000000, "nonce": "<32 hex>",
     "sig": "<64 hex>"}

``sig`` is HMAC-SHA256(device key, M) in hex, where M is the compact JSON array
``["lungwatch-command-v1", site, device_id, action, stream_id, target, user, issued_at_ms,
nonce]``. The device refuses a command whose signature does not verify (compared in constant
time), whose ``issued_at_ms`` lies more than ``max_age_s`` from its own clock (both ends keep
NTP time; a captured command cannot be replayed later), whose nonce it has already taken
within that window (nor replayed sooner), or that was issued before the verifier was made
(nonces are kept in memory: after a restart, a command captured just before it is refused).
``user`` is who acknowledged, carried into the device's log and the ``ended`` event's detail.

Key files hold the 32-byte key as 64 hex characters on one line, mode 0600: a key file that
others may read is refused (:func:`read_key`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lungwatch.errors import ConfigError, LungwatchError
from lungwatch.private import others_may_read, read_private

CONTEXT = "lungwatch-command-v1"
KEY_BYTES = 32
NONCE_HEX = 32  # 16 random bytes
SIGNATURE_KEYS = ("user", "issued_at_ms", "nonce", "sig")
MAX_USER_CHARS = 64
MAX_REMEMBERED_NONCES = 10_000  # within max_age_s; more commands than this are refused
REASONS = ("unsigned", "malformed", "bad_signature", "stale", "replayed", "flood")


class CommandAuthError(LungwatchError, ValueError):
    """A command's signature, age or nonce does not hold; ``reason`` names which."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def derive_device_key(master: bytes, site: str, device_id: str) -> bytes:
    """The key of ``device_id`` at ``site`` (see the module doc)."""
    info = b"\0".join(part.encode() for part in (CONTEXT, site, device_id))
    return hmac.new(master, info, hashlib.sha256).digest()


def write_key(path: str | Path, key: bytes) -> Path:
    """Write ``key`` to a new file ``path`` with mode 0600 (an existing file is not
    overwritten: ConfigError)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path}: a key file is there already; not overwritten") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex() + "\n")
    return path


def read_key(path: str | Path) -> bytes:
    """The key in ``path``; ConfigError when it is missing, readable by group or others, or
    not 64 hex characters."""
    path = Path(path)
    try:
        text, mode = read_private(path, "latin-1")  # not hex: refused below
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the key file ({exc.strerror})") from None
    if others_may_read(mode):
        raise ConfigError(
            f"{path}: key file mode is {mode:04o}; others may read it (chmod 600 {path})"
        )
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{path}: a key file holds {2 * KEY_BYTES} hex characters")
    return key


def _message(site: str, device_id: str, body: dict[str, Any]) -> bytes:
    fields = [CONTEXT, site, device_id, body["action"], body["stream_id"], body["target"]]
    fields += [body["user"], body["issued_at_ms"], body["nonce"]]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode()


def sign_command(
    key: bytes,
    site: str,
    device_id: str,
    command: dict[str, str],
    user: str,
    now_s: float | None = None,
) -> dict[str, Any]:
    """``command`` (action, stream_id, target) signed for ``device_id`` by ``user``."""
    body: dict[str, Any] = dict(command)
    body["user"] = user
    body["issued_at_ms"] = round(1000 * (time.time() if now_s is None else now_s))
    body["nonce"] = secrets.token_hex(NONCE_HEX // 2)
    body["sig"] = hmac.new(key, _message(site, device_id, body), hashlib.sha256).hexdigest()
    return body


class CommandVerifier:
    """The device's check of each command (see the module doc); ``counts`` holds what was
    taken and why the others were refused."""

    def __init__(
        self,
        key: bytes,
        site: str,
        device_id: str,
        max_age_s: float = 120.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key, self.site, self.device_id = key, site, device_id
        self.max_age_s, self._clock = max_age_s, clock
        self._nonces: OrderedDict[str, float] = OrderedDict()  # nonce -> time it may be forgotten
        # nonces live in memory: a command issued before this verifier existed (a restart) is
        # refused, so one captured in the last max_age_s cannot be replayed after a restart
        self.started_s = clock()
        self.counts: dict[str, int] = dict.fromkeys(("accepted", *REASONS), 0)

    def verify(self, body: dict[str, Any]) -> str:
        """The acknowledging user when ``body`` is a fresh command signed with this device's
        key; else CommandAuthError (counted under its reason)."""
        try:
            user = self._verify(body)
        except CommandAuthError as exc:
            self.counts[exc.reason] = self.counts.get(exc.reason, 0) + 1
            raise
        self.counts["accepted"] += 1
        return user

    def _verify(self, body: dict[str, Any]) -> str:
        missing = [key for key in SIGNATURE_KEYS if key not in body]
        if missing:
            raise CommandAuthError("unsigned", f"command is not signed (no {', '.join(missing)})")
        user, issued, nonce, sig = (body[key] for key in SIGNATURE_KEYS)
        shapes_ok = (
            isinstance(user, str)
            and 0 < len(user) <= MAX_USER_CHARS
            and type(issued) is int
            and isinstance(nonce, str)
            and len(nonce) == NONCE_HEX
            and isinstance(sig, str)
            and len(sig) == 64
            and sig.isascii()
            and nonce.isascii()
        )
        if not shapes_ok:
            raise CommandAuthError("malformed", "command signature keys malformed")
        expected = hmac.new(self._key, _message(self.site, self.device_id, body), hashlib.sha256)
        if not hmac.compare_digest(expected.hexdigest(), sig):
            raise CommandAuthError("bad_signature", "command signature does not verify")
        now = self._clock()
        age_s = now - issued / 1000.0
        if abs(age_s) > self.max_age_s:
            raise CommandAuthError(
                "stale", f"command issued {age_s:+.0f} s from now (limit {self.max_age_s:g} s)"
            )
        if issued / 1000.0 < self.started_s:
            raise CommandAuthError(
                "stale", "command issued before this device's runtime started (a replay?)"
            )
        while self._nonces and next(iter(self._nonces.values())) < now:
            self._nonces.popitem(last=False)
        if nonce in self._nonces:
            raise CommandAuthError("replayed", "command nonce already taken (a replay)")
        if len(self._nonces) >= MAX_REMEMBERED_NONCES:
            raise CommandAuthError("flood", f"over {MAX_REMEMBERED_NONCES} commands in the window")
        self._nonces[nonce] = now + 2 * self.max_age_s
        return user
