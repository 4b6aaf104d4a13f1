"""The ward view's web server under requests a browser would not send, over raw sockets, with a
real Mosquitto behind it: a malformed or missing ``Content-Length`` (400 / 411 / 413 / 501,
and the server goes on serving), a request that never completes (closed after
``request_timeout_s``, also when it trickles in a byte at a time), a forged ``Host`` (what a
DNS-rebinding page sends: 400, nothing published, even without users), the security headers
on every response, the bound on failed logins (429), the connections of one address, the
event stream's heartbeat, and the broker state when the broker refuses the view's
subscriptions.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import logging
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml

from lungwatch.access import generate
from lungwatch.events import Event, status_payload
from lungwatch.mqtt import MqttConfig
from tests.brokers import HOST, Mosquitto, Recorder, latched_stridor
from tests.wardview.browser import user_entry, wait_until
from wardview.config import DashboardConfig, DashboardUser
from wardview.server import STATIC_DIR, DashboardServer
from wardview.web import MALFORMED

SITE, DEVICE = "ward-h", "dev-1"
PUBLIC_NAME = "ward-view.example.org"
GENEROUS_S = 20.0  # far beyond the server's limits: only "closed at all" is asserted
SECURITY = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


class Reply:
    """A raw HTTP response: status, headers (lower-case names), body."""

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith("HTTP/"):
            raise AssertionError(f"not an HTTP response: {raw[:200]!r}")
        self.status = int(lines[0].split()[1])
        self.headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }

    def json(self) -> Any:
        return json.loads(self.body)


def send(port: int, request: bytes, source: str = HOST) -> Reply:
    """Send ``request`` whole, end the sending side, and read the response until the server
    closes."""
    with socket.create_connection((HOST, port), GENEROUS_S, (source, 0)) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return Reply(b"".join(chunks))


def http(
    method: str, path: str, host: str, headers: tuple[str, ...] = (), body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def basic(user: str, password: str) -> str:
    return "Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path) as running:
        yield running


def serve(broker: Mosquitto, **settings: Any) -> DashboardServer:
    settings.setdefault("request_timeout_s", 0.5)
    config = DashboardConfig(port=0, allowed_hosts=(PUBLIC_NAME,), **settings)
    mqtt_config = MqttConfig(host=HOST, port=broker.port, connect_timeout_s=5.0)
    server = DashboardServer(config, mqtt_config, SITE).start()
    wait_until(server.feed.connected.is_set, 10.0, "the dashboard's broker connection")
    return server


def address(server: DashboardServer) -> tuple[int, str]:
    port = int(server.url.rstrip("/").rsplit(":", 1)[1])
    return port, f"127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        (("Content-Length: abc",), 400, MALFORMED),
        (("Content-Length: -2",), 400, MALFORMED),
        (("Content-Length: 1", "Content-Length: 2"), 400, MALFORMED),
        ((), 411, "a POST needs a Content-Length header"),
        (("Transfer-Encoding: chunked",), 501,
         "Transfer-Encoding is not supported: send a Content-Length"),
        (("Content-Length: 5000",), 413, "the body may be at most 4096 bytes, got 5000"),
        (("Content-Length: 99999999999999999999999",), 400, MALFORMED),
        (("Content-Length: 9",), 400, "the body ended after 2 of 9 bytes"),
    ],
)  # fmt: skip
def test_content_length_is_parsed_strictly_and_the_server_keeps_serving(
    broker: Mosquitto, headers: tuple[str, ...], status: int, error: str
) -> None:
    server = serve(broker)
    try:
        port, host = address(server)
        kind = ("Content-Type: application/json",)
        reply = send(port, http("POST", "/api/acknowledge", host, kind + headers, b"{}"))
        assert (reply.status, reply.json()) == (status, {"error": error})
        assert send(port, http("GET", "/api/state", host)).status == 200
    finally:
        server.stop()


def read_to_end(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def trickle(port: int, host: str) -> float:
    """A request's headers sent a byte every 0.1 s until the server closes the connection;
    the longest gap between two bytes sent."""
    with socket.create_connection((HOST, port), GENEROUS_S) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode())
        sock.settimeout(0.1)
        closed, deadline_s = False, time.monotonic() + GENEROUS_S
        last_s, max_gap_s = time.monotonic(), 0.0
        while not closed and time.monotonic() < deadline_s:
            try:
                sock.sendall(b"a")
                now_s = time.monotonic()
                max_gap_s, last_s = max(max_gap_s, now_s - last_s), now_s
                closed = sock.recv(65536) == b""
            except TimeoutError:
                continue
            except OSError:  # reset: the server shut the connection down
                closed = True
        assert closed, "the trickling request's connection is closed"
    return max_gap_s


def test_a_request_that_never_completes_is_closed(broker: Mosquitto) -> None:
    """``request_timeout_s`` (0.5 s here): a request whose end never comes is closed (with
    408 where the server got as far as answering), and so is one sent a byte every 0.1 s
    (each read is quick; the whole request is not)."""
    server = serve(broker)
    try:
        port, host = address(server)
        length = ("Content-Type: application/json", "Content-Length: 9")
        for half in (f"GET / HTTP/1.1\r\nHost: {host}\r\n".encode(),
                     http("POST", "/api/acknowledge", host, length, b"{}")):  # fmt: skip
            with socket.create_connection((HOST, port), GENEROUS_S) as sock:
                sock.sendall(half)
                answer = read_to_end(sock)  # the server closes: EOF
            if answer:
                assert Reply(answer).status == 408, answer
                assert Reply(answer).json() == {"error": "the request did not arrive within 0.5 s"}
        # the trickle proves the whole-request deadline only where this side kept its pace
        # (a byte every 0.1 s); a starved test thread lets the per-read timeout close it
        # instead, so such a try is repeated (at most three)
        for _ in range(3):
            before, max_gap_s = server.connections.reaped, trickle(port, host)
            if max_gap_s < 0.3:
                break
        assert max_gap_s < 0.3, f"this side never kept a byte per 0.1 s (gap {max_gap_s:.2f} s)"
        assert server.connections.reaped > before, "the whole-request deadline closed it"
        assert send(port, http("GET", "/api/state", host)).status == 200
    finally:
        server.stop()


def open_stream(port: int, host: str, source: str) -> socket.socket:
    """An event stream from ``source``, read up to its snapshot (the server holds it open)."""
    sock = socket.create_connection((HOST, port), GENEROUS_S, (source, 0))
    sock.sendall(http("GET", "/events", host))
    stream = sock.makefile("rb")
    while (line := stream.readline()) != b"event: snapshot\n":
        assert line, "the stream ended before its snapshot"
    return sock


def test_one_client_address_cannot_take_every_connection(broker: Mosquitto) -> None:
    """``max_connections_per_address`` (2 of ``max_connections`` 8 here): with two event
    streams open from one address, a third connection from it is closed at once, unanswered,
    and counted, while another address is served; once they close, it is served again."""
    server = serve(broker, max_connections=8, max_connections_per_address=2,
                   heartbeat_interval_s=0.2)  # fmt: skip
    try:
        port, host = address(server)
        streams = [open_stream(port, host, "127.0.0.2") for _ in range(2)]
        try:
            with socket.create_connection((HOST, port), GENEROUS_S, ("127.0.0.2", 0)) as sock:
                sock.sendall(http("GET", "/api/state", host))
                try:
                    answer = read_to_end(sock)
                except ConnectionResetError:
                    answer = b""
            assert answer == b"", f"closed unanswered, got {answer[:80]!r}"
            assert (server.connections.refused, server.connections.refused_per_address) == (1, 1)
            assert send(port, http("GET", "/api/state", host), "127.0.0.3").status == 200
        finally:
            for stream in streams:
                stream.close()
        ended = "the closed streams' connections to end (a heartbeat write fails)"
        wait_until(lambda: server.connections.open_connections("127.0.0.2") == 0, GENEROUS_S, ended)
        assert send(port, http("GET", "/api/state", host), "127.0.0.2").status == 200
        assert server.connections.refused == 1
    finally:
        server.stop()


def publish(port: int, event: Event) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(HOST, port)
    client.loop_start()
    client.publish(event.topic, event.to_json(), qos=1).wait_for_publish(5.0)
    client.disconnect()
    client.loop_stop()


def test_a_forged_host_is_refused_even_without_users(broker: Mosquitto) -> None:
    """What a DNS-rebinding page sends (its own name as Host, and as Origin) is refused with
    400 before anything else, so nothing is published, though without users anyone on the
    machine may acknowledge; the server's own names and addresses are served."""
    server = serve(broker)
    try:
        port, host = address(server)
        alarm = latched_stridor(SITE, DEVICE, "bed-1")
        publish(broker.port, alarm)
        wait_until(lambda: server.ward.alarms(), 10.0, "the latched alarm in the ward")
        body = json.dumps({"device_id": DEVICE, "stream_id": "bed-1", "target": "Stridor@8000"})
        evil = f"evil.example:{port}"
        headers = (f"Origin: http://{evil}", "Content-Type: application/json",
                   f"Content-Length: {len(body)}")  # fmt: skip
        commands = f"lungwatch/v1/{SITE}/+/command"
        with Recorder(broker.port, topic=commands) as recorder:
            reply = send(port, http("POST", "/api/acknowledge", evil, headers, body.encode()))
            assert reply.status == 400
            assert reply.json() == {
                "error": f"Host '{evil}' is not this server's (dashboard.allowed_hosts)"
            }
            assert send(port, http("GET", "/api/state", "evil.example")).status == 400
            assert not recorder.wait_for(lambda ms: bool(ms), 1.0), "nothing may be published"
        for name in (host, f"localhost:{port}", f"[::1]:{port}", "10.1.2.3", PUBLIC_NAME,
                     f"{PUBLIC_NAME.upper()}.:{port}"):  # fmt: skip
            assert send(port, http("GET", "/api/state", name)).status == 200, name
        no_host = b"GET /api/state HTTP/1.0\r\n\r\n"
        assert send(port, no_host).json() == {
            "error": "a request needs exactly one Host header, got 0"
        }
        twice = http("GET", "/api/state", host, (f"Host: {PUBLIC_NAME}",))
        assert send(port, twice).status == 400
    finally:
        server.stop()


