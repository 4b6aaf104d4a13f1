"""The ward view's HTTP rules, apart from what the server does with a request.

- :data:`SECURITY_HEADERS`: sent with every response (page, static files, JSON, event stream,
  errors): a Content-Security-Policy that allows only the server's own scripts, styles and
  connections and no framing, ``X-Frame-Options: DENY``, ``nosniff``, no referrer,
  ``Cache-Control: no-store``;
- :class:`HostRule`: the ``Host`` header must name this server (the bound address,
  ``localhost``, an IP address, or a name in ``dashboard.allowed_hosts``), which is what
  blocks DNS rebinding (a page of another site whose name was re-pointed at this server
  always sends its own name);
- :func:`check_headers` and :func:`body_length`: one ``Host``, no ``Transfer-Encoding``, and
  on a POST exactly one ``Content-Length``, a decimal integer of at most
  :data:`MAX_BODY_BYTES`; else :class:`RequestError` with the status and a message naming
  what was wrong;
- :class:`Deadlines`: a request must arrive whole within ``request_timeout_s`` (a socket
  timeout alone bounds each read, not a request sent one byte at a time);
- :class:`LimitedHTTPServer`: at most ``max_connections`` connections at once, and at most
  ``max_per_address`` of them from one client address (so one client cannot take every
  slot), TLS handshakes in the connection's thread (under its timeout, not in the accepting
  one), and a failed connection logged in one line.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("lungwatch.dashboard")

MAX_BODY_BYTES = 4096  # an acknowledge is about 100 bytes
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "media-src 'self'",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])  # fmt: skip
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")


class RequestError(Exception):
    """A request the server refuses before reading it further: HTTP ``status``, the text
    says what was wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def host_of(header: str) -> str:
    """The host of a ``Host`` header without its port, lower case: ``[::1]:8080`` -> ``::1``,
    ``Ward.Example:443`` -> ``ward.example``, ``localhost.`` -> ``localhost``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    if header.count(":") == 1:
        header = header.partition(":")[0]
    return header.rstrip(".")


class HostRule:
    """Which ``Host`` headers the server answers: the bound address, ``localhost``, any IP
    address (a DNS-rebinding page sends its own name, never an address) and ``names``."""

    def __init__(self, bound: str, names: tuple[str, ...]) -> None:
        self.names = {"localhost", *(n.lower().rstrip(".") for n in names)}
        if bound not in WILDCARD_ADDRESSES:
            self.names.add(bound.lower())

    def allows(self, host: str) -> bool:
        if host in self.names:
            return True
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True


def check_headers(headers: Message, hosts: HostRule) -> None:
    """One allowed ``Host`` and no ``Transfer-Encoding`` (every request); RequestError."""
    found = headers.get_all("Host") or []
    if len(found) != 1:
        raise RequestError(400, f"a request needs exactly one Host header, got {len(found)}")
    host = host_of(found[0])
    if not hosts.allows(host):
        shown = found[0][:100]
        raise RequestError(400, f"Host {shown!r} is not this server's (dashboard.allowed_hosts)")
    if headers.get("Transfer-Encoding") is not None:
        raise RequestError(501, "Transfer-Encoding is not supported: send a Content-Length")


def body_length(headers: Message, max_bytes: int = MAX_BODY_BYTES) -> int:
    """The ``Content-Length`` of a POST: exactly one header, a non-negative decimal integer,
    at most ``max_bytes`` (411 missing, 400 malformed or repeated, 413 too large)."""
    found = headers.get_all("Content-Length") or []
    if not found:
        raise RequestError(411, "a POST needs a Content-Length header")
    if len(found) > 1:
        raise RequestError(400, f"a request may have one Content-Length header, got {len(found)}")
    raw = found[0].strip()
    if not (raw.isascii() and raw.isdigit()):
        raise RequestError(400, f"Content-Length must be a non-negative integer, got {raw[:40]!r}")
    if len(raw) > 12 or int(raw) > max_bytes:
        raise RequestError(413, f"the body may be at most {max_bytes} bytes, got {raw[:40]}")
    return int(raw)


class Deadlines:
    """Connections whose request must be read by a time; :meth:`reap` (called often) shuts
    down the reading side of those past it (the thread reading gets the end of the stream, so
    a request sent slowly cannot hold it) and marks them :meth:`expired` (answered 408)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.reaped = 0
        self._due: dict[socket.socket, float] = {}
        self._expired: set[socket.socket] = set()
        self._lock = threading.Lock()

    def arm(self, sock: socket.socket, seconds: float) -> None:
        with self._lock:
            self._due[sock] = self.clock() + seconds

    def disarm(self, sock: socket.socket) -> None:
        with self._lock:
            self._due.pop(sock, None)

    def expired(self, sock: socket.socket) -> bool:
        """Whether ``sock`` was shut down for being late (forgotten: asked once)."""
        with self._lock:
            found = sock in self._expired
            self._expired.discard(sock)
            return found

    def reap(self) -> int:
        """Shut down every connection past its time; how many."""
        now = self.clock()
        with self._lock:
            late = [s for s, due in self._due.items() if due <= now]
            for sock in late:
                del self._due[sock]
            self._expired.update(late)
            self.reaped += len(late)  # counted before the shutdown its reader may see
        for sock in late:
            # the plain socket's shutdown, under a TLS one too: the reading thread gets EOF
            # and may still answer
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RD)
        return len(late)


class LimitedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server with at most ``max_connections`` open connections, at most
    ``max_per_address`` of them from one client address; a connection over either is closed
    at once (before any byte is read or a TLS handshake started), counted in
    :attr:`refused` and, for the per-address cap, in :attr:`refused_per_address` too;
    exceptions of one connection are logged in one line, not printed with a traceback."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_connections: int,
        max_per_address: int | None = None,
    ) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self.max_connections = max_connections
        self.max_per_address = min(max_per_address or max_connections, max_connections)
        self.refused = self.refused_per_address = 0
        self._open: dict[str, int] = {}  # client address -> its open connections
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        host = str(client_address[0])
        with self._open_lock:
            if self._open.get(host, 0) >= self.max_per_address:
                self.refused += 1
                self.refused_per_address += 1
                refusal = (
                    f"{self.max_per_address} open from it (dashboard.max_connections_per_address)"
                )
            elif not self._slots.acquire(blocking=False):
                self.refused += 1
                refusal = f"{self.max_connections} open (dashboard.max_connections)"
            else:
                refusal = None
                self._open[host] = self._open.get(host, 0) + 1
        if refusal is not None:
            log.warning("refused a connection from %s: %s", host, refusal)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(host)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(str(client_address[0]))

    def open_connections(self, host: str) -> int:
        """How many connections from ``host`` are open now."""
        with self._open_lock:
            return self._open.get(host, 0)

    def _release(self, host: str) -> None:
        with self._open_lock:
            left = self._open.get(host, 1) - 1
            if left > 0:
                self._open[host] = left
            else:
                self._open.pop(host, None)
        self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        log.info("connection from %s ended: %s: %s", client_address[0],
                 type(error).__name__, error)  # fmt: skip
