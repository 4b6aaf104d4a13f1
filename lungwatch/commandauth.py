"""Commands authenticated end to end: a device acts on a command only when an authorised ward
view signed it, whatever the broker lets through (docs/security.md, "Commands signed end to
end": the signed message, the key derivation, what a device refuses). Key files hold the
32-byte key as 64 hex characters on one line, mode 0600."""

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
    info = b"\0".join(part.encode() for part in (CONTEXT, site, device_id))
    return hmac.new(master, info, hashlib.sha256).digest()


def write_key(path: str | Path, key: bytes) -> Path:
    """Write ``key`` to a new file ``path``, mode 0600 (never over an existing one)."""
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
    """The key in ``path``; ConfigError when it is missing, readable by others or malformed."""
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
    """A device's check of each command; ``counts``: how many taken, and refused per reason."""

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
        """``body``'s user if fresh and signed with this device's key, else CommandAuthError."""
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
        user_ok = isinstance(user, str) and 0 < len(user) <= MAX_USER_CHARS
        nonce_ok = isinstance(nonce, str) and len(nonce) == NONCE_HEX and nonce.isascii()
        sig_ok = isinstance(sig, str) and len(sig) == 64 and sig.isascii()
        if not (user_ok and type(issued) is int and nonce_ok and sig_ok):
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
