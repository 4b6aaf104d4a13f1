"""Health check: the device's retained status on the ward broker (docs/events.md's ``status``)
says ``online``. Only an ``online`` whose ``utc`` is not older than the device's clock at the
restart passes (read on the device, so workstation clock skew does not matter): the stale
retained ``online`` of the process just stopped never does."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, PositiveFloat

from deploy.errors import HealthError
from lungwatch.config import Settings, check
from lungwatch.errors import LungwatchError
from lungwatch.events import parse_utc

CLOCK_RESOLUTION_S = 0.001  # status times are written with milliseconds
RETRY_S = 0.5  # between connection attempts


@dataclass(frozen=True)
class BrokerConfig(Settings):
    """The inventory's ``lungwatch_health_broker``: where the device's status is read."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 1883
    tls: bool = False  # TLS with the system CAs, or ca_file
    ca_file: str | None = None  # PEM CA that signed the broker's certificate
    username: str | None = None
    password_env: str | None = None  # environment variable holding the password
    timeout_s: PositiveFloat = 60.0  # how long to wait for the status ``online``

    def __post_init__(self) -> None:
        check(bool(self.host) and not any(c.isspace() for c in self.host), "host", self.host,
              "a host name or address")  # fmt: skip
        ok = self.password_env is None or self.username is not None
        check(ok, "password_env", self.password_env, "set together with username")


@dataclass
class _Watch:
    since_utc: float | None
    seen: dict[str, Any] | None = None  # the last status payload received
    online: dict[str, Any] | None = None  # the accepted online status
    error: str | None = None

    def take(self, payload: bytes) -> bool:
        try:
            body = json.loads(payload)
            when = parse_utc(body["utc"]).timestamp()
        except (ValueError, KeyError, TypeError, LungwatchError):
            return False
        self.seen = body
        fresh = self.since_utc is None or when >= self.since_utc - CLOCK_RESOLUTION_S
        if body.get("state") == "online" and fresh:
            self.online = body
            return True
        return False


def _client(broker: BrokerConfig, ca_file: Path | None) -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise HealthError(
            "the health check needs paho-mqtt: pip install 'paho-mqtt>=2.0'"
        ) from None
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"lungwatch-deploy-{uuid.uuid4().hex[:12]}"
    )
    if broker.tls or ca_file is not None:
        client.tls_set(ca_certs=str(ca_file) if ca_file is not None else None)
    if broker.username is not None:
        password = os.environ.get(broker.password_env) if broker.password_env else None
        client.username_pw_set(broker.username, password)
    return client


def _connect(client: Any, broker: BrokerConfig, deadline: float, watch: _Watch) -> bool:
    while True:
        try:
            client.connect(broker.host, broker.port, keepalive=30)
            return True
        except OSError as exc:
            watch.error = f"broker {broker.host}:{broker.port} unreachable: {exc.strerror or exc}"
        if time.monotonic() + RETRY_S >= deadline:
            return False
        time.sleep(RETRY_S)


def wait_online(
    broker: BrokerConfig,
    topic: str,
    since_utc: float | None,
    *,
    ca_file: Path | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """The accepted ``online`` status; :class:`HealthError` (one line) after the timeout."""
    timeout_s = broker.timeout_s if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    watch, done = _Watch(since_utc), threading.Event()
    client = _client(broker, ca_file)

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        if watch.take(message.payload):
            done.set()

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            watch.error = f"broker {broker.host}:{broker.port} refused the connection: {reason}"
            done.set()
        else:
            client.subscribe(topic, qos=1)

    client.on_message = on_message
    client.on_connect = on_connect
    if _connect(client, broker, deadline, watch):
        watch.error = None  # reached; on_connect may still report a refusal
        client.loop_start()
        done.wait(max(0.0, deadline - time.monotonic()))
        client.disconnect()
        client.loop_stop()
    if watch.online is not None:
        return watch.online
    raise HealthError(
        f"no status online on {topic} at {broker.host}:{broker.port} within "
        f"{timeout_s:g} s ({_why(watch)})"
    )


def _why(watch: _Watch) -> str:
    if watch.error is not None:
        return watch.error
    if watch.seen is None:
        return "no status message at all"
    seen = watch.seen
    return f"last status: {seen.get('state')} at {seen.get('utc')} ({seen.get('reason', '')})"
