"""Test helpers: real Mosquitto brokers on loopback, TLS files, a recording subscriber, and a
publisher process that can be killed.

- :class:`Mosquitto`: ``/usr/sbin/mosquitto -c <tmp conf>`` on a free 127.0.0.1 port, no
  persistence, ``max_queued_messages 100000``; :meth:`Mosquitto.kill` sends SIGKILL,
  :meth:`Mosquitto.pause` SIGSTOP, and :meth:`Mosquitto.restart` starts it again on the same
  port. Optional TLS listener (a
  self-signed CA and a server certificate made with the ``openssl`` CLI) and a password file
  (``mosquitto_passwd -b -c``), or the lines of a config ``lungwatch access`` wrote.
  :func:`require_mosquitto` skips a test, with the reason, when the binary is missing.
- :class:`Recorder`: a paho subscriber (QoS 1) that keeps every message it receives.
- ``python -m tests.brokers publish CONFIG.json EVENTS.jsonl [--interval-s S] [--hold]``:
  an MqttSink in its own process, so tests can SIGKILL it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from lungwatch.events import Event

HOST = "127.0.0.1"
MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
READY_TIMEOUT_S = 10.0
FIRST_TEST_PORT = 20000  # brokers' ports are picked from here to the ephemeral range
REPO_ROOT = Path(__file__).resolve().parents[1]
SHA256 = "ab" * 32


def mosquitto_binary() -> str | None:
    """Path of the mosquitto broker binary, or None."""
    found = shutil.which("mosquitto")
    return found or next((p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)


def require_mosquitto() -> str:
    """The binary, or skip the calling test with the reason."""
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")
    return binary


def free_port() -> int:
    """A free 127.0.0.1 TCP port below the kernel's ephemeral range, where no client's
    connect() picks its source port. A broker's port is often chosen before it listens (a
    runtime started against a broker that is down); in the ephemeral range a client retrying
    it could, rarely, connect to itself there (TCP simultaneous open) and leave the port in
    use when the broker starts ("Address already in use")."""
    low = _ephemeral_low()
    if low > FIRST_TEST_PORT:
        for port in random.Random().sample(range(FIRST_TEST_PORT, low), 200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                try:
                    probe.bind((HOST, port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768 where it cannot be read)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


@contextmanager
def closed_port() -> Iterator[int]:
    """A 127.0.0.1 port where a connection is refused for as long as the block runs.

    The port stays bound (never listening) by this process, so nothing else can take it and a
    client's connect() cannot pick it as its own source port: a bare :func:`free_port` for an
    "unreachable" broker can, rarely, let TCP connect the client to itself (simultaneous open),
    and the test then sees a peer that speaks MQTT back instead of a refusal.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((HOST, 0))
        yield int(holder.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path  # self-signed CA (what clients trust)
    server_cert: Path  # signed by the CA, SAN IP:127.0.0.1 and DNS:localhost
    server_key: Path


def make_tls_files(directory: Path, name: str = "test") -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / f"{name}-ca.key", directory / f"{name}-ca.crt"
    key, csr, cert = (directory / f"{name}-server.{ext}" for ext in ("key", "csr", "crt"))
    ext = directory / f"{name}-san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n", encoding="utf-8")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             f"/CN={name} test CA", "-keyout", ca_key, "-out", ca_cert)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", key, "-out", csr)  # fmt: skip
    _openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
             "-days", "2", "-extfile", ext, "-out", cert)  # fmt: skip
    return TlsFiles(ca_cert, cert, key)


def make_password_file(directory: Path, username: str, password: str) -> Path:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed")
    path = directory / "passwd"
    subprocess.run([tool, "-b", "-c", str(path), username, password], check=True, timeout=30)
    return path


