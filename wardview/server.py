"""The ward view's web server: the page, a Server-Sent-Events stream of the ward, acknowledge
(docs/dashboard.md, "Architecture, and why" and "Access"; evidence and trend: docs/evidence.md).
Starlette on uvicorn, on a thread of its own; every request passes :mod:`wardview.web`'s rules
and, when the config has users, their HTTP Basic login (:mod:`wardview.login`)."""

from __future__ import annotations

import asyncio
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
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from lungwatch.commandauth import read_key
from lungwatch.config import from_mapping
from lungwatch.errors import LungwatchError
from lungwatch.events import is_segment
from lungwatch.hosts import is_loopback
from lungwatch.mqtt import MqttConfig
from lungwatch.supervision import ThreadStoppedError, Worker, first_failure
from wardview.beds import PAGE_CLASSES
from wardview.config import DashboardConfig, DashboardFile
from wardview.evidence_api import EvidencePages
from wardview.feed import FeedError, WardFeed
from wardview.history import History
from wardview.login import LoginLimitedError, Logins
from wardview.ward import Ward
from wardview.web import (
    SECURITY_HEADERS,
    Connections,
    HostRule,
    RequestError,
    body_length,
    check_headers,
    guarded_protocol,
    header_values,
)

ALARMS_PUSH_S = 1.0  # the alarm list goes to the browsers at most this often

log = logging.getLogger("lungwatch.dashboard")

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
GRACEFUL_STOP_S = 5.0  # open requests finish within this on stop, then they are cancelled
CLIENT_QUEUE = 1000  # updates waiting for a slow browser before it is dropped (it reconnects)
HEARTBEATS_MISSED = 3  # the page reconnects after this many heartbeat intervals of silence
AUTH_CACHE = 1000  # verified credentials remembered (PBKDF2 once per credential)
REALM = "lungwatch ward view"


class DashboardError(LungwatchError):
    """The dashboard cannot start (the message says why)."""


@dataclass(frozen=True)
class Viewer:
    name: str
    can_acknowledge: bool


LOCAL_VIEWER = Viewer("local", can_acknowledge=True)  # no users: anyone on loopback (the demo)


