"""The ward view's web server: the page, a Server-Sent-Events stream of the ward, acknowledge.

    server = DashboardServer(DashboardConfig(port=0), mqtt_config, site="ward-1").start()
    print(server.url)          # http://127.0.0.1:PORT/
    ...
    server.stop()

Routes (standard library ``ThreadingHTTPServer``; every one needs a configured user's HTTP
Basic credentials when the config has users, none when it has none, which it only allows on
a loopback address; every request passes the rules of :mod:`edge.dashboard.web` first: an
allowed ``Host``, strict ``Content-Length``, a time limit; every response carries its
security headers; failed logins are bounded by :mod:`edge.dashboard.login`):

- ``GET /`` and ``GET /static/{app.js,style.css}``: the page (plain files in ``static/``);
- ``GET /events``: ``text/event-stream``; first ``event: snapshot`` (the whole ward and what the
  user may do), then ``event: update`` with what changed, at most every ``push_interval_s``,
  and ``event: heartbeat`` every ``heartbeat_interval_s`` (from the thread that pushes the
  updates, so a page that misses them knows its stream stopped);
- ``GET /api/state``: the snapshot as JSON;
- ``GET /api/evidence/<episode>[.flac|.png]`` and ``GET /api/trend/<device>/<bed>?hours=N``:
  an event's audio, picture and description, a bed's history (:mod:`edge.dashboard.
  evidence_api`; the evidence needs a named user);
- ``POST /api/acknowledge`` with ``{"device_id", "stream_id", "target"}`` (JSON): needs the
  ``ack`` role (else 403, nothing published), an alarm condition of that bed that ``target``
  names (the condition, e.g. ``CAS`` or ``apnoea``, or an open episode's key or type; else
  409); publishes the command on the device's ``command`` topic (QoS 1, PUBACK awaited) and
  answers 202. The condition is acknowledged (quiet) at once; its latched episodes show
  "waiting for the device" until their ``ended`` comes back.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import math
import queue
import secrets
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from edge.commandauth import read_key
from edge.dashboard.config import DashboardConfig
from edge.dashboard.evidence_api import EvidencePages
from edge.dashboard.feed import FeedError, WardFeed
from edge.dashboard.history import History
from edge.dashboard.login import LoginLimitedError, Logins
from edge.dashboard.ward import Ward
from edge.dashboard.web import (
    SECURITY_HEADERS,
    Deadlines,
    HostRule,
    LimitedHTTPServer,
    RequestError,
    body_length,
    check_headers,
)
from edge.errors import LungwatchError
from edge.events import is_segment
from edge.sinks.mqtt import MqttConfig
from lungwatch.hosts import is_loopback

ALARMS_PUSH_S = 1.0  # the alarm list goes to the browsers at most this often

log = logging.getLogger("lungwatch.dashboard")

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
CLIENT_QUEUE = 1000  # updates waiting for a slow browser before it is dropped (it reconnects)
HEARTBEATS_MISSED = 3  # the page reconnects after this many heartbeat intervals of silence
AUTH_CACHE = 1000  # verified credentials remembered (PBKDF2 once per credential)
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

    def __init__(
        self,
        config: DashboardConfig,
        mqtt: MqttConfig,
        site: str,
        command_master_key: bytes | None = None,
    ) -> None:
        """``command_master_key`` (else ``config.command_key_file``'s) signs each acknowledge
        command for its device (edge.commandauth); with neither, commands go unsigned."""
        self.config, self.site = config, site
        if command_master_key is None and config.command_key_file is not None:
            command_master_key = read_key(config.command_key_file)
        self.history = None
        if config.history_path is not None:
            self.history = History(config.history_path, config.history_days,
                                   config.evidence_max_mb, site=site,
                                   on_failure=lambda why: self.ward.store_failed(why))  # fmt: skip
        self.ward = Ward(site, config.events_per_bed, config.live_points,
                         verdict_alarms=config.alarm_verdicts,
                         verdict_priority=config.verdict_priority,
                         max_message_bytes=config.max_message_bytes,
                         max_json_depth=config.max_json_depth,
                         stale_after_s=config.stale_after_s,
                         probing=config.probe_interval_s > 0,
                         max_devices=config.max_devices,
                         max_beds_per_device=config.max_beds_per_device,
                         max_open_episodes_per_bed=config.max_open_episodes_per_bed,
                         alarm_settings=config.alarms,
                         alarms_every_s=ALARMS_PUSH_S,
                         history=self.history)  # fmt: skip
        if self.history is not None:
            self.ward.restore(self.history.restore())
        client_id = None
        if config.persistent_session:
            # unguessable without the view's password (no device can take the session over)
            client_id = config.client_id or f"lungwatch-dashboard-{site}{mqtt.private_suffix()}"
        self.feed = WardFeed(mqtt, site, self.ward, command_master_key, client_id)
        self.evidence = EvidencePages(self.history)
        self.logins = (
            Logins(config.users, config.login_max_failures, config.login_window_s)
            if config.users
            else None
        )
        self.hosts = HostRule(config.host, config.allowed_hosts)
        self.deadlines = Deadlines()
        self._clients: set[queue.Queue[str | None]] = set()
        self._stop = threading.Event()
        self._auth_key = secrets.token_bytes(32)
        self._auth_cache: dict[bytes, Viewer] = {}
        self._httpd = LimitedHTTPServer(
            (config.host, config.port),
            _handler_class(self),
            config.max_connections,
            config.max_connections_per_address,
        )
        if config.cert_file is not None:
            self._httpd.socket = self._tls_socket(config)
        self._threads: list[threading.Thread] = []

    def _tls_socket(self, config: DashboardConfig) -> ssl.SSLSocket:
        """The listening socket under TLS; each handshake runs in its connection's thread,
        under the request timeout (never in the thread that accepts)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(config.cert_file, config.key_file)  # type: ignore[arg-type]
        except (OSError, ssl.SSLError) as exc:
            self._httpd.server_close()
            raise DashboardError(f"dashboard.cert_file / key_file: {exc}") from None
        return context.wrap_socket(
            self._httpd.socket, server_side=True, do_handshake_on_connect=False
        )

    @property
    def http_server(self) -> LimitedHTTPServer:
        """The HTTP server (its connection counts: ``refused``, ``refused_per_address``)."""
        return self._httpd

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
        if self.history is not None:
            self.history.close()

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
            snapshot["user"] = {"name": user.name, "can_acknowledge": user.can_acknowledge,
                                "can_listen": self.logins is not None}  # fmt: skip
            snapshot["heartbeat_s"] = self.config.heartbeat_interval_s
            client.put_nowait(_sse("snapshot", snapshot))
            self._clients.add(client)
        return client

    def unsubscribe(self, client: queue.Queue[str | None]) -> None:
        with self.ward.lock:
            self._clients.discard(client)

    def _push(self) -> None:
        """Every ``push_interval_s``: the changes to every browser; the liveness checks, the
        broker probe and the heartbeats when due; slow requests shut down."""
        cfg = self.config
        next_beat_s = next_probe_s = time.monotonic()
        failed = ""
        while not self._stop.wait(cfg.push_interval_s):
            now_s = time.monotonic()
            try:
                self.deadlines.reap()
                if cfg.probe_interval_s > 0 and now_s >= next_probe_s:
                    self.feed.probe()
                    next_probe_s = now_s + cfg.probe_interval_s
                with self.ward.lock:
                    self.ward.check_liveness()
                    changes = self.ward.take_changes()
                    if changes is not None:
                        self._send(_sse("update", changes))
                    if now_s >= next_beat_s:
                        self._send(_sse("heartbeat", {}))
                        next_beat_s = now_s + cfg.heartbeat_interval_s
                failed = ""
            except Exception as exc:  # the pages' only feed: it must not die; said once
                why = f"{type(exc).__name__}: {exc}"
                if why != failed:
                    log.exception("pushing to the pages failed")
                    self.ward.store_failed(f"pushing to the pages failed: {why}", "push_error")
                failed = why

    def _send(self, message: str) -> None:
        """``message`` to every browser (called under the ward's lock)."""
        for client in list(self._clients):
            try:
                client.put_nowait(message)
            except queue.Full:  # the browser stopped reading; it reconnects
                log.warning("dropping a browser that fell %d updates behind", CLIENT_QUEUE)
                self._clients.discard(client)

    # -- rights ------------------------------------------------------------------------
    def authenticate(self, header: str | None, address: str = "") -> Viewer | None:
        """Who sent ``Authorization: Basic ...`` from ``address`` (:data:`LOCAL_VIEWER`
        without users); None: no or wrong credentials; :class:`LoginLimitedError` after too
        many failures of the name or the address (:mod:`edge.dashboard.login`)."""
        if self.logins is None:
            return LOCAL_VIEWER
        if not header or not header.startswith("Basic "):
            return None
        cache_key = hmac.new(self._auth_key, header.encode(), hashlib.sha256).digest()
        if cache_key in self._auth_cache:  # PBKDF2 is slow on purpose: once per credential
            return self._auth_cache[cache_key]
        try:
            name, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            name, password = "", ""  # checked like any wrong password: counted, same time
        user = self.logins.check(name, password, address)
        if user is None:
            return None
        viewer = Viewer(user.name, user.can_acknowledge)
        if len(self._auth_cache) >= AUTH_CACHE:
            self._auth_cache.clear()
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
        if not self.ward.acknowledgeable(device_id, stream_id, target):
            return 409, {"error": f"no alarm {target!r} on {device_id}/{stream_id}"}
        refusal = self.ward.ack_refusal(device_id, self.feed.signs)
        if refusal is not None:  # the device said it would not take it: say why, now
            log.warning("acknowledge by %s not sent: %s", user.name, refusal)
            return 409, {"error": refusal}
        try:
            topic = self.feed.acknowledge(device_id, stream_id, target, user.name)
        except FeedError as exc:
            return 503, {"error": str(exc)}
        self.ward.acknowledge_sent(device_id, stream_id, target, user.name)
        log.info("acknowledge by %s: %s/%s %r (%s)", user.name, device_id, stream_id, target, topic)
        return 202, {"published": topic, "target": target}


def _sse(kind: str, body: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"


def _handler_class(server: DashboardServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "lungwatch-dashboard"
        sys_version = ""
        timeout = server.config.request_timeout_s  # each read and write of the connection

        def setup(self) -> None:
            super().setup()
            server.deadlines.arm(self.connection, server.config.request_timeout_s)

        def finish(self) -> None:
            server.deadlines.disarm(self.connection)
            server.deadlines.expired(self.connection)
            with contextlib.suppress(OSError):
                super().finish()

        def parse_request(self) -> bool:
            """The request line and headers, then :func:`~edge.dashboard.web.check_headers`
            (an allowed Host, no Transfer-Encoding); False: answered with the error."""
            if not super().parse_request():
                return False
            try:
                self._in_time()
                check_headers(self.headers, server.hosts)
            except RequestError as exc:
                self._json(exc.status, {"error": str(exc)})
                return False
            return True

        def end_headers(self) -> None:
            for name, value in SECURITY_HEADERS:
                self.send_header(name, value)
            super().end_headers()

        def do_GET(self) -> None:
            server.deadlines.disarm(self.connection)  # the whole request is in
            user = self._user()
            if user is None:
                return
            path, _, query = self.path.partition("?")
            named = server.logins is not None  # a configured user, not the loopback demo
            reply = server.evidence.get(path, query, named)
            if reply is not None:
                self._reply(*reply)
            elif path in STATIC_FILES:
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
            try:
                raw = self._read_body()
            except RequestError as exc:
                self._json(exc.status, {"error": str(exc)})
                return
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
            self._json(*server.acknowledge(user, _json_object(raw)))

        def _read_body(self) -> bytes:
            """The whole body, by a strict Content-Length, within the request's time."""
            length = body_length(self.headers)
            try:
                raw = self.rfile.read(length)
            except TimeoutError:
                raw = None
            server.deadlines.disarm(self.connection)
            self._in_time(raw is None)
            if raw is None or len(raw) != length:
                got = 0 if raw is None else len(raw)
                raise RequestError(400, f"the body ended after {got} of {length} bytes")
            return raw

        def _in_time(self, timed_out: bool = False) -> None:
            """RequestError 408 when the request was not read within request_timeout_s."""
            if server.deadlines.expired(self.connection) or timed_out:
                limit = f"{server.config.request_timeout_s:g} s"
                raise RequestError(408, f"the request did not arrive within {limit}")

        def _user(self) -> Viewer | None:
            try:
                user = server.authenticate(
                    self.headers.get("Authorization"), self.client_address[0]
                )
            except LoginLimitedError as exc:
                self.send_response(429)
                self.send_header("Retry-After", str(math.ceil(exc.retry_after_s)))
                data = json.dumps({"error": str(exc)}).encode("utf-8")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self._write(data)
                return None
            if user is None:
                self.send_response(401)
                self.send_header("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')
                self.send_header("Content-Length", "0")
                self.end_headers()
            return user

        def _stream(self, user: Viewer) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.end_headers()
            client = server.subscribe(user)
            # heartbeat intervals without a message: this browser was dropped as too slow, or
            # nothing pushes; the stream ends and the page opens a new one (a fresh snapshot)
            quiet = 0
            try:
                self.wfile.write(b"retry: 2000\n\n")
                while quiet < HEARTBEATS_MISSED:
                    try:
                        message = client.get(timeout=server.config.heartbeat_interval_s)
                    except queue.Empty:
                        quiet += 1
                        continue
                    if message is None:
                        break
                    quiet = 0
                    self.wfile.write(message.encode("utf-8"))  # within request_timeout_s
                    self.wfile.flush()
            except OSError:
                pass  # the browser went away, or stopped reading for request_timeout_s
            finally:
                server.unsubscribe(client)

        def _json(self, status: int, body: dict[str, Any]) -> None:
            self._reply(status, json.dumps(body).encode("utf-8"), "application/json")

        def _reply(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self._write(data)

        def _write(self, data: bytes) -> None:
            with contextlib.suppress(OSError):
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


def _json_object(raw: bytes) -> dict[str, Any]:
    """The JSON object in an acknowledge body, else {} (refused by its checks)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return body if isinstance(body, dict) else {}