def test_every_response_carries_the_security_headers(broker: Mosquitto) -> None:
    server = serve(broker)
    try:
        port, host = address(server)
        requests = {
            "/": http("GET", "/", host),
            "/static/app.js": http("GET", "/static/app.js", host),
            "/static/style.css": http("GET", "/static/style.css", host),
            "/api/state": http("GET", "/api/state", host),
            "404": http("GET", "/nowhere", host),
            "forged host": http("GET", "/", "evil.example"),
            "bad length": http("POST", "/api/acknowledge", host, ("Content-Length: abc",)),
            "PUT (405)": http("PUT", "/", host),
            "huge headers": http("GET", "/", host, ("X-Pad: " + "a" * 20_000,)),
        }
        for what, request in requests.items():
            reply = send(port, request)
            for name, value in SECURITY.items():
                assert reply.headers.get(name) == value, (what, name, reply.headers)
            policy = reply.headers["content-security-policy"]
            for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'",
                              "connect-src 'self'", "frame-ancestors 'none'"):  # fmt: skip
                assert directive in policy, (what, policy)
        with socket.create_connection((HOST, port), GENEROUS_S) as sock:  # the event stream
            sock.sendall(http("GET", "/events", host))
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(4096)
        stream = Reply(head)
        assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert all(stream.headers.get(k) == v for k, v in SECURITY.items()), stream.headers
    finally:
        server.stop()
    # the policy allows no inline script or style: the page has none
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    assert re.findall(r"<script\b[^>]*>", page) == ['<script src="/static/app.js">']
    assert not re.search(r"<style\b|\sstyle=|\son[a-z]+=", page)