def _openssl(*args: object) -> None:
    cmd = ["openssl", *map(str, args)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


class Mosquitto:
    """One Mosquitto process from a temporary config; kill -9 and restart on the same port."""

    def __init__(
        self,
        directory: Path,
        tls: TlsFiles | None = None,
        password_file: Path | None = None,
        include: Path | None = None,
    ) -> None:
        self.binary = require_mosquitto()
        self.directory = directory
        self.port = free_port()
        self.conf = directory / f"mosquitto-{self.port}.conf"
        self.log = directory / f"mosquitto-{self.port}.log"
        text = _mosquitto_conf(self.port, tls, password_file, include)
        self.conf.write_text(text, encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        _wait_port(self.port, self.process, self.log)
        return self

    def kill(self) -> None:
        """SIGKILL (no clean shutdown, nothing saved) and reap."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered (no PUBACK)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _mosquitto_conf(
    port: int, tls: TlsFiles | None, password_file: Path | None, include: Path | None = None
) -> str:
    lines = [
        f"listener {port} {HOST}",
        "persistence false",
        "max_queued_messages 100000",
        "max_inflight_messages 0",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_dest stderr",
    ]
    if os.geteuid() == 0:
        lines.append("user root")  # else mosquitto drops to 'mosquitto', who cannot read tmp
    if tls is not None:
        lines += [
            f"cafile {tls.ca_cert}",
            f"certfile {tls.server_cert}",
            f"keyfile {tls.server_key}",
        ]
    if include is not None:  # a generated access config (lungwatch.access): its lines as written
        lines += include.read_text(encoding="utf-8").splitlines()
    elif password_file is not None:
        lines += ["allow_anonymous false", f"password_file {password_file}"]
    else:
        lines.append("allow_anonymous true")
    return "\n".join(lines) + "\n"


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline_s = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline_s:
        if process.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"mosquitto did not listen on {port} within {READY_TIMEOUT_S} s")


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Recorder:
    """A QoS 1 subscriber that keeps every message; :meth:`connect` again after a restart."""

    def __init__(
        self,
        port: int,
        topic: str = "lungwatch/#",
        tls: TlsFiles | None = None,
        credentials: tuple[str, str] | None = None,
        qos: int = 1,
    ) -> None:
        self.port, self.topic, self.tls, self.credentials = port, topic, tls, credentials
        self.qos = qos
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._client: mqtt.Client | None = None

    def connect(self, timeout_s: float = 5.0) -> Recorder:
        """A fresh connection (no automatic reconnect) subscribed before this returns."""
        self.disconnect()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"recorder-{id(self)}",
            reconnect_on_failure=False,
        )  # fmt: skip
        if self.tls is not None:
            client.tls_set(ca_certs=str(self.tls.ca_cert))
        if self.credentials is not None:
            client.username_pw_set(*self.credentials)
        subscribed = threading.Event()
        client.on_message = self._on_message
        client.on_subscribe = lambda *args: subscribed.set()
        client.connect(HOST, self.port, keepalive=30)
        client.subscribe(self.topic, qos=self.qos)
        client.loop_start()
        if not subscribed.wait(timeout_s):
            raise RuntimeError(f"recorder: no SUBACK from port {self.port}")
        self._client = client
        return self

    def disconnect(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(
                Message(message.topic, bytes(message.payload), message.qos, message.retain)
            )
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Message]], bool], timeout_s: float) -> bool:
        deadline_s = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self.messages):
                left_s = deadline_s - time.monotonic()
                if left_s <= 0:
                    return False
                self._cond.wait(left_s)
        return True

    def events(self) -> list[Message]:
        with self._cond:
            return [m for m in self.messages if m.topic.endswith("/event")]

    def event_ids(self) -> list[str]:
        return [m.json()["id"] for m in self.events()]

    def __enter__(self) -> Recorder:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.disconnect()


def make_events(
    n: int, site: str = "ward-3", device_id: str = "dev-1", stream_id: str = "bed-1",
    priority: str = "medium", type: str = "Wheeze",
) -> list[Event]:  # fmt: skip
    """``n`` distinct Wheeze onsets (or of ``type``), 1 s apart on an 8 kHz timeline."""
    return [
        Event.onset(
            type=type,
            site=site,
            device_id=device_id,
            stream_id=stream_id,
            priority=priority,
            start_utc=f"2026-05-09T07:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
            start_sample=8000 * i,
            confidence=0.9,
            model_id="edge-test",
            model_sha256=SHA256,
            quality={"score": 0.99},
        )
        for i in range(n)
    ]


def finding_events(n: int, **kwargs: Any) -> list[Event]:
    """``n`` distinct wheeze finding episodes' onsets (what the gateway reports of a bed's
    wheezes; the events inside are evidence it does not send)."""
    return make_events(n, type="CAS", **kwargs)


def latched_stridor(site: str, device_id: str, stream_id: str) -> Event:
    """A Stridor episode that latched: its onset, then an ``ongoing`` marked latched."""
    onset = Event.onset(
        type="Stridor", site=site, device_id=device_id, stream_id=stream_id,
        start_utc="2026-05-09T07:00:01.000Z", start_sample=8000, confidence=0.93,
        model_id="edge-test", model_sha256=SHA256, quality={"score": 0.99},
        detail={"key": "Stridor@8000"},
    )  # fmt: skip
    return onset.ongoing(detail={**onset.detail, "latched": True})


def start_publisher(
    config: dict[str, Any], events: list[Event], directory: Path,
    interval_s: float = 0.0, hold: bool = False, gate: bool = False,
) -> subprocess.Popen[str]:  # fmt: skip
    """Run ``publish`` in a new process (stdout piped, one status word per line).

    ``gate``: it waits after ``started`` until :func:`open_gate` writes to its stdin.
    """
    config_path = directory / f"publisher-{time.monotonic_ns()}.json"
    events_path = config_path.with_suffix(".jsonl")
    config_path.write_text(json.dumps(config), encoding="utf-8")
    events_path.write_text("".join(e.to_json() + "\n" for e in events), encoding="utf-8")
    cmd = [
        sys.executable,
        "-m",
        "tests.brokers",
        "publish",
        str(config_path),
        str(events_path),
    ]
    cmd += ["--interval-s", str(interval_s)] + (["--hold"] if hold else [])
    cmd += ["--gate"] if gate else []
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )


def open_gate(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.write("go\n")
    process.stdin.flush()


def expect_line(process: subprocess.Popen[str], word: str, timeout_s: float = 30.0) -> str:
    """Read the publisher's stdout until a line starting with ``word``."""
    assert process.stdout is not None
    deadline_s = time.monotonic() + timeout_s
    while time.monotonic() < deadline_s:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"publisher exited ({process.wait()}) before {word!r}")
        if line.startswith(word):
            return line.strip()
    raise RuntimeError(f"publisher did not say {word!r} within {timeout_s} s")


