"""Device keys: provisioning, key files and folders, and the rule that a network link needs one
(docs/firmware-protocol.md, 4.5-4.6). Keys are version 2's device keys and, where version 1 is
still allowed, its HMAC keys."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from firmware_bridge.errors import SettingError
from firmware_bridge.protocol import MIN_DEVICE_KEY_BYTES, U32_MAX
from firmware_bridge.urls import LinkUrl
from lungwatch.hosts import is_loopback
from lungwatch.private import others_may_read, read_private

KEY_BYTES = 32  # what provisioning makes
KEY_SUFFIX = ".key"
STATE_SUFFIX = ".sessions.json"  # the default session state file next to a key file
STATE_IN_DIR = "sessions.json"  # ... and in a key folder


@dataclass(frozen=True)
class KeyRing:
    """Per-device keys and the key of every other device (None: none)."""

    keys: dict[int, bytes] = field(default_factory=dict)
    default: bytes | None = None

    def __bool__(self) -> bool:
        return bool(self.keys) or self.default is not None

    def merged(self, other: KeyRing, where: str) -> KeyRing:
        """Both rings' keys; SettingError if a device gets two different keys."""
        for device, key in other.keys.items():
            if self.keys.get(device, key) != key:
                raise SettingError(f"{where}: device {device} has two different keys")
        if self.default is not None and other.default not in (None, self.default):
            raise SettingError(f"{where}: two different keys for every device")
        return KeyRing({**self.keys, **other.keys}, self.default or other.default)


def parse_keys_text(text: str, where: str, device: int | None = None) -> KeyRing:
    """The keys of a key file's ``text``; ``where`` names it in errors. A bare key is
    ``device``'s when given, else every device's."""
    keys: dict[int, bytes] = {}
    default: bytes | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        device_text, sep, hex_key = line.rpartition(":")
        try:
            key = bytes.fromhex(hex_key)
            owner = int(device_text, 0) if sep else device
        except ValueError:
            raise SettingError(
                f"{where} line {number}: expected DEVICE:HEX or HEX (a key in hex)"
            ) from None
        if owner is not None and not 0 <= owner <= U32_MAX:
            raise SettingError(f"{where}: device id must be in [0, {U32_MAX}], got {owner}")
        if len(key) < MIN_DEVICE_KEY_BYTES:
            whose = "the key" if owner is None else f"device {owner}'s key"
            raise SettingError(
                f"{where}: {whose} is {len(key)} bytes; at least {MIN_DEVICE_KEY_BYTES} "
                f"(lungwatch bridge provision makes {KEY_BYTES})"
            )
        if owner is None:
            if default is not None:
                raise SettingError(f"{where} line {number}: a second bare key (name its device)")
            default = key
        elif keys.setdefault(owner, key) != key:
            raise SettingError(f"{where} line {number}: device {owner} has two different keys")
    if not keys and default is None:
        raise SettingError(f"{where}: holds no key (lungwatch bridge provision writes one)")
    return KeyRing(keys, default)


def load_key_file(path: str | Path, device: int | None = None) -> KeyRing:
    """A key file's keys; SettingError when missing, unreadable, or readable by group or others."""
    try:
        text, mode = read_private(path, "utf-8")
    except FileNotFoundError:
        raise SettingError(
            f"key_file {path}: no such file ({Path(path).absolute()}); `lungwatch bridge "
            f"provision --device-id N --out {path}` makes one"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise SettingError(f"key_file {path}: cannot read a key ({reason})") from None
    if others_may_read(mode):
        raise SettingError(
            f"key_file {path}: mode is {mode:04o}; others may read it (chmod 600 {path})"
        )
    return parse_keys_text(text, f"key_file {path}", device)


def load_key_dir(path: str | Path) -> KeyRing:
    """Every ``*.key`` file of a folder; each must name its devices (``DEVICE:HEX``)."""
    folder = Path(path)
    if not folder.is_dir():
        raise SettingError(f"key_dir {folder}: not a folder")
    ring = KeyRing()
    for file in sorted(folder.glob(f"*{KEY_SUFFIX}")):
        found = load_key_file(file)
        if found.default is not None:
            raise SettingError(f"key_dir {folder}: {file.name} holds a bare key: write DEVICE:HEX")
        ring = ring.merged(found, f"key_dir {folder}")
    if not ring:
        raise SettingError(f"key_dir {folder}: no *{KEY_SUFFIX} file with a key")
    return ring


def load_keys(
    key_file: str | Path | None = None, key_dir: str | Path | None = None, device: int | None = None
) -> KeyRing:
    """The keys of a key file and / or a key folder (none given: no key)."""
    ring = KeyRing()
    if key_file is not None:
        ring = load_key_file(key_file, device)
    if key_dir is not None:
        ring = ring.merged(load_key_dir(key_dir), f"key_dir {key_dir}")
    return ring


def default_state_path(key_file: str | Path | None, key_dir: str | Path | None) -> Path | None:
    """Where the v2 session state lives by default: ``keys/bed-1.key`` ->
    ``keys/bed-1.sessions.json``, a key folder -> ``DIR/sessions.json``, no key -> None."""
    if key_file is not None:
        return Path(key_file).with_suffix(STATE_SUFFIX)
    if key_dir is not None:
        return Path(key_dir) / STATE_IN_DIR
    return None


def require_key(url: LinkUrl, ring: KeyRing, what_to_add: str) -> None:
    """SettingError naming the host and ``what_to_add`` when a UDP or TCP link beyond
    loopback has no key (a serial link is a wire to this machine)."""
    if url.scheme in ("udp", "tcp") and not ring and not is_loopback(url.host):
        raise SettingError(
            f"receives from beyond loopback ({url.host}) without a device key: "
            f"add {what_to_add} (lungwatch bridge provision --device-id N --out FILE makes "
            "one), or bind 127.0.0.1"
        )


def provision(device_id: int, out: str | Path, force: bool = False) -> bytes:
    """A new random 32-byte key for ``device_id``, written to ``out`` (mode 0600, its folder
    made mode 0700 when missing) as ``DEVICE:HEX``; SettingError if ``out`` exists (unless
    ``force``) or cannot be written."""
    if not 0 <= device_id <= U32_MAX:
        raise SettingError(f"--device-id must be in [0, {U32_MAX}], got {device_id}")
    path = Path(out)
    key = secrets.token_bytes(KEY_BYTES)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    c_bytes = ", ".join(f"0x{b:02x}" for b in key)
    text = (
        f"# lungwatch device key, protocol v2: device {device_id}, made {stamp} by\n"
        "# `lungwatch bridge provision`. Secret: keep it mode 0600; the bridge reads it with\n"
        "# key_file= (or key_dir=), the device holds the same 32 bytes (the hex after the\n"
        "# colon below), for its firmware in C:\n"
        f"# static const uint8_t LWF_DEVICE_KEY[32] = {{{c_bytes}}};\n"
        f"{device_id}:{key.hex()}\n"
    )
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise SettingError(f"--out {path}: exists (a device's key; --force replaces it)") from None
    except OSError as exc:
        raise SettingError(f"--out {path}: cannot write ({exc.strerror or exc})") from None
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        os.fchmod(file.fileno(), 0o600)  # also when --force replaced a laxer file
        file.write(text)
    return key