def test_failed_logins_are_bounded_with_429_and_retry_after(broker: Mosquitto) -> None:
    """Three failures (``login_max_failures: 3``) of a name, from one address, bound both:
    the address gets 429 with Retry-After for any name, right passwords too (nothing is
    verified); the name gets 429 for a wrong password from another address, but its right
    password still gets in (guesses cannot lock a nurse out); other names from other
    addresses are served."""
    users = tuple(DashboardUser(**user_entry(n, r, f"{n}-pw"))  # type: ignore[arg-type]
                  for n, r in (("nurse", "ack"), ("porter", "view")))  # fmt: skip
    server = serve(broker, users=users, login_max_failures=3, login_window_s=60.0)
    try:
        port, host = address(server)

        def get(user: str, password: str, source: str) -> Reply:
            return send(port, http("GET", "/api/state", host, (basic(user, password),)), source)

        for _ in range(3):
            assert get("nurse", "guess", "127.0.0.2").status == 401
        for user, password, source in (("nurse", "guess", "127.0.0.3"),
                                       ("porter", "porter-pw", "127.0.0.2")):  # fmt: skip
            reply = get(user, password, source)
            assert reply.status == 429, (user, source)
            assert 1 <= int(reply.headers["retry-after"]) <= 60
            assert reply.json()["error"].startswith("too many failed logins")
            assert all(reply.headers.get(k) == v for k, v in SECURITY.items())
        assert get("nurse", "nurse-pw", "127.0.0.3").status == 200, "not locked out"
        assert get("porter", "porter-pw", "127.0.0.3").status == 200
        assert server.logins is not None
        assert server.logins.counts == {"ok": 2, "failed": 3, "limited": 2}
    finally:
        server.stop()


