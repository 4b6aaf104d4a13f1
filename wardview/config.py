"""The ``dashboard`` block of a runtime config (docs/dashboard.md, "The config block" and
"Hardening": every key and what it bounds). No paho, no web server: :mod:`edge.runtime.config`
validates it with the other blocks. Passwords are salted hashes (``lungwatch dashboard
--hash-password``), never plain text."""

from __future__ import annotations

import ipaddress
import re
import stat
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PositiveFloat

from lungwatch.alarms import AlarmSettings
from lungwatch.config import Settings, check
from lungwatch.hosts import is_loopback
from lungwatch.intake import MAX_JSON_DEPTH, MAX_MESSAGE_BYTES
from lungwatch.mqtt import MqttConfig
from lungwatch.passwords import HASH_FORMAT, parse_hash
from lungwatch.private import others_may_read
from wardview.stores import is_database_url

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")
Role = Literal["view", "ack"]


def is_host(name: str) -> bool:
    """A DNS host name (letters, digits, hyphens, dots) or an IP address, no port."""
    if not isinstance(name, str) or not name or len(name) > 253:
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return HOST_NAME.fullmatch(name) is not None
    return True


@dataclass(frozen=True)
class DashboardUser:
    """One person (or role account) of the ward view: ``view`` sees, ``ack`` also acknowledges."""

    name: str
    role: Role
    password_hash: str

    def __post_init__(self) -> None:
        ok = isinstance(self.name, str) and 0 < len(self.name) <= 64 and self.name.isprintable()
        check(ok and ":" not in self.name, "name", self.name, "1..64 printable characters, no ':'")
        parsed = parse_hash(self.password_hash)
        shown = self.password_hash if parsed is None and "$" in str(self.password_hash) else "***"
        check(parsed is not None, "password_hash", shown, HASH_FORMAT)

    @property
    def can_acknowledge(self) -> bool:
        return self.role == "ack"


