"""The ward view's web server: the page, a Server-Sent-Events stream of the ward, acknowledge.

    server = DashboardServer(DashboardConfig(port=0), mqtt_config, site="ward-1").start()
    print(server.url)          # http://127.0.0.1:PORT/
    ...
    server.stop()

Routes (standard library ``ThreadingHTTPServer``; every one needs a configured user's HTTP
Basic credentials when the config has users, none when it has none, which it only allows on
a loopback address):

- ``GET /`` and ``GET /static/{app.js,style.css}``: the page (plain files in ``static/``);
- ``GET /events``: ``text/event-stream``; first ``event: snapshot`` (the whole ward and what the
  user may do), then ``event: update`` with what changed, at most every ``push_interval_s``;
- ``GET /api/state``: the snapshot as JSON;
- ``POST /api/acknowledge`` with ``{"device_id", "stream_id", "target"}`` (JSON): needs the
  ``ack`` role (else 403, nothing published), an open latched alarm of that bed whose key or
  type is ``target`` (else 409); publishes the command on the device's ``command`` topic
  (QoS 1, PUBACK awaited) and answers 202. The page shows the acknowledged state when the
  episode's ``ended`` comes back from the device.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import queue
import secrets
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edge.dashboard.config import DashboardConfig, is_loopback, verify_password
from edge.dashboard.feed import FeedError, WardFeed
from edge.dashboard.ward import Ward
from edge.errors import LungwatchError
from edge.events import is_segment
from edge.sinks.mqtt import MqttConfig

log = logging.getLogger("lungwatch.dashboard")

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies and the browser's timer happy
CLIENT_QUEUE = 1000  # updates waiting for a slow browser before it is dropped (it reconnects)
MAX_BODY_BYTES = 4096
REALM = "lungwatch ward view"


class DashboardError(LungwatchError):
    """The dashboard cannot start (the message says why)."""


@dataclass(frozen=True)
class Viewer:
    """Who sent a request, and whether they may acknowledge."""

    name: str
    can_acknowledge: bool


# no users configured: who is on the loopback interface may view and acknowledge (the demo)
LOCAL_VIEWER = Viewer("local", can_acknowledge=True)


class DashboardServer:
    """The web server, the ward state and the MQTT feed together (see the module doc)."""

    def __init__(self, config: DashboardConfig, mqtt: MqttConfig, site: str) -> None:
        self.config, self.site = config, site
        self.ward = Ward(site, config.events_per_bed, config.live_points,
                         verdict_alarms=config.alarm_verdicts,
                         verdict_priority=config.verdict_priority)  # fmt: skip
        self.feed = WardFeed(mqtt, site, self.ward)
        self._clients: set[queue.Queue[str | None]] = set()
        self._stop = threading.Event()
        self._auth_key = secrets.token_bytes(32)
        self._auth_cache: dict[bytes, Viewer] = {}
        self._httpd = ThreadingHTTPServer((config.host, config.port), _handler_class(self))
        self._httpd.daemon_threads = True
        if config.cert_file is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                context.load_cert_chain(config.cert_file, config.key_file)
            except (OSError, ssl.SSLError) as exc:
                self._httpd.server_close()
                raise DashboardError(f"dashboard.cert_file / key_file: {exc}") from None
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        host, port = str(self._httpd.server_address[0]), int(self._httpd.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        scheme = "https" if self.config.uses_tls else "http"
        return f"{scheme}://{shown}:{port}/"

    def describe(self) -> str:
        """The startup line: address, site, broker and who may do what."""
        if self.config.users:
            roles = ", ".join(f"{u.name} ({u.role})" for u in self.config.users)
            who = f"HTTP Basic users: {roles}"
            if not self.config.uses_tls and not is_loopback(self.config.host):
                who += "; WARNING: no cert_file, passwords cross the network in clear"
        else:
            who = "no users configured: loopback only, anyone on this machine may acknowledge"
        return f"dashboard: {self.url} (site {self.site}, broker {self.feed.config.address}; {who})"

    def start(self) -> DashboardServer:
        self.feed.start()
        for target, name in ((self._httpd.serve_forever, "http"), (self._push, "push")):
            thread = threading.Thread(target=target, name=f"lungwatch-dashboard-{name}")
            thread.daemon = True
            thread.start()
            self._threads.append(thread)
        log.info("%s", self.describe())
        return self

    def stop(self) -> None:
        """Close the browsers' streams, the HTTP server and the MQTT feed (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        with self.ward.lock:
            for client in self._clients:
                client.put_nowait(None)
        self._httpd.shutdown()
        self._httpd.server_close()
        for thread in self._threads:
            thread.join(timeout=5.0)
        self.feed.stop()

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- pushing to the browsers -------------------------------------------------------
    def subscribe(self, user: Viewer) -> queue.Queue[str | None]:
        """A browser's queue, starting with the snapshot (taken under the ward's lock, so no
        change is lost or repeated between the snapshot and the first update)."""
        client: queue.Queue[str | None] = queue.Queue(CLIENT_QUEUE)
        with self.ward.lock:
            snapshot = self.ward.snapshot()
            snapshot["user"] = {"name": user.name, "can_acknowledge": user.can_acknowledge}
            client.put_nowait(_sse("snapshot", snapshot))
            self._clients.add(client)
        return client

    def unsubscribe(self, client: queue.Queue[str | None]) -> None:
        with self.ward.lock:
            self._clients.discard(client)

    def _push(self) -> None:
        while not self._stop.wait(self.config.push_interval_s):
            with self.ward.lock:
                changes = self.ward.take_changes()
                if changes is None:
                    continue
                message = _sse("update", changes)
                for client in list(self._clients):
                    try:
                        client.put_nowait(message)
                    except queue.Full:  # the browser stopped reading; it reconnects
                        log.warning("dropping a browser that fell %d updates behind", CLIENT_QUEUE)
                        self._clients.discard(client)

    # -- rights ------------------------------------------------------------------------
    def authenticate(self, header: str | None) -> Viewer | None:
        """Who sent ``Authorization: Basic ...`` (:data:`LOCAL_VIEWER` without users); None:
        no or wrong credentials."""
        if not self.config.users:
            return LOCAL_VIEWER
        if not header or not header.startswith("Basic "):
            return None
        cache_key = hmac.new(self._auth_key, header.encode(), hashlib.sha256).digest()
        if cache_key in self._auth_cache:  # PBKDF2 is slow on purpose: once per credential
            return self._auth_cache[cache_key]
        try:
            name, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user = self.config.user(name)
        if user is None or not verify_password(password, user.password_hash):
            return None
        viewer = Viewer(user.name, user.can_acknowledge)
        self._auth_cache[cache_key] = viewer
        return viewer

    def acknowledge(self, user: Viewer, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON reply) of an acknowledge request by ``user``."""
        if not user.can_acknowledge:
            log.warning("acknowledge refused: user %r has the view right only", user.name)
            return 403, {"error": f"user {user.name!r} may view but not acknowledge"}
        keys = ("device_id", "stream_id", "target")
        if sorted(body) != sorted(keys) or not all(isinstance(body[k], str) for k in keys):
            return 400, {"error": f"body must be a JSON object of strings {', '.join(keys)}"}
        device_id, stream_id, target = (body[k] for k in keys)
        if not (is_segment(device_id) and is_segment(stream_id) and target):
            return 400, {"error": "device_id, stream_id: topic segments; target: non-empty"}
        if self.ward.latched_target(device_id, stream_id, target) is None:
            return 409, {"error": f"no latched alarm {target!r} on {device_id}/{stream_id}"}
        try:
            topic = self.feed.acknowledge(device_id, stream_id, target)
        except FeedError as exc:
            return 503, {"error": str(exc)}
        self.ward.acknowledge_sent(device_id, stream_id, target)
        log.info("acknowledge by %s: %s/%s %r (%s)", user.name, device_id, stream_id, target, topic)
        return 202, {"published": topic, "target": target}


def _sse(kind: str, body: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"


def _handler_class(server: DashboardServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "lungwatch-dashboard"

        def do_GET(self) -> None:
            user = self._user()
            if user is None:
                return
            path = self.path.split("?", 1)[0]
            if path in STATIC_FILES:
                name, content_type = STATIC_FILES[path]
                self._reply(200, (STATIC_DIR / name).read_bytes(), content_type)
            elif path == "/events":
                self._stream(user)
            elif path == "/favicon.ico":
                self._reply(204, b"", "image/x-icon")
            elif path == "/api/state":
                self._json(200, server.ward.snapshot())
            else:
                self._json(404, {"error": f"no such page: {path}"})

        def do_POST(self) -> None:
            user = self._user()
            if user is None:
                return
            if self.path != "/api/acknowledge":
                self._json(404, {"error": f"no such action: {self.path}"})
                return
            origin, host = self.headers.get("Origin"), self.headers.get("Host")
            scheme = "https" if server.config.uses_tls else "http"
            if origin is not None and origin != f"{scheme}://{host}":  # another site's form
                self._json(403, {"error": f"cross-origin request from {origin} refused"})
                return
            if self.headers.get_content_type() != "application/json":
                self._json(415, {"error": "send the acknowledge as application/json"})
                return
            self._json(*server.acknowledge(user, self._body()))

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(min(length, MAX_BODY_BYTES))
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                return {}
            return body if isinstance(body, dict) else {}

        def _user(self) -> Viewer | None:
            user = server.authenticate(self.headers.get("Authorization"))
            if user is None:
                self.send_response(401)
                self.send_header("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')
                self.send_header("Content-Length", "0")
                self.end_headers()
            return user

        def _stream(self, user: Viewer) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            client = server.subscribe(user)
            try:
                self.wfile.write(b"retry: 2000\n\n")
                while True:
                    try:
                        message = client.get(timeout=KEEPALIVE_S)
                    except queue.Empty:
                        message = ": keepalive\n\n"
                    if message is None:
                        break
                    self.wfile.write(message.encode("utf-8"))
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the browser went away
            finally:
                server.unsubscribe(client)

        def _json(self, status: int, body: dict[str, Any]) -> None:
            self._reply(status, json.dumps(body).encode("utf-8"), "application/json")

        def _reply(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler
