"""Broker access for a site: one identity per client, a Mosquitto ACL that gives each only its
own topics, and the keys that sign commands (``lungwatch access``).

    lungwatch access --site ward-3 --devices jetson-1 jetson-2 --views ward-view --dir DIR

writes, under ``DIR`` (mode 0700; every secret 0600):

- ``mosquitto/lungwatch.conf``: ``allow_anonymous false``, ``use_username_as_clientid``
  (each connection's client id is its user name, so a client with one login cannot take
  another client's connection over by naming its id), ``max_packet_size`` 64 KiB, the
  password file and the ACL file (include it in the broker's config, or copy its lines there);
- ``mosquitto/passwd``: one line per client, Mosquitto's PBKDF2-SHA512 format (``$7$``, 101
  iterations, the format ``mosquitto_passwd`` writes), so the broker host needs no tool;
- ``mosquitto/acl``: a device may publish only its own status, metrics and per-bed event,
  live, verdict, respiration, summary and evidence topics, and read only its own command
  topic; its clips' connection (user ``<device>/evidence``, the device's password) only its
  evidence topics; a ward view may read the site's topics and publish commands (only ward
  views may); a hospital gateway (``--gateways``) may read the site's events and breathing,
  nothing else;
- ``clients/<name>.yaml``: the ``mqtt`` username and password of each client (and, for a
  device, its ``commands.key_file`` and ``evidence.username``), to merge into its config;
- ``keys/command-master.key`` (ward views sign commands with it) and
  ``keys/<device>.command.key`` (each device's own key, derived from the master key:
  ``lungwatch.commandauth``);
- with ``--users NAME:ROLE ...``: the ward view's users (``dashboard.users`` in each view's
  client file, password hashed) and each one's first password in ``users/<name>.password``;
- with ``--listener HOST:PORT``: a broker that runs from ``lungwatch.conf`` alone (its
  ``listener``, and ``user`` = whoever ran this, who can read the files) and every client
  file's ``mqtt.host`` / ``mqtt.port``: a ward on one machine.

Every folder must be the caller's own, not a link, and closed to group and others; every file
is written to a new temporary name (never through a link) and renamed into place.

Run again with more clients: existing passwords and keys are kept (read back from ``DIR``),
new ones are made, and the ACL and password file are rewritten for exactly the clients named.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import pwd
import re
import secrets
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from lungwatch.cli import ArgumentParser
from lungwatch.commandauth import derive_device_key, new_key, read_key, write_key
from lungwatch.errors import ConfigError, LungwatchError
from lungwatch.events import TOPIC_ROOT, is_segment
from lungwatch.passwords import hash_password
from lungwatch.private import write_private

MASTER_KEY = "command-master.key"
USER_ROLES = ("view", "ack")  # the ward view's roles (wardview.config)
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")  # also its password file's name
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd (Mosquitto 2.0) writes
SALT_BYTES = 12
DEVICE_WRITES = (
    "status", "metrics", "+/event", "+/live", "+/verdict", "+/respiration", "+/summary",
    "+/evidence", "+/ack",
)  # fmt: skip
EVIDENCE_LOGIN = "{device}/evidence"  # a device's second connection (no device name has '/')
# the broker drops a larger packet and disconnects its sender, so no client can push an
# oversized message at the ward views or the devices (the view's own limit is 64 KiB)
MAX_QUEUED_MESSAGES = 100_000  # per offline persistent session (a ward view restarting)
MAX_QUEUED_BYTES = 200_000_000  # ... and its bytes (evidence parts are ~45 kB each)
MAX_PACKET_BYTES = 65_536
# what a hospital gateway reads (gateway.service): findings, breathing, and what it needs to
# follow the alarm conditions (the beds' open alarms, the acknowledges devices took)
GATEWAY_READS = ("event", "respiration", "summary", "ack")


@dataclass(frozen=True)
class Client:
    name: str  # the MQTT username (a device's name is its device_id)
    role: str  # "device", "view" or "gateway"
    password: str


def password_line(username: str, password: str, salt: bytes | None = None) -> str:
    """One line of a Mosquitto 2 password file for ``username``."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS, 64)
    encoded = [base64.b64encode(part).decode() for part in (salt, digest)]
    return f"{username}:$7${PBKDF2_ITERATIONS}${encoded[0]}${encoded[1]}"