@dataclass(frozen=True)
class DashboardConfig(Settings):
    enabled: bool = False  # lungwatch run serves it too (lungwatch dashboard always does)
    host: str = "127.0.0.1"  # address the web server binds
    port: Annotated[int, Field(ge=0, lt=65536)] = 8080  # 0: a free port, printed at start
    users: tuple[DashboardUser, ...] = ()  # none: loopback only, anyone there may acknowledge
    events_per_bed: Annotated[int, Field(ge=1, le=100)] = 8  # last events kept and shown per bed
    live_points: Annotated[int, Field(ge=1, le=3600)] = 60  # kept per bed, one per live message
    # changes reach the browsers at most this often
    push_interval_s: Annotated[float, Field(ge=0.01, le=1.0)] = 0.1
    # a bed whose rolling verdict is one of these is an alarm, at this priority
    alarm_verdicts: tuple[str, ...] = ()
    verdict_priority: str = "medium"
    alarms: AlarmSettings = field(default_factory=AlarmSettings)  # lungwatch.alarms
    audio_pause_s: Annotated[float, Field(ge=1.0, le=600.0)] = 120.0  # how long "Pause audio" lasts
    cert_file: str | None = None  # PEM certificate: serve HTTPS (users' passwords encrypted)
    key_file: str | None = None  # its private key (PEM), with cert_file
    # the site's command master key (lungwatch access) signing acknowledges; none: unsigned
    command_key_file: str | None = None
    allowed_hosts: tuple[str, ...] = ()  # Host names besides the address, localhost, IPs
    # a request must arrive whole in this; a client reading nothing this long (SSE too) is cut off
    request_timeout_s: Annotated[float, Field(ge=0.1, le=300.0)] = 10.0
    # open connections at once (each page holds one event stream)
    max_connections: Annotated[int, Field(ge=4, le=10_000)] = 64
    max_connections_per_address: Annotated[int, Field(ge=1, le=10_000)] = 8
    allowed_clients: tuple[str, ...] = ()  # networks (CIDR) that may connect; none: any
    # an event-stream heartbeat this often; the page says "no heartbeat", reconnects after 3 missed
    heartbeat_interval_s: Annotated[float, Field(ge=0.1, le=60.0)] = 5.0
    # nothing heard this long: a device is silent, the broker stale
    stale_after_s: Annotated[float, Field(ge=0.5, le=86_400.0)] = 30.0
    probe_interval_s: float = 5.0  # a round trip through the broker this often (0: none)
    # a larger MQTT message is rejected unread
    max_message_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = MAX_MESSAGE_BYTES
    max_json_depth: Annotated[int, Field(ge=4, le=200)] = MAX_JSON_DEPTH  # deeper: refused unparsed
    max_devices: Annotated[int, Field(ge=1, le=100_000)] = 256  # devices of the site
    max_beds_per_device: Annotated[int, Field(ge=1, le=100_000)] = 512  # streams of one device
    max_open_episodes_per_bed: Annotated[int, Field(ge=1, le=100_000)] = 256
    # failed logins per user name and per client address ...
    login_max_failures: Annotated[int, Field(ge=1, le=1000)] = 5
    # ... within this long, then 429 until the oldest expires
    login_window_s: Annotated[float, Field(ge=1.0, le=86_400.0)] = 300.0
    history_path: str | None = None  # an SQLite path or a postgresql:// URL; None: memory only
    history_days: PositiveFloat = 7.0  # rows older than this are deleted
    evidence_max_mb: PositiveFloat = 2000.0  # the clips' bound on disk (the oldest go first)
    persistent_session: bool = False  # the broker keeps what the view misses while down
    # one per view; null: lungwatch-dashboard-<site>-<h>, <h> from the view's broker password
    client_id: str | None = None

    def __post_init__(self) -> None:
        check(isinstance(self.host, str) and bool(self.host), "host", self.host, "an address")
        loopback = "a loopback address (127.0.0.1, ::1, localhost) while no users are configured"
        check(bool(self.users) or is_loopback(self.host), "host", self.host, loopback)
        check(self.history_path != "", "history_path", self.history_path, "a path or null")
        if self.history_path is not None and is_database_url(self.history_path):
            url = urllib.parse.urlsplit(self.history_path)
            check(url.password is None and "password=" not in url.query, "history_path",
                  "postgresql://***", "a URL without a password (libpq's pgpass file holds "
                  "it: passfile=... or ~/.pgpass, mode 0600)")  # fmt: skip
        check(self.client_id != "", "client_id", self.client_id, "an MQTT client id or null")
        names = [u.name for u in self.users]
        check(len(set(names)) == len(names), "users", names, "users with distinct names")
        labels = ("Normal", "CAS", "DAS", "CAS & DAS", "Poor Quality")
        bad = [v for v in self.alarm_verdicts if v not in labels]
        check(not bad, "alarm_verdicts", self.alarm_verdicts, f"labels among {labels}")
        check(self.verdict_priority in ("high", "medium", "low"), "verdict_priority",
              self.verdict_priority, "high, medium or low")  # fmt: skip
        for name in ("cert_file", "key_file"):
            path = getattr(self, name)
            check(path is None or Path(path).is_file(), name, path, "an existing file")
        paired = (self.cert_file is None) == (self.key_file is None)
        check(paired, "key_file", self.key_file, "set together with cert_file")
        if self.key_file is not None:  # the server's private key: the owner's alone
            mode = stat.S_IMODE(Path(self.key_file).stat().st_mode)
            check(not others_may_read(mode), "key_file", self.key_file,
                  f"a file only its owner may read (mode {mode:04o}: chmod 600)")  # fmt: skip
        path = self.command_key_file
        check(path is None or Path(path).is_file(), "command_key_file", path, "an existing file")
        bad = [h for h in self.allowed_hosts if not is_host(h)]
        check(not bad, "allowed_hosts", self.allowed_hosts, "host names or IP addresses, no port")
        for net in self.allowed_clients:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                check(False, "allowed_clients", net, "IP networks in CIDR form (10.20.0.0/24)")
        probe, half = self.probe_interval_s, self.stale_after_s / 2
        ok = probe == 0 or 0.1 <= probe <= half
        allowed = f"0 (no probe) or a number in [0.1, stale_after_s / 2 = {half:g}] (seconds)"
        check(ok, "probe_interval_s", probe, allowed)

    @property
    def uses_tls(self) -> bool:
        return self.cert_file is not None

    def user(self, name: str) -> DashboardUser | None:
        return next((u for u in self.users if u.name == name), None)


@dataclass(frozen=True)
class DashboardFile:
    """A view's own config file, or a device's runtime config (the device checks the rest)."""

    site: str = "ward-1"  # the ward whose devices are shown
    device_id: str = "edge-1"  # accepted so a device's file can be trimmed; not used here
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
