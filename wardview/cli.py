"""Serve the ward view, a web page over the broker, until stopped (docs/dashboard.md).

The config is a runtime YAML (``edge/configs/ward.yaml``): a device's is validated whole, as
``lungwatch run`` would; a file for a dashboard machine alone holds only ``site``,
``device_id``, ``mqtt`` and ``dashboard``. Flags only override.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import logging
import os
import sys
import threading
from pathlib import Path

from lungwatch.cli import ArgumentParser
from lungwatch.config import apply_overrides, from_mapping, load_layers
from lungwatch.errors import ConfigError
from lungwatch.mqtt import MqttConfig
from lungwatch.passwords import hash_password
from lungwatch.private import private_umask
from lungwatch.supervision import stop_on_signals
from wardview.config import DashboardConfig, DashboardFile

log = logging.getLogger("lungwatch.dashboard")


def load_settings(
    paths: Path | list[Path] | None, overrides: list[str]
) -> tuple[str, MqttConfig, DashboardConfig]:
    """Each later file merged over the ones before; ConfigError names the file and the key."""
    data, source = load_layers(paths) if paths else ({}, "<defaults>")
    if overrides:
        data = apply_overrides(data, overrides, source=source)
    if "streams" in data:  # a device's runtime config: the view reads its own sections
        if "site" not in data:  # the default ward would show another ward's beds
            raise ConfigError(f"{source}: site must be given (the ward whose devices are shown)")
        data = {f.name: data[f.name] for f in dataclasses.fields(DashboardFile) if f.name in data}
    settings = from_mapping(DashboardFile, data, source=source)
    return settings.site, settings.mqtt, settings.dashboard


def read_new_password() -> str:
    """Twice from the terminal, or one line from stdin when it is not a terminal."""
    if not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise ConfigError("the two passwords differ")
    if not password:
        raise ConfigError("the password must not be empty")
    return password


def _overrides(args: object) -> list[str]:
    """The flags as ``key=value`` overrides (so a bad value is named like a config key)."""
    flags = {"dashboard.host": "host", "dashboard.port": "port", "site": "site"}
    values = {key: getattr(args, flag, None) for key, flag in flags.items()}
    overrides = [f"{key}={json.dumps(value)}" for key, value in values.items() if value is not None]
    broker = getattr(args, "broker", None)
    if broker is not None:
        host, sep, port = broker.rpartition(":")
        if not (sep and host and port.isdigit()):
            raise ConfigError(f"--broker must be HOST:PORT, got {broker!r}")
        overrides += [f"mqtt.host={json.dumps(host)}", f"mqtt.port={port}"]
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch dashboard", description=__doc__)
    parser.add_argument(
        "--config",
        type=Path,
        action="append",
        help="runtime YAML (site, mqtt, dashboard); given again, each later file is merged "
        "over the ones before (e.g. the view's client file from lungwatch access)",
    )
    parser.add_argument("--broker", metavar="HOST:PORT", help="override mqtt.host and mqtt.port")
    parser.add_argument("--host", help="address to serve the page on (dashboard.host)")
    parser.add_argument("--port", type=int, help="port to serve on (dashboard.port; 0: free)")
    parser.add_argument("--site", help="the ward to show (site)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    parser.add_argument(
        "--hash-password", action="store_true", help="print a password_hash for the config"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    args = parser.parse_args(argv)
    if args.hash_password:
        print(hash_password(read_new_password()))
        return 0
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    site, mqtt, dashboard = load_settings(args.config, [*args.set, *_overrides(args)])
    from wardview.server import DashboardServer

    stop = threading.Event()
    stop_on_signals(stop)  # not set in the handler: it can interrupt stop.wait() (a hang)
    before = private_umask()  # the history (patient audio) and its WAL: 0600 whatever umask
    try:
        with DashboardServer(dashboard, mqtt, site) as server:
            print(server.describe(), flush=True)
            server.serve_until(stop)  # a thread the view needs stopped: error, exit 1
    finally:
        os.umask(before)
    print("lungwatch dashboard: stopped", flush=True)
    return 0