def _publish_main(argv: list[str]) -> int:
    from edge.sinks.mqtt import MqttSink
    from lungwatch.config import from_mapping
    from lungwatch.mqtt import MqttConfig

    parser = argparse.ArgumentParser(prog="tests.brokers publish")
    parser.add_argument("config", type=Path)
    parser.add_argument("events", type=Path)
    parser.add_argument("--interval-s", type=float, default=0.0)
    parser.add_argument("--hold", action="store_true", help="stay alive after publishing")
    parser.add_argument("--gate", action="store_true", help="read a line from stdin first")
    args = parser.parse_args(argv)
    config = from_mapping(MqttConfig, json.loads(args.config.read_text(encoding="utf-8")))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    sink = MqttSink(config).connect()
    print("started", flush=True)
    if args.gate:
        sys.stdin.readline()
    lines = args.events.read_text(encoding="utf-8").splitlines()
    for line in lines:
        sink.publish(Event.from_json(line))
        time.sleep(args.interval_s)
    print(f"published {len(lines)}", flush=True)
    if args.hold:
        while True:
            time.sleep(1.0)
    flushed = sink.flush(config.flush_timeout_s)
    sink.close()
    print(f"closed flushed={flushed}", flush=True)
    return 0 if flushed else 1


if __name__ == "__main__":
    if sys.argv[1:2] != ["publish"]:
        sys.exit("usage: python -m tests.brokers publish CONFIG.json EVENTS.jsonl")
    sys.exit(_publish_main(sys.argv[2:]))