def test_the_event_stream_sends_heartbeats(broker: Mosquitto) -> None:
    """``heartbeat_interval_s``: an ``event: heartbeat`` comes while nothing changes (the page
    declares its stream dead after three missed), and the snapshot says how often."""
    server = serve(broker, heartbeat_interval_s=0.2)
    try:
        port, host = address(server)
        with socket.create_connection((HOST, port), GENEROUS_S) as sock:
            sock.sendall(http("GET", "/events", host))
            stream = sock.makefile("rb")
            lines, deadline_s = [], time.monotonic() + GENEROUS_S
            while b"event: heartbeat\n" not in lines and time.monotonic() < deadline_s:
                lines.append(stream.readline())
                assert lines[-1], "the stream ended"
        assert b"event: heartbeat\n" in lines, lines
        snapshot = json.loads(lines[lines.index(b"event: snapshot\n") + 1].removeprefix(b"data: "))
        assert snapshot["heartbeat_s"] == 0.2
        assert snapshot["broker"]["state"] == "connected"
    finally:
        server.stop()


def test_the_broker_probe_is_answered_under_the_sites_acl(tmp_path: Path) -> None:
    """The round-trip probe needs no right beyond what ``lungwatch access`` gives a ward view
    (read the site, publish commands): with no device sending, the broker is answered every
    ``probe_interval_s`` and stays ``connected`` past ``stale_after_s``."""
    directory = tmp_path / "access"
    generate(SITE, [DEVICE], ["ward-view"], directory)
    login = yaml.safe_load((directory / "clients" / "ward-view.yaml").read_text())["mqtt"]
    with Mosquitto(tmp_path, include=directory / "mosquitto" / "lungwatch.conf") as broker:
        config = DashboardConfig(port=0, stale_after_s=1.0, probe_interval_s=0.2)
        mqtt_config = MqttConfig(
            host=HOST, port=broker.port, username=login["username"], password=login["password"]
        )
        with DashboardServer(config, mqtt_config, SITE) as server:
            wait_until(lambda: server.ward.counts["probes"] >= 10, GENEROUS_S,
                       "ten probes answered (2 s: twice stale_after_s)")  # fmt: skip
            server.ward.check_liveness()
            assert server.ward.snapshot()["broker"]["state"] == "connected"


