"""The ward view's HTTP rules (docs/dashboard.md, "Hardening": the limits and why;
docs/security.md: what uvicorn lacks). :data:`SECURITY_HEADERS` go with every response."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import threading

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

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
MALFORMED = (
    "the request is not valid HTTP/1.1 (its request line, a header or its Content-Length is "
    "malformed, or its headers are too large)"
)  # what the HTTP parser itself refuses (h11), answered 400


class RequestError(Exception):
    """A request refused before it is read further, with its HTTP ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def host_of(header: str) -> str:
    """``[::1]:8080`` -> ``::1``, ``Ward.Example.:443`` -> ``ward.example``."""
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


Headers = list[tuple[bytes, bytes]]  # an ASGI request's headers: lower-case names, raw bytes


def header_values(headers: Headers, name: str) -> list[str]:
    """Every value of header ``name`` (lower case) in an ASGI header list, as text."""
    key = name.encode("ascii")
    return [value.decode("latin-1") for found, value in headers if found == key]


def check_headers(headers: Headers, hosts: HostRule) -> None:
    """One allowed ``Host`` and no ``Transfer-Encoding`` (every request); RequestError."""
    found = header_values(headers, "host")
    if len(found) != 1:
        raise RequestError(400, f"a request needs exactly one Host header, got {len(found)}")
    if not hosts.allows(host_of(found[0])):
        shown = found[0][:100]
        raise RequestError(400, f"Host {shown!r} is not this server's (dashboard.allowed_hosts)")
    if header_values(headers, "transfer-encoding"):
        raise RequestError(501, "Transfer-Encoding is not supported: send a Content-Length")


def body_length(headers: Headers, max_bytes: int = MAX_BODY_BYTES) -> int:
    """The ``Content-Length`` of a POST: exactly one header, a non-negative decimal integer,
    at most ``max_bytes`` (411 missing, 400 malformed or repeated, 413 too large)."""
    found = header_values(headers, "content-length")
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


class Connections:
    """Used from the server's event loop only; the counters are read from anywhere."""

    def __init__(
        self,
        max_connections: int,
        max_per_address: int | None = None,
        allowed: tuple[str, ...] = (),
    ) -> None:
        self.max_connections = max_connections
        self.max_per_address = min(max_per_address or max_connections, max_connections)
        self.allowed = tuple(ipaddress.ip_network(net, strict=False) for net in allowed)
        self.refused = self.refused_per_address = self.reaped = self.stalled = 0
        self.refused_not_allowed = 0
        self._open: dict[str, int] = {}  # client address -> its open connections
        self._lock = threading.Lock()

    def admit(self, host: str) -> str | None:
        """Count a new connection from ``host``; else why it is refused."""
        with self._lock:
            if self.allowed and not _within(host, self.allowed):
                self.refused += 1
                self.refused_not_allowed += 1
                return "not an allowed client address (dashboard.allowed_clients)"
            if self._open.get(host, 0) >= self.max_per_address:
                self.refused += 1
                self.refused_per_address += 1
                limit = "dashboard.max_connections_per_address"
                return f"{self.max_per_address} open from it ({limit})"
            if sum(self._open.values()) >= self.max_connections:
                self.refused += 1
                return f"{self.max_connections} open (dashboard.max_connections)"
            self._open[host] = self._open.get(host, 0) + 1
            return None

    def release(self, host: str) -> None:
        with self._lock:
            left = self._open.get(host, 1) - 1
            if left > 0:
                self._open[host] = left
            else:
                self._open.pop(host, None)

    def open_connections(self, host: str | None = None) -> int:
        with self._lock:
            return sum(self._open.values()) if host is None else self._open.get(host, 0)


def _within(host: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    """``host`` (an IP address; an IPv4 one mapped into IPv6 as itself) is in a network."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    address = getattr(address, "ipv4_mapped", None) or address
    return any(address in network for network in networks if address.version == network.version)


def guarded_protocol(connections: Connections, request_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the caps of ``connections``, a whole-request and a write
    deadline, a half-closed request answered, and its own refusals in JSON with the security
    headers. H11Protocol is private to uvicorn: pyproject.toml pins uvicorn's minor version."""

    class GuardedProtocol(H11Protocol):
        _host = ""
        _admitted = False
        _deadline: asyncio.TimerHandle | None = None
        _write_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._host = str(self.client[0]) if self.client else ""
            refusal = connections.admit(self._host)
            if refusal is not None:
                log.warning("refused a connection from %s: %s", self._host, refusal)
                transport.abort()  # unanswered, nothing read
                return
            self._admitted = True
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._write_deadline is not None:
                self._write_deadline.cancel()
            if self._admitted:
                self._admitted = False
                connections.release(self._host)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if not self._admitted:
                return
            if self._deadline is None and self.conn.their_state is h11.IDLE:
                self._arm()  # the first byte of the next request on a kept-alive connection
            super().data_received(data)
            if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE):
                self._disarm()  # the whole request is in

        def eof_received(self) -> bool:  # type: ignore[override]
            """The client ended its side: a request in progress is answered from what came
            (checked against its Content-Length), then the connection closes."""
            cycle = self.cycle
            if cycle is None or cycle.response_complete:
                return False
            cycle.keep_alive = False
            if cycle.more_body:
                cycle.more_body = False
                cycle.message_event.set()
            return True

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._write_deadline is None:
                self._write_deadline = self.loop.call_later(request_timeout_s, self._stalled)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._write_deadline is not None:
                self._write_deadline.cancel()
                self._write_deadline = None

        def send_400_response(self, msg: str) -> None:
            body = json.dumps({"error": MALFORMED}).encode("utf-8")
            security = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS]
            headers = [(b"content-type", b"application/json"), (b"connection", b"close"), *security]
            with contextlib.suppress(h11.LocalProtocolError):
                for event in (h11.Response(status_code=400, headers=headers),
                              h11.Data(data=body), h11.EndOfMessage()):  # fmt: skip
                    self.transport.write(self.conn.send(event) or b"")
            self.transport.close()

        def _arm(self) -> None:
            self._deadline = self.loop.call_later(request_timeout_s, self._late)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _late(self) -> None:
            self._deadline = None
            connections.reaped += 1
            self._cut_off("its request did not arrive within")

        def _stalled(self) -> None:
            self._write_deadline = None
            connections.stalled += 1
            self._cut_off("it read nothing for")

        def _cut_off(self, why: str) -> None:
            log.info("closed a connection from %s: %s %g s", self._host, why, request_timeout_s)
            self.transport.abort()

    return GuardedProtocol
