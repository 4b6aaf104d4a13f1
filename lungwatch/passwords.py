"""The ward view's users' password hashes: made by ``lungwatch access --users`` and
``lungwatch dashboard --hash-password``, checked by the view at login (PBKDF2-HMAC-SHA256,
a fresh salt per hash, the iteration count in the hash)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

HASH_SCHEME = "pbkdf2_sha256"
HASH_ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256
MIN_ITERATIONS = 100_000
SALT_BYTES = 16
HASH_FORMAT = f"{HASH_SCHEME}$ITERATIONS$SALT_HEX$HASH_HEX (lungwatch dashboard --hash-password)"


def hash_password(password: str, iterations: int = HASH_ITERATIONS) -> str:
    """``pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>`` of ``password`` (fresh salt)."""
    if not password:
        raise ValueError("the password must not be empty")
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"{HASH_SCHEME}${iterations}${salt.hex()}${digest.hex()}"


def parse_hash(text: str) -> tuple[int, bytes, bytes] | None:
    """(iterations, salt, digest) of a well-formed hash, else None."""
    parts = text.split("$") if isinstance(text, str) else []
    if len(parts) != 4 or parts[0] != HASH_SCHEME or not parts[1].isdigit():
        return None
    try:
        salt, digest = bytes.fromhex(parts[2]), bytes.fromhex(parts[3])
    except ValueError:
        return None
    iterations = int(parts[1])
    if iterations < MIN_ITERATIONS or len(salt) < 8 or len(digest) != 32:
        return None
    return iterations, salt, digest


def verify_password(password: str, password_hash: str) -> bool:
    """Whether ``password`` matches ``password_hash`` (constant-time compare)."""
    parsed = parse_hash(password_hash)
    if parsed is None:
        return False
    iterations, salt, digest = parsed
    given = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return hmac.compare_digest(given, digest)


def hash_iterations(password_hash: str) -> int | None:
    parsed = parse_hash(password_hash)
    return None if parsed is None else parsed[0]