def dynamic_security(directory: Path) -> tuple[Path, dict[str, str]]:
    """Broker config lines for Mosquitto's dynamic-security plugin, which checks SUBSCRIBE
    against its ACL and refuses in the SUBACK (``acl_file`` grants every subscription and
    filters what it delivers), with the rights ``lungwatch access`` gives: ``ward-view``
    reads the site, device ``dev-1`` only its own command topic; (path, passwords)."""
    plugins = glob.glob("/usr/lib/*/mosquitto_dynamic_security.so") + glob.glob(
        "/usr/local/lib/mosquitto_dynamic_security.so"
    )
    if not plugins:
        pytest.skip("Mosquitto's dynamic-security plugin is not installed (package mosquitto)")
    root = f"lungwatch/v1/{SITE}"
    passwords = {name: secrets.token_urlsafe(12) for name in ("ward-view", DEVICE)}

    def client(name: str) -> dict[str, Any]:
        salt = secrets.token_bytes(12)
        digest = hashlib.pbkdf2_hmac("sha512", passwords[name].encode(), salt, 101)
        return {"username": name, "password": base64.b64encode(digest).decode(),
                "salt": base64.b64encode(salt).decode(), "iterations": 101,
                "roles": [{"rolename": name}]}  # fmt: skip

    def acls(kind: str, *topics: str) -> list[dict[str, Any]]:
        return [{"acltype": kind, "topic": t, "allow": True} for t in topics]

    device_writes = [f"{root}/{DEVICE}/{t}" for t in ("status", "metrics", "+/event", "+/live",
                                                     "+/verdict")]  # fmt: skip
    rights = {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True,
                             "subscribe": False, "unsubscribe": True},
        "clients": [client("ward-view"), client(DEVICE)],
        "roles": [
            {"rolename": "ward-view",
             "acls": acls("subscribePattern", f"{root}/#")
             + acls("publishClientSend", f"{root}/+/command")},
            {"rolename": DEVICE,
             "acls": acls("subscribeLiteral", f"{root}/{DEVICE}/command")
             + acls("publishClientSend", *device_writes)},
        ],
    }  # fmt: skip
    (directory / "dynamic-security.json").write_text(json.dumps(rights), encoding="utf-8")
    conf = directory / "dynamic-security.conf"
    conf.write_text(
        f"allow_anonymous false\nplugin {plugins[0]}\n"
        f"plugin_opt_config_file {directory / 'dynamic-security.json'}\n",
        encoding="utf-8",
    )
    return conf, passwords


def test_a_view_refused_its_subscriptions_says_so_not_connected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that refuses the view's subscriptions in its SUBACK (a device's credentials
    used as the ward view's): the broker state is ``refused`` naming the topics it may not
    read, not ``connected`` (though the probe is answered), logged once as an error though
    every reconnect is refused again; the ward view's own credentials are granted."""
    conf, passwords = dynamic_security(tmp_path)
    config = DashboardConfig(port=0, stale_after_s=1.0, probe_interval_s=0.2)
    with Mosquitto(tmp_path, include=conf) as broker:
        view = MqttConfig(host=HOST, port=broker.port, username="ward-view",
                          password=passwords["ward-view"])  # fmt: skip
        with DashboardServer(config, view, SITE) as server:
            wait_until(lambda: server.feed.subacks >= 1, GENEROUS_S, "the SUBACK")
            assert server.ward.snapshot()["broker"]["state"] == "connected"
            assert server.ward.snapshot()["broker"]["refused"] is None

        device = MqttConfig(host=HOST, port=broker.port, username=DEVICE,
                            password=passwords[DEVICE])  # fmt: skip
        logged = caplog.at_level(logging.INFO, "lungwatch.dashboard")
        with logged, DashboardServer(config, device, SITE) as server:
            wait_until(lambda: server.feed.subacks >= 1, GENEROUS_S, "the SUBACK")
            wait_until(lambda: server.ward.counts["probes"] >= 10, GENEROUS_S,
                       "ten probes answered (2 s: twice stale_after_s)")  # fmt: skip
            server.ward.check_liveness()
            state = server.ward.snapshot()["broker"]
            assert (state["state"], state["connected"]) == ("refused", False)
            assert state["refused"] == "not allowed to read " + ", ".join(server.feed.topics)
            broker.restart()  # the view reconnects, and is refused again
            wait_until(lambda: server.feed.subacks >= 2, GENEROUS_S, "the second SUBACK")
            assert server.ward.snapshot()["broker"]["state"] == "refused"
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert errors == [
            f"broker {device.address} refused the dashboard's subscriptions: not allowed to "
            f"read {', '.join(server.feed.topics)} (its user needs read on "
            f"lungwatch/v1/{SITE}/#; the page says so)"
        ]