class DashboardServer:
    def __init__(
        self,
        config: DashboardConfig,
        mqtt: MqttConfig,
        site: str,
        command_master_key: bytes | None = None,
    ) -> None:
        self.config, self.site = config, site
        if command_master_key is None and config.command_key_file is not None:
            command_master_key = read_key(config.command_key_file)
        self.history = None
        if config.history_path is not None:
            self.history = History(config.history_path, config.history_days,
                                   config.evidence_max_mb, site=site,
                                   on_failure=lambda why: self.ward.store_failed(why))  # fmt: skip
        self.ward = Ward(site, config, history=self.history, alarms_every_s=ALARMS_PUSH_S)
        if self.history is not None:
            self.ward.restore(self.history.restore())
        client_id = None
        if config.persistent_session:
            # unguessable without the view's password (no device can take the session over)
            client_id = config.client_id or f"lungwatch-dashboard-{site}{mqtt.private_suffix()}"
        self.feed = WardFeed(mqtt, site, self.ward, command_master_key, client_id)
        self.evidence = EvidencePages(self.history)
        self.logins = None
        if config.users:
            self.logins = Logins(config.users, config.login_max_failures, config.login_window_s)
        self.hosts = HostRule(config.host, config.allowed_hosts)
        self.connections = Connections(config.max_connections, config.max_connections_per_address,
                                       config.allowed_clients)  # fmt: skip
        self._clients: set[Browser] = set()
        self._stop = threading.Event()
        self._supervising = threading.Lock()
        self._auth_key = secrets.token_bytes(32)
        self._auth_cache: dict[bytes, Viewer] = {}
        self._socket = _listen(config.host, config.port)
        self._address = self._socket.getsockname()[:2]
        tls = None
        if config.cert_file is not None:  # handshakes run on the loop, bounded by asyncio's timeout
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                tls.load_cert_chain(config.cert_file, config.key_file)
            except (OSError, ssl.SSLError) as exc:
                self._socket.close()
                raise DashboardError(f"dashboard.cert_file / key_file: {exc}") from None
        self._uvicorn = uvicorn.Server(
            uvicorn.Config(
                Starlette(routes=_routes(self), middleware=[Middleware(Guard, server=self)]),
                http=guarded_protocol(self.connections, config.request_timeout_s),
                ws="none", lifespan="off", loop="asyncio", interface="asgi3",
                log_config=None, log_level="warning", access_log=False,
                server_header=False, headers=list(SECURITY_HEADERS),
                proxy_headers=False, timeout_keep_alive=max(1, int(config.request_timeout_s)),
                timeout_graceful_shutdown=int(GRACEFUL_STOP_S),
                ssl_context_factory=None if tls is None else (lambda _config, _default: tls),
                backlog=config.max_connections,
            )
        )  # fmt: skip
        self._uvicorn.config.load()
        self._web = Worker(self._serve, "lungwatch-dashboard-http", self._stop.is_set)
        self._pusher = Worker(self._push, "lungwatch-dashboard-push", self._stop.is_set)

    @property
    def url(self) -> str:
        host, port = str(self._address[0]), int(self._address[1])
        shown = f"[{host}]" if ":" in host else host
        scheme = "https" if self.config.uses_tls else "http"
        return f"{scheme}://{shown}:{port}/"

    def describe(self) -> str:
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
        self._web.start()
        deadline_s = time.monotonic() + 10.0
        while not self._uvicorn.started and self._web.is_alive() and time.monotonic() < deadline_s:
            time.sleep(0.01)
        if not self._uvicorn.started:
            self.stop()
            raise DashboardError(f"dashboard: the web server did not start on {self.url}")
        self._pusher.start()
        log.info("%s", self.describe())
        return self

    def _serve(self) -> None:
        self._uvicorn.run(sockets=[self._socket])

    def failure(self) -> str | None:
        """Why the view cannot go on (None: it can): its web server or push thread stopped,
        or its history writer stopped once too often (else it is started again here)."""
        if self.history is not None:
            with self._supervising:  # one restart, whichever thread sees it first
                why = self.history.supervise()
            if why is not None:
                self.ward.thread_failed("history", why)
                if not why.endswith("started again"):
                    return why
        return first_failure([self._web.failure, self._pusher.failure])

    def serve_until(self, stop: threading.Event, every_s: float = 1.0) -> None:
        """Watch the view until ``stop`` is set; ThreadStoppedError when it cannot go on."""
        while not stop.wait(every_s):
            why = self.failure()
            if why is not None:
                raise ThreadStoppedError(f"the ward view stops: {why}")

    def stop(self) -> None:
        """Close the browsers' streams, the web server and the MQTT feed (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        with self.ward.lock:
            for client in self._clients:
                with contextlib.suppress(queue.Full):  # fell behind: dropped, ends anyway
                    client.put(None)
        self._uvicorn.should_exit = True
        for worker in (self._web, self._pusher):
            worker.join(timeout=GRACEFUL_STOP_S + 5.0)
        with contextlib.suppress(OSError):
            self._socket.close()
        self.feed.stop()
        if self.history is not None:
            self.ward.save_alarms()  # the list as it is now: a restart lists it again
            self.history.close()

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def subscribe(self, user: Viewer, loop: asyncio.AbstractEventLoop) -> Browser:
        """A browser's queue, starting with the snapshot (taken under the ward's lock, so no
        change is lost or repeated between the snapshot and the first update)."""
        client = Browser(loop)
        with self.ward.lock:
            snapshot = self.ward.snapshot()
            snapshot["user"] = {"name": user.name, "can_acknowledge": user.can_acknowledge,
                                "can_listen": self.logins is not None}  # fmt: skip
            snapshot["heartbeat_s"] = self.config.heartbeat_interval_s
            snapshot["audio_pause_s"] = self.config.audio_pause_s
            snapshot["classes"] = PAGE_CLASSES
            client.put(_sse("snapshot", snapshot))
            self._clients.add(client)
        return client

    def unsubscribe(self, client: Browser) -> None:
        with self.ward.lock:
            self._clients.discard(client)

    def _push(self) -> None:
        """Every ``push_interval_s``: changes to the browsers; liveness, probe, heartbeats."""
        cfg = self.config
        next_beat_s = next_probe_s = time.monotonic()
        failed = ""
        while not self._stop.wait(cfg.push_interval_s):
            now_s = time.monotonic()
            try:
                if self.history is not None:
                    self.failure()  # a stopped history writer: shown, started again
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
        """Called under the ward's lock."""
        for client in list(self._clients):
            try:
                client.put(message)
            except queue.Full:  # the browser stopped reading; it reconnects
                log.warning("dropping a browser that fell %d updates behind", CLIENT_QUEUE)
                self._clients.discard(client)

    def authenticate(self, header: str | None, address: str = "") -> Viewer | None:
        """Who sent ``Authorization: Basic ...`` (:data:`LOCAL_VIEWER` without users); None:
        no or wrong credentials; :class:`LoginLimitedError` after too many failures."""
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
        if not user.can_acknowledge:
            log.warning("acknowledge refused: user %r has the view right only", user.name)
            return 403, {"error": f"user {user.name!r} may view but not acknowledge"}
        keys = ("device_id", "stream_id", "target")
        given = sorted(set(body) - {"raised_utc"})
        if given != sorted(keys) or not all(isinstance(v, str) for v in body.values()):
            return 400, {"error": f"body must be a JSON object of strings {', '.join(keys)} "
                                  "(and raised_utc)"}  # fmt: skip
        device_id, stream_id, target = (body[k] for k in keys)
        if not (is_segment(device_id) and is_segment(stream_id) and target):
            return 400, {"error": "device_id, stream_id: topic segments; target: non-empty"}
        if not self.ward.acknowledgeable(device_id, stream_id, target):
            return 409, {"error": f"no alarm {target!r} on {device_id}/{stream_id}"}
        shown = body.get("raised_utc")
        if shown and not self.ward.still_shown(device_id, stream_id, target, shown):
            return 409, {"error": f"the alarm {target!r} on {device_id}/{stream_id} started "
                                  "again since the page showed it: look at it again"}  # fmt: skip
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