def acl_text(site: str, clients: list[Client]) -> str:
    """The Mosquitto ACL for ``clients`` at ``site`` (see the module doc)."""
    root = f"{TOPIC_ROOT}/{site}"
    lines = [
        "# Generated by `lungwatch access`; rewrite it with that command, not by hand.",
        "# Clients not named below (and anonymous ones) may do nothing.",
    ]
    for client in clients:
        lines += ["", f"user {client.name}"]
        if client.role == "device":
            own = f"{root}/{client.name}"
            lines += [f"topic write {own}/{suffix}" for suffix in DEVICE_WRITES]
            lines.append(f"topic read {own}/command")
            lines += ["", f"user {EVIDENCE_LOGIN.format(device=client.name)}",
                      f"topic write {own}/+/evidence"]  # fmt: skip
        elif client.role == "gateway":
            lines += [f"topic read {root}/+/+/{kind}" for kind in GATEWAY_READS]
            lines.append(f"topic read {root}/+/status")  # each device's equipment id
            lines.append(f"topic write {root}/gateway/{client.name}/health")  # its own health
        else:
            lines += [f"topic read {root}/#", f"topic write {root}/+/command"]
    return "\n".join(lines) + "\n"


def generate(
    site: str,
    devices: list[str],
    views: list[str],
    directory: Path,
    users: list[str] | None = None,
    listener: str | None = None,
    gateways: list[str] | None = None,
) -> list[Client]:
    """Write the site's access files under ``directory`` (see the module doc); the clients.
    ``users``: ``NAME:ROLE`` of the ward view's users; ``listener``: ``HOST:PORT``;
    ``gateways``: the hospital gateways' client names."""
    gateways = list(gateways or [])
    names = devices + views + gateways
    logins = [_user_spec(item) for item in users or []]
    if len({name for name, _ in logins}) != len(logins):
        raise ConfigError(f"user names must be distinct, got {', '.join(users or [])}")
    where = _listener_spec(listener) if listener is not None else None
    for name in names:
        if not (is_segment(name) and name.isprintable() and not any(c in name for c in " :")):
            raise ConfigError(f"client name {name!r} must be a topic segment without spaces or ':'")
    if not is_segment(site):
        raise ConfigError(f"site {site!r} must be a topic segment")
    if len(set(names)) != len(names):
        raise ConfigError(f"client names must be distinct, got {', '.join(names)}")
    if not views:
        raise ConfigError("name at least one ward view (--views): only views may send commands")
    for sub in ("", "mosquitto", "clients", "keys", *(("users",) if logins else ())):
        _private_folder(directory / sub)
    master_path = directory / "keys" / MASTER_KEY
    master = read_key(master_path) if master_path.exists() else None
    if master is None:
        master = new_key()
        write_key(master_path, master)

    def role(name: str) -> str:
        return "device" if name in devices else "gateway" if name in gateways else "view"

    clients = [Client(name, role(name), _password(directory, name)) for name in names]
    view_users = [
        {"name": n, "role": r, "password_hash": hash_password(_user_password(directory, n))}
        for n, r in logins
    ]
    for client in clients:
        login: dict[str, object] = {"username": client.name, "password": client.password}
        if where is not None:
            login.update(host=where[0], port=where[1])
        settings: dict[str, object] = {"mqtt": login}
        if client.role == "device":
            key_path = directory / "keys" / f"{client.name}.command.key"
            key = derive_device_key(master, site, client.name)
            if not key_path.exists():
                write_key(key_path, key)
            elif read_key(key_path) != key:
                raise ConfigError(f"{key_path}: not derived from {master_path} (remove it)")
            settings["commands"] = {"key_file": str(key_path.resolve())}
            settings["evidence"] = {"username": EVIDENCE_LOGIN.format(device=client.name)}
        elif client.role == "gateway":
            pass  # its broker login alone: it reads, it signs nothing
        else:
            view: dict[str, object] = {"command_key_file": str(master_path.resolve())}
            if view_users:
                view["users"] = view_users
            settings["dashboard"] = view
        write_private(directory / "clients" / f"{client.name}.yaml", yaml.safe_dump(settings))
    broker_logins = [(c.name, c.password) for c in clients] + [
        (EVIDENCE_LOGIN.format(device=c.name), c.password) for c in clients if c.role == "device"
    ]
    passwd = "".join(password_line(name, secret) + "\n" for name, secret in broker_logins)
    write_private(directory / "mosquitto" / "passwd", passwd)
    write_private(directory / "mosquitto" / "acl", acl_text(site, clients))
    own = ""
    if where is not None:  # a broker run from this file alone, as the files' owner
        own = f"listener {where[1]} {where[0]}\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n"
    conf = own + (
        "allow_anonymous false\n"
        # a connection's client id is its user name: no login can take another's over
        "use_username_as_clientid true\n"
        f"max_packet_size {MAX_PACKET_BYTES}\n"
        # a ward view's persistent session: what it misses while it restarts waits here
        f"max_queued_messages {MAX_QUEUED_MESSAGES}\n"
        f"max_queued_bytes {MAX_QUEUED_BYTES}\n"
        f"password_file {(directory / 'mosquitto' / 'passwd').resolve()}\n"
        f"acl_file {(directory / 'mosquitto' / 'acl').resolve()}\n"
    )
    write_private(directory / "mosquitto" / "lungwatch.conf", conf)
    return clients