def test_a_client_that_stops_reading_a_response_is_cut_off() -> None:
    """The write deadline of the view's protocol (``request_timeout_s``): a client that asks
    for an endless stream and reads nothing holds its connection only until the server's
    buffers fill and ``request_timeout_s`` passes; it is closed and counted (``stalled``),
    and the server serves the next client. Real uvicorn and a real socket; the application
    streams without end, as an event stream does to a browser that stopped reading."""
    import asyncio
    import threading

    import uvicorn

    from wardview.web import Connections, guarded_protocol

    async def endless(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/short":
            length = [(b"content-length", b"2")]
            await send({"type": "http.response.start", "status": 200, "headers": length})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while not server.should_exit:  # a cut-off client's sends return at once
            await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
            await asyncio.sleep(0)

    connections = Connections(8)
    listener = socket.create_server((HOST, 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(endless, http=guarded_protocol(connections, 0.5), ws="none",
                            lifespan="off", log_config=None, log_level="warning")  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10.0, "uvicorn to start")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((HOST, port))
        sock.sendall(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: connections.stalled == 1, GENEROUS_S, "the stalled client cut off")
        wait_until(lambda: connections.open_connections() == 0, GENEROUS_S, "its slot freed")
        sock.close()
        assert send(port, b"GET /short HTTP/1.1\r\nHost: x\r\n\r\n").body == b"ok"
        assert connections.reaped == 0, "the request itself had arrived in time"
    finally:
        server.should_exit = True
        thread.join(10.0)


# what guarded_protocol overrides of uvicorn's private H11Protocol, and reads of it and of its
# RequestResponseCycle (pyproject.toml pins uvicorn to the minor version these ran on)
OVERRIDDEN = ("connection_made", "connection_lost", "data_received", "eof_received",
              "pause_writing", "resume_writing", "send_400_response")  # fmt: skip
PROTOCOL_READS = ("client", "conn", "cycle", "loop", "transport")
CYCLE_READS = ("keep_alive", "message_event", "more_body", "response_complete")


def test_the_private_hooks_the_protocol_overrides_are_still_uvicorns() -> None:
    """Each method ``guarded_protocol`` overrides is defined by uvicorn's H11Protocol with the
    same parameters (``send_400_response`` still called by its parser loop), and the
    attributes it reads are still set, so an uvicorn that moved one fails here by name
    instead of silently dropping a connection rule."""
    import inspect

    from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

    from wardview.web import Connections, guarded_protocol

    guarded = guarded_protocol(Connections(8), 1.0)
    assert sorted(n for n in vars(guarded) if not n.startswith("_")) == sorted(OVERRIDDEN)
    for name in OVERRIDDEN:
        assert name in vars(H11Protocol), f"uvicorn's H11Protocol no longer defines {name}"
        ours, theirs = (inspect.signature(getattr(c, name)) for c in (guarded, H11Protocol))
        assert list(ours.parameters) == list(theirs.parameters), (name, ours, theirs)
    assert "send_400_response" in H11Protocol.handle_events.__code__.co_names
    for cls, reads in ((H11Protocol, PROTOCOL_READS), (RequestResponseCycle, CYCLE_READS)):
        missing = set(reads) - set(cls.__init__.__code__.co_names)
        assert not missing, f"uvicorn's {cls.__name__} no longer sets {sorted(missing)}"


def test_an_acknowledge_the_device_would_not_take_is_answered_409_at_once(
    broker: Mosquitto,
) -> None:
    """A device whose online status says it takes no commands (no ``commands.key_file``):
    the view answers 409 naming why, at once, and publishes nothing, instead of showing
    "waiting for the device" for a confirmation that never comes."""
    server = serve(broker)
    try:
        port, host = address(server)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.connect(HOST, broker.port)
        client.loop_start()
        status = status_payload("online", SITE, DEVICE, "connected", commands="refused")
        topic = f"lungwatch/v1/{SITE}/{DEVICE}/status"
        client.publish(topic, status, qos=1, retain=True).wait_for_publish(5.0)
        client.disconnect()
        client.loop_stop()
        publish(broker.port, latched_stridor(SITE, DEVICE, "bed-1"))
        wait_until(lambda: server.ward.alarms(), 10.0, "the latched alarm in the ward")
        body = json.dumps({"device_id": DEVICE, "stream_id": "bed-1", "target": "Stridor@8000"})
        headers = ("Content-Type: application/json", f"Content-Length: {len(body)}")
        commands = f"lungwatch/v1/{SITE}/+/command"
        with Recorder(broker.port, topic=commands) as recorder:
            reply = send(port, http("POST", "/api/acknowledge", host, headers, body.encode()))
            assert reply.status == 409
            assert reply.json() == {"error": f"device {DEVICE} takes no commands: it has no "
                                    "commands.key_file (lungwatch access writes one; "
                                    "docs/security.md)"}  # fmt: skip
            assert not recorder.wait_for(lambda ms: bool(ms), 1.0), "nothing may be published"
        assert not server.ward.alarms()[0]["ack_sent"]
    finally:
        server.stop()


def test_slow_sockets_from_many_addresses_and_what_keeps_the_ward_served(
    broker: Mosquitto,
) -> None:
    """80 connections that send nothing, from 8 addresses (10 each, over the per-address
    bound): without ``allowed_clients`` they take the 16 slots until the request deadline cuts
    them (5 s here), and a nurse's page load meanwhile is refused (the limit this bound
    has, said in docs/security.md); with ``allowed_clients`` naming the ward workstations'
    network, every one of them is closed unread at once and the workstation's page loads."""
    for allowed, nurse in (((), "127.0.0.1"), (("127.0.0.1/32",), "127.0.0.1")):
        server = serve(broker, max_connections=16, max_connections_per_address=8,
                       allowed_clients=allowed, request_timeout_s=5.0)  # fmt: skip
        port, host = address(server)
        slow = []
        try:
            for i in range(80):
                source = f"127.0.0.{2 + i % 8}"
                sock = socket.socket()
                sock.bind((source, 0))
                sock.connect((HOST, port))
                slow.append(sock)
            counts = server.connections
            if allowed:
                wait_until(lambda c=counts: c.refused_not_allowed == 80, GENEROUS_S,
                           "every slow socket refused")  # fmt: skip
                assert counts.open_connections() == 0
                assert send(port, http("GET", "/api/state", host), nurse).status == 200
            else:  # 16 hold every slot, 64 refused; the nurse's page load is refused too
                wait_until(lambda c=counts: c.refused == 64, GENEROUS_S, "the slots full")
                with socket.create_connection((HOST, port), GENEROUS_S, (nurse, 0)) as sock:
                    sock.sendall(http("GET", "/api/state", host))
                    try:
                        answer = read_to_end(sock)
                    except ConnectionResetError:
                        answer = b""
                assert answer == b"", "a page load while the slots are full"
        finally:
            for sock in slow:
                sock.close()
            server.stop()


def test_allowed_clients_must_be_networks() -> None:
    from lungwatch.errors import ConfigError

    with pytest.raises(ConfigError, match="allowed_clients"):
        DashboardConfig(allowed_clients=("the ward",))
    assert DashboardConfig(allowed_clients=("10.20.0.0/24", "fd00::/8")).allowed_clients
