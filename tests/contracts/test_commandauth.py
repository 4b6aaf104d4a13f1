"""Signed commands (lungwatch.commandauth): a device takes a command only when signed with its own
key, fresh and not seen before; key files are private."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lungwatch.commandauth import (
    CommandAuthError,
    CommandVerifier,
    derive_device_key,
    new_key,
    read_key,
    sign_command,
    write_key,
)
from lungwatch.errors import ConfigError

SITE, DEVICE = "ward-3", "jetson-1"
ACK = {"action": "acknowledge", "stream_id": "bed-1", "target": "Wheeze"}
NOW = 1_764_090_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier(key: bytes, clock: Clock | None = None) -> CommandVerifier:
    """A verifier started 100 s before NOW, the clock then at NOW."""
    clock = clock or Clock()
    now, clock.now = clock.now, clock.now - 100.0
    made = CommandVerifier(key, SITE, DEVICE, max_age_s=60.0, clock=clock)
    clock.now = now
    return made


def test_a_command_signed_for_the_device_is_taken_once() -> None:
    master = new_key()
    key = derive_device_key(master, SITE, DEVICE)
    check = verifier(key)
    body = json.loads(json.dumps(sign_command(key, SITE, DEVICE, ACK, "nurse-a", NOW)))
    assert check.verify(body) == "nurse-a"
    with pytest.raises(CommandAuthError, match="a replay") as caught:
        check.verify(body)
    assert caught.value.reason == "replayed"
    assert check.counts["accepted"] == 1
    assert check.counts["replayed"] == 1
    assert sum(check.counts.values()) == 2


def test_each_device_has_its_own_key() -> None:
    master = new_key()
    keys = {d: derive_device_key(master, SITE, d) for d in ("jetson-1", "jetson-2")}
    assert keys["jetson-1"] != keys["jetson-2"]
    assert derive_device_key(master, "ward-4", "jetson-1") != keys["jetson-1"]
    assert derive_device_key(master, SITE, "jetson-1") == keys["jetson-1"]  # reproducible
    forged = sign_command(keys["jetson-2"], SITE, DEVICE, ACK, "nurse-a", NOW)
    with pytest.raises(CommandAuthError, match="does not verify"):
        verifier(keys["jetson-1"]).verify(forged)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"target": "Fine Crackle"}, "bad_signature"),
        ({"stream_id": "bed-2"}, "bad_signature"),
        ({"user": "somebody-else"}, "bad_signature"),
        ({"issued_at_ms": 1}, "bad_signature"),
        ({"sig": "0" * 64}, "bad_signature"),
        ({"sig": "short"}, "malformed"),
        ({"issued_at_ms": "now"}, "malformed"),
        ({"user": ""}, "malformed"),
    ],
)
def test_a_changed_signed_command_is_refused(change: dict[str, object], reason: str) -> None:
    key = new_key()
    body = {**sign_command(key, SITE, DEVICE, ACK, "nurse-a", NOW), **change}
    check = verifier(key)
    with pytest.raises(CommandAuthError) as caught:
        check.verify(body)
    assert caught.value.reason == reason
    assert check.counts["accepted"] == 0


def test_stale_and_future_commands_are_refused() -> None:
    key, clock = new_key(), Clock()
    check = verifier(key, clock)
    old = sign_command(key, SITE, DEVICE, ACK, "nurse-a", NOW - 61)
    future = sign_command(key, SITE, DEVICE, ACK, "nurse-a", NOW + 61)
    for body in (old, future):
        with pytest.raises(CommandAuthError, match="from now") as caught:
            check.verify(body)
        assert caught.value.reason == "stale"
    assert check.verify(sign_command(key, SITE, DEVICE, ACK, "nurse-a", NOW - 59)) == "nurse-a"


def test_a_nonce_is_remembered_for_as_long_as_its_command_could_be_taken() -> None:
    key, clock = new_key(), Clock()
    check = verifier(key, clock)
    body = sign_command(key, SITE, DEVICE, ACK, "nurse-a", NOW)
    check.verify(body)
    clock.now = NOW + 59  # still fresh: the replay is caught by its nonce
    with pytest.raises(CommandAuthError, match="a replay"):
        check.verify(body)
    clock.now = NOW + 61  # stale now, whatever the nonce memory holds
    with pytest.raises(CommandAuthError, match="from now"):
        check.verify(body)


def test_an_unsigned_command_is_refused_by_the_verifier() -> None:
    with pytest.raises(CommandAuthError, match="not signed") as caught:
        verifier(new_key()).verify(dict(ACK))
    assert caught.value.reason == "unsigned"


def test_key_files_are_private_and_never_overwritten(tmp_path: Path) -> None:
    key = new_key()
    path = write_key(tmp_path / "keys" / "a.key", key)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_key(path) == key
    with pytest.raises(ConfigError, match="not overwritten"):
        write_key(path, new_key())
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_key(path)
    path.chmod(0o600)
    path.write_text("abcd\n")
    with pytest.raises(ConfigError, match="64 hex characters"):
        read_key(path)
    with pytest.raises(ConfigError, match="cannot read"):
        read_key(tmp_path / "missing.key")


def test_a_command_issued_before_the_device_started_is_refused() -> None:
    """Nonces live in memory: a restarted device refuses what was signed before it started,
    so a command captured just before a restart cannot be replayed after it."""
    key, clock = new_key(), Clock()
    before = sign_command(key, SITE, DEVICE, ACK, "nurse-a", NOW - 1)
    restarted = CommandVerifier(key, SITE, DEVICE, max_age_s=60.0, clock=clock)
    with pytest.raises(CommandAuthError, match="before this device's runtime started"):
        restarted.verify(before)
    assert restarted.verify(sign_command(key, SITE, DEVICE, ACK, "nurse-a", NOW)) == "nurse-a"


def test_a_signature_that_is_not_ascii_is_refused_as_malformed() -> None:
    key = new_key()
    body = {**sign_command(key, SITE, DEVICE, ACK, "nurse-a", NOW), "sig": "é" * 64}
    with pytest.raises(CommandAuthError) as caught:
        verifier(key).verify(body)
    assert caught.value.reason == "malformed"
