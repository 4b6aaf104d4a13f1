"""The dashboard's web server over HTTP, without a browser, against a real Mosquitto with TLS
and a password file: who may do what (HTTP Basic users with ``view`` or ``ack``), a forged
acknowledge from a view-only user (403, nothing published), the acknowledge command that does
reach the broker, the Server-Sent-Events stream, and ``lungwatch dashboard``'s one-line errors.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from lungwatch.errors import ConfigError
from lungwatch.events import Event
from lungwatch.mqtt import MqttConfig
from lungwatch.passwords import verify_password
from tests.brokers import (
    HOST,
    Mosquitto,
    Recorder,
    TlsFiles,
    latched_stridor,
    make_password_file,
    make_tls_files,
)
from tests.wardview.browser import REPO_ROOT, user_entry, wait_until
from wardview.config import DashboardConfig, DashboardUser
from wardview.server import DashboardServer

SITE, DEVICE = "ward-3", "dev-1"
BROKER_USER, BROKER_PASSWORD = "dashboard", "br0ker-s3cret"
USERS = {"nurse": ("ack", "nurse-pw"), "porter": ("view", "porter-pw")}


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, TlsFiles]]:
    tls = make_tls_files(tmp_path / "tls")
    password_file = make_password_file(tmp_path, BROKER_USER, BROKER_PASSWORD)
    with Mosquitto(tmp_path, tls=tls, password_file=password_file) as broker:
        yield broker, tls


def broker_config(port: int, tls: TlsFiles, password: str = BROKER_PASSWORD) -> MqttConfig:
    return MqttConfig(
        host=HOST, port=port, username=BROKER_USER, password=password,
        ca_file=str(tls.ca_cert), connect_timeout_s=5.0,
    )  # fmt: skip


def dashboard_config() -> DashboardConfig:
    users = tuple(DashboardUser(**user_entry(n, r, p)) for n, (r, p) in USERS.items())  # type: ignore[arg-type]
    return DashboardConfig(port=0, users=users)


def publish(port: int, tls: TlsFiles, event: Event) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.tls_set(ca_certs=str(tls.ca_cert))
    client.username_pw_set(BROKER_USER, BROKER_PASSWORD)
    client.connect(HOST, port)
    client.loop_start()
    client.publish(event.topic, event.to_json(), qos=1).wait_for_publish(5.0)
    client.disconnect()
    client.loop_stop()


def request(
    url: str, user: str | None = None, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """(status, parsed JSON or raw bytes) of a GET, or a POST when ``body`` is given."""
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if user is not None:
        password = USERS[user][1] if user in USERS else "wrong"
        token = base64.b64encode(f"{user.split('!')[0]}:{password}".encode()).decode()
        all_headers["Authorization"] = f"Basic {token}"
    req = urllib.request.Request(url, data=data, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            status, raw = reply.status, reply.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def test_rights_are_enforced_by_the_server_and_a_forged_ack_publishes_nothing(
    tmp_path: Path, secure_broker: tuple[Mosquitto, TlsFiles]
) -> None:
    broker, tls = secure_broker
    commands = f"lungwatch/v1/{SITE}/+/command"
    creds = (BROKER_USER, BROKER_PASSWORD)
    with (
        Recorder(broker.port, topic=commands, tls=tls, credentials=creds) as recorder,
        DashboardServer(dashboard_config(), broker_config(broker.port, tls), SITE) as server,
    ):
        wait_until(server.feed.connected.is_set, 10.0, "the dashboard's TLS + password login")
        alarm = latched_stridor(SITE, DEVICE, "bed-2")
        publish(broker.port, tls, alarm)
        api = server.url + "api/"
        wait_until(lambda: request(api + "state", "porter")[1]["alarms"], 10.0, "the alarm")

        status, _ = request(server.url)
        assert status == 401
        assert request(server.url, "nurse!")[0] == 401, "a wrong password is refused"
        assert request(server.url, "porter")[0] == 200
        [shown] = request(api + "state", "porter")[1]["alarms"]
        assert (shown["episode_id"], shown["latched"], shown["priority"]) == (
            alarm.episode_id, True, "high",
        )  # fmt: skip

        ack = {"device_id": DEVICE, "stream_id": "bed-2", "target": "Stridor@8000"}
        status, reply = request(api + "acknowledge", "porter", ack)
        assert status == 403
        assert reply == {"error": "user 'porter' may view but not acknowledge"}
        assert request(api + "acknowledge", "nurse", ack, {"Content-Type": "text/plain"})[0] == 415
        foreign = {"Origin": "http://evil.example"}
        assert request(api + "acknowledge", "nurse", ack, foreign)[0] == 403
        other = {**ack, "target": "Wheeze"}
        assert request(api + "acknowledge", "nurse", other)[0] == 409
        # the page says which alarm it showed; one raised again since is not acknowledged unseen
        stale = {**ack, "raised_utc": "2026-05-09T06:00:00.000Z"}
        status, reply = request(api + "acknowledge", "nurse", stale)
        assert status == 409
        assert "started again since the page showed it" in reply["error"]
        assert request(api + "acknowledge", "nurse", {**ack, "raised_utc": 5})[0] == 400
        assert request(api + "acknowledge", "nurse", {"device_id": DEVICE})[0] == 400
        assert not recorder.wait_for(lambda ms: bool(ms), 1.0), "nothing may be published"

        status, reply = request(api + "acknowledge", "nurse", ack)
        assert status == 202, reply
        assert recorder.wait_for(lambda ms: bool(ms), 5.0)
        [command] = recorder.messages
        assert command.topic == f"lungwatch/v1/{SITE}/{DEVICE}/command"
        assert command.json() == {
            "action": "acknowledge",
            "stream_id": "bed-2",
            "target": "Stridor@8000",
        }
        assert request(api + "state", "porter")[1]["alarms"][0]["ack_sent"] is True


def test_the_event_stream_starts_with_a_snapshot_naming_the_users_rights(
    tmp_path: Path, secure_broker: tuple[Mosquitto, TlsFiles]
) -> None:
    broker, tls = secure_broker
    with DashboardServer(dashboard_config(), broker_config(broker.port, tls), SITE) as server:
        wait_until(server.feed.connected.is_set, 10.0, "the dashboard's broker login")
        publish(broker.port, tls, latched_stridor(SITE, DEVICE, "bed-2"))
        wait_until(lambda: server.ward.alarms(), 10.0, "the alarm in the ward")
        token = base64.b64encode(b"porter:porter-pw").decode()
        req = urllib.request.Request(
            server.url + "events", headers={"Authorization": f"Basic {token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as stream:
            assert stream.headers.get_content_type() == "text/event-stream"
            lines = [stream.readline().decode() for _ in range(5)]
    assert lines[:3] == ["retry: 2000\n", "\n", "event: snapshot\n"]
    snapshot = json.loads(lines[3].removeprefix("data: "))
    assert snapshot["user"] == {"name": "porter", "can_acknowledge": False, "can_listen": True}
    assert snapshot["broker"]["connected"] is True
    assert [b["stream_id"] for b in snapshot["beds"]] == ["bed-2"]
    expected = {"key": "stridor", "text": "stridor · high alarm (latched)"}
    assert snapshot["beds"][0]["state"] == expected


def _dashboard_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lungwatch.cli", "dashboard", *args],
        capture_output=True, text=True, timeout=60, input=stdin, cwd=REPO_ROOT, check=False,
    )  # fmt: skip


def test_wrong_broker_credentials_are_one_line(
    tmp_path: Path, secure_broker: tuple[Mosquitto, TlsFiles]
) -> None:
    broker, tls = secure_broker
    config = tmp_path / "dash.yaml"
    mqtt_block = {
        "host": HOST, "port": broker.port, "username": BROKER_USER, "password": "nope",
        "ca_file": str(tls.ca_cert), "connect_timeout_s": 5,
    }  # fmt: skip
    config.write_text(json.dumps({"site": SITE, "mqtt": mqtt_block}), encoding="utf-8")
    result = _dashboard_cli("--config", str(config), "--port", "0")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"lungwatch dashboard: error: broker {HOST}:{broker.port} refused the connection: "
        "Not authorized"
    )


def test_hash_password_and_config_errors_from_the_command_line(tmp_path: Path) -> None:
    result = _dashboard_cli("--hash-password", stdin="correct horse\n")
    assert result.returncode == 0, result.stderr
    assert verify_password("correct horse", result.stdout.strip())
    config = tmp_path / "dash.yaml"
    config.write_text("site: ward-3\ndashboard: {host: 0.0.0.0}\n", encoding="utf-8")
    result = _dashboard_cli("--config", str(config))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "lungwatch dashboard: error: dash.yaml: dashboard.host must be a loopback address "
        "(127.0.0.1, ::1, localhost) while no users are configured, got '0.0.0.0'"
    )
    result = _dashboard_cli("--config", str(config), "--broker", "nowhere")
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == "lungwatch dashboard: error: --broker must be HOST:PORT, got 'nowhere'"
    )


def test_lungwatch_run_serves_the_page_too(tmp_path: Path) -> None:
    """``dashboard.enabled``: ``lungwatch run`` prints the page's address and serves the ward
    it publishes (beds and live-strip points of its own streams)."""
    record = REPO_ROOT / "examples" / "41161556_1.7_0_p2_3062.flac"
    with Mosquitto(tmp_path) as broker:
        config = tmp_path / "run.yaml"
        config.write_text(json.dumps({
            "site": SITE, "device_id": DEVICE,
            "model": {"dir": str(REPO_ROOT / "models" / "sed"), "file": "model.int8.onnx"},
            "streams": [{"id": "bed-7", "source": str(record), "realtime": True, "loop": True}],
            "sinks": {"stdout": False, "mqtt": True},
            "mqtt": {"port": broker.port, "spool_path": str(tmp_path / "spool.sqlite")},
            "dashboard": {"enabled": True, "port": 0},
            "max_run_s": 8,
        }), encoding="utf-8")  # fmt: skip
        process = subprocess.Popen(
            [sys.executable, "-m", "lungwatch.cli", "run", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT,
            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)},
        )  # fmt: skip
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("dashboard: http://127.0.0.1:"), line
            assert "no users configured: loopback only" in line
            url = line.split()[1]

            def live_points() -> list[Any]:
                beds = request(url + "api/state")[1]["beds"]
                return beds[0]["live"] if beds else []

            points = wait_until(live_points, 20.0, "a live-strip point of bed-7")
            assert set(points[0]["classes"]) >= {"Wheeze", "Fine Crackle", "Stridor"}
            assert 0.0 <= points[0]["quality_score"] <= 1.0
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def test_https_with_the_configured_certificate(
    tmp_path: Path, secure_broker: tuple[Mosquitto, TlsFiles]
) -> None:
    """``cert_file`` / ``key_file``: the page is served over HTTPS only (a client that trusts
    the CA gets it; plain HTTP gets no page), so passwords never cross the network in clear."""
    import ssl

    broker, tls = secure_broker
    web = make_tls_files(tmp_path / "web", name="web")
    config = DashboardConfig(
        port=0, users=dashboard_config().users,
        cert_file=str(web.server_cert), key_file=str(web.server_key),
    )  # fmt: skip
    with DashboardServer(config, broker_config(broker.port, tls), SITE) as server:
        assert server.url.startswith("https://127.0.0.1:")
        token = base64.b64encode(b"porter:porter-pw").decode()
        req = urllib.request.Request(server.url, headers={"Authorization": f"Basic {token}"})
        trusted = ssl.create_default_context(cafile=str(web.ca_cert))
        with urllib.request.urlopen(req, timeout=10, context=trusted) as reply:
            assert reply.status == 200
            assert b"lungwatch ward view" in reply.read()
        plain = req.full_url.replace("https://", "http://")
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(plain, timeout=5)
    open_config = DashboardConfig(host="0.0.0.0", port=0, users=dashboard_config().users)
    with DashboardServer(open_config, broker_config(broker.port, tls), SITE) as server:
        assert "WARNING: no cert_file, passwords cross the network in clear" in server.describe()


def test_a_page_key_others_may_read_is_refused(tmp_path: Path) -> None:
    """The HTTPS private key follows the project's rule for key files: 0600, else the
    config is refused naming the key and the fix."""
    web = make_tls_files(tmp_path / "web", name="web")
    web.server_key.chmod(0o600)
    DashboardConfig(port=0, users=dashboard_config().users,
                    cert_file=str(web.server_cert), key_file=str(web.server_key))  # fmt: skip
    web.server_key.chmod(0o644)
    with pytest.raises(ConfigError, match=r"key_file must be .*mode 0644: chmod 600"):
        DashboardConfig(port=0, users=dashboard_config().users,
                        cert_file=str(web.server_cert), key_file=str(web.server_key))  # fmt: skip