class Browser:
    """One browser's event stream: messages from the push thread, read on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.messages: queue.Queue[str | None] = queue.Queue(CLIENT_QUEUE)
        self.ready = asyncio.Event()  # set (on the loop) when a message waits

    def put(self, message: str | None) -> None:
        """From any thread; queue.Full when the browser fell :data:`CLIENT_QUEUE` behind."""
        self.messages.put_nowait(message)
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody reads any more
            self.loop.call_soon_threadsafe(self.ready.set)

    def take(self) -> list[str | None]:
        taken = []
        with contextlib.suppress(queue.Empty):
            while True:
                taken.append(self.messages.get_nowait())
        return taken


def _listen(host: str, port: int) -> socket.socket:
    """The page's listening socket (bound here, so a port in use is one line at start)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise DashboardError(f"dashboard: cannot listen on {host}:{port}: {exc.strerror}") from None


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status, headers, media_type="application/json")


class Guard:
    """The :mod:`wardview.web` checks before any route; a refusal closes the connection unread."""

    def __init__(self, app: ASGIApp, server: DashboardServer) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                check_headers(scope["headers"], self.server.hosts)
                if scope["method"] == "POST":
                    body_length(scope["headers"])
            except RequestError as exc:
                refusal = _json(exc.status, {"error": str(exc)}, {"Connection": "close"})
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _routes(server: DashboardServer) -> list[Route]:

    async def viewer(request: Request) -> Viewer | Response:
        """Who asks (PBKDF2 and the login bounds on a worker thread), else the refusal."""
        address = request.client.host if request.client else ""
        header = request.headers.get("authorization")
        try:
            user = await run_in_threadpool(server.authenticate, header, address)
        except LoginLimitedError as exc:
            retry = {"Retry-After": str(math.ceil(exc.retry_after_s))}
            return _json(429, {"error": str(exc)}, retry)
        if user is None:
            challenge = f'Basic realm="{REALM}", charset="UTF-8"'
            return Response(b"", 401, {"WWW-Authenticate": challenge})
        return user

    def page(user: Viewer, path: str, query: str) -> Response:
        named = server.logins is not None  # a configured user, not the loopback demo
        reply = server.evidence.get(path, query, named)
        if reply is not None:
            status, data, content_type = reply
            return Response(data, status, media_type=content_type)
        if path in STATIC_FILES:
            name, content_type = STATIC_FILES[path]
            return Response((STATIC_DIR / name).read_bytes(), media_type=content_type)
        if path == "/favicon.ico":
            return Response(b"", 204, media_type="image/x-icon")
        if path == "/api/state":
            return _json(200, server.ward.snapshot())
        return _json(404, {"error": f"no such page: {path}"})

    async def get(request: Request) -> Response:
        user = await viewer(request)
        if isinstance(user, Response):
            return user
        path = request.scope["raw_path"].decode("latin-1")  # as sent, not unquoted
        query = request.scope["query_string"].decode("latin-1")
        if path == "/events":
            client = await run_in_threadpool(server.subscribe, user, asyncio.get_running_loop())
            return StreamingResponse(stream(client), media_type="text/event-stream; charset=utf-8")
        return await run_in_threadpool(page, user, path, query)

    async def stream(client: Browser) -> AsyncIterator[bytes]:
        quiet = 0
        try:
            yield b"retry: 2000\n\n"
            while quiet < HEARTBEATS_MISSED:
                client.ready.clear()
                messages = client.take()
                if not messages:
                    try:
                        await asyncio.wait_for(client.ready.wait(),
                                               server.config.heartbeat_interval_s)  # fmt: skip
                    except TimeoutError:
                        quiet += 1
                    continue
                quiet = 0
                text = "".join(m for m in messages if m is not None)
                if text:
                    yield text.encode("utf-8")
                if None in messages:  # the server stops
                    return
        finally:  # no await here: a cancelled stream still lets go of its queue
            server.unsubscribe(client)

    async def post(request: Request) -> Response:
        length = body_length(request.scope["headers"])  # checked by the Guard already
        try:
            raw = await request.body()
        except ClientDisconnect:
            raw = b""
        if len(raw) != length:
            got = f"the body ended after {len(raw)} of {length} bytes"
            return _json(400, {"error": got}, {"Connection": "close"})
        user = await viewer(request)
        if isinstance(user, Response):
            return user
        path = request.scope["raw_path"].decode("latin-1")
        if path != "/api/acknowledge":
            return _json(404, {"error": f"no such action: {path}"})
        origin = request.headers.get("origin")
        host = header_values(request.scope["headers"], "host")[0]
        scheme = "https" if server.config.uses_tls else "http"
        if origin is not None and origin != f"{scheme}://{host}":  # another site's form
            return _json(403, {"error": f"cross-origin request from {origin} refused"})
        content_type = request.headers.get("content-type", "").partition(";")[0]
        if content_type.strip().lower() != "application/json":
            return _json(415, {"error": "send the acknowledge as application/json"})
        status, reply = await run_in_threadpool(server.acknowledge, user, _json_object(raw))
        return _json(status, reply)

    return [Route("/{path:path}", get, methods=["GET"]),
            Route("/{path:path}", post, methods=["POST"])]  # fmt: skip


def _json_object(raw: bytes) -> dict[str, Any]:
    """The JSON object in an acknowledge body, else {} (refused by its checks)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return body if isinstance(body, dict) else {}


class HostConfig(Protocol):
    """What :func:`serve_beside` reads of a device's runtime config (``RuntimeConfig``)."""

    @property
    def site(self) -> str: ...

    @property
    def dashboard(self) -> Mapping[str, Any]: ...

    @property
    def mqtt_config(self) -> MqttConfig: ...


def serve_beside(
    config: HostConfig,
    broker_address: str | None,
    resources: contextlib.ExitStack,
    command_master_key: bytes | None = None,
    source: str = "<config>",
) -> DashboardServer | None:
    """Serve the view beside a device's runtime if enabled (``dashboard`` is checked anyway)."""
    sections = from_mapping(DashboardFile, {"dashboard": config.dashboard}, source=source)
    if not sections.dashboard.enabled:
        return None
    mqtt = config.mqtt_config.at(broker_address)
    server = DashboardServer(sections.dashboard, mqtt, config.site, command_master_key).start()
    resources.callback(server.stop)
    print(server.describe(), flush=True)
    return server