def _password(directory: Path, name: str) -> str:
    """The client's password from an earlier run, else a new one."""
    path = directory / "clients" / f"{name}.yaml"
    if path.exists():
        try:
            kept = yaml.safe_load(path.read_text(encoding="utf-8"))["mqtt"]["password"]
        except (yaml.YAMLError, KeyError, TypeError):
            raise ConfigError(f"{path}: not a client file of lungwatch access") from None
        if isinstance(kept, str) and kept:
            return kept
    return secrets.token_urlsafe(24)


def _user_spec(item: str) -> tuple[str, str]:
    """``NAME:ROLE``: the name also names its password file, so it is a plain name (letters,
    digits, ``. _ @ -``, starting with a letter or digit, at most 64): no path, no ``..``."""
    name, sep, role = item.rpartition(":")
    if not (sep and USER_NAME.fullmatch(name)) or role not in USER_ROLES:
        raise ConfigError(
            f"--users takes NAME:ROLE with NAME of letters, digits and . _ @ - (starting with "
            f"a letter or digit, at most 64) and ROLE one of {USER_ROLES}, got {item!r}"
        )
    return name, role


def _listener_spec(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536) or " " in host:
        raise ConfigError(f"--listener must be HOST:PORT (e.g. 127.0.0.1:1883), got {text!r}")
    return host, int(port)


def _private_folder(path: Path) -> None:
    """Make ``path`` (mode 0700) or accept it only when it is a real folder of this user's
    that group and others cannot write or read; ConfigError naming what is wrong."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        raise ConfigError(f"{path}: not a folder lungwatch access can use ({exc})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{path}: not a folder (a link or a file); remove it")
    if info.st_uid != os.geteuid():
        raise ConfigError(f"{path}: owned by uid {info.st_uid}, not by this user; remove it")
    if info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        raise ConfigError(f"{path}: mode {mode:04o}; group or others may use it (chmod 700)")


def _user_password(directory: Path, name: str) -> str:
    """The view user's password from an earlier run, else a new one (written 0600)."""
    path = directory / "users" / f"{name}.password"
    with contextlib.suppress(FileNotFoundError):
        kept = path.read_text(encoding="utf-8").strip()
        if kept:
            return kept
    password = secrets.token_urlsafe(12)
    write_private(path, password + "\n")
    return password


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="lungwatch access",
        description="Broker credentials, ACL and command keys for one site (see docs/security.md).",
    )
    parser.add_argument("--site", required=True, help="the site's topic segment (e.g. ward-3)")
    parser.add_argument("--devices", nargs="+", required=True, help="device ids (MQTT users)")
    parser.add_argument("--views", nargs="+", required=True, help="ward view client names")
    parser.add_argument(
        "--gateways", nargs="+", default=[],
        help="hospital gateway client names (they read the site's events and breathing)",
    )  # fmt: skip
    parser.add_argument("--dir", required=True, type=Path, help="where the files go (kept secret)")
    parser.add_argument(
        "--users",
        nargs="+",
        default=[],
        metavar="NAME:ROLE",
        help="the ward view's users (ROLE view or ack); first passwords in DIR/users/",
    )
    parser.add_argument(
        "--listener",
        metavar="HOST:PORT",
        help="a broker run from the generated config alone listens here (a ward on one "
        "machine); the client files get this broker address",
    )
    args = parser.parse_args(argv)
    try:
        clients = generate(args.site, args.devices, args.views, args.dir, args.users,
                           args.listener, args.gateways)  # fmt: skip
    except LungwatchError as exc:
        print(f"lungwatch access: error: {exc}", file=sys.stderr)
        return 2
    for client in clients:
        where = args.dir / "clients" / f"{client.name}.yaml"
        print(f"{client.role:<7} {client.name:<24} {where}")
    for item in args.users:
        name = item.rpartition(":")[0]
        print(f"user    {name:<24} {args.dir / 'users' / f'{name}.password'}")
    conf = args.dir / "mosquitto" / "lungwatch.conf"
    if args.listener:
        print(f"broker: mosquitto -c {conf}")
    else:
        print(f"broker: include {conf} in mosquitto.conf")
    return 0
