"""Receiving transports: UDP, TCP (with reconnect and backoff) and USB serial (pyserial).

Each has ``receive(timeout_s) -> Received | None`` (None: nothing within the timeout;
``timeout_s=0`` never blocks) and ``close()``. A dropped TCP connection or an unplugged serial
device is a :class:`Received` with ``link=LINK_DOWN``; the next calls retry with exponential
backoff and report ``LINK_UP`` once the link is back."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any, Protocol

from firmware_bridge.errors import TransportError
from firmware_bridge.urls import LinkUrl

LINK_DOWN, LINK_UP = "down", "up"
UDP_RECEIVE_BUFFER_BYTES = 4 << 20  # asked of the kernel (it may cap it at rmem_max)
MAX_DATAGRAM_BYTES = 65535
TCP_READ_BYTES = 1 << 16
PYSERIAL_HINT = "the serial transport needs pyserial: pip install pyserial (or 'lungwatch[serial]')"


@dataclass(frozen=True)
class Received:
    data: bytes = b""
    datagram: bool = False  # data is one whole datagram
    link: str | None = None  # LINK_DOWN or LINK_UP when the link changed


class Transport(Protocol):
    name: str

    def receive(self, timeout_s: float) -> Received | None: ...

    def close(self) -> None: ...


class Backoff:
    """Reconnect delays: ``initial_s``, doubling up to ``max_s``; ``reset()`` after success."""

    def __init__(self, initial_s: float = 0.05, max_s: float = 5.0) -> None:
        self.initial_s, self.max_s = initial_s, max_s
        self._delay_s = initial_s

    def next_delay_s(self) -> float:
        delay_s, self._delay_s = self._delay_s, min(self._delay_s * 2.0, self.max_s)
        return delay_s

    def reset(self) -> None:
        self._delay_s = self.initial_s


class UdpTransport:
    """Datagrams from any sender, bound to HOST:PORT (port 0: a free port, see :attr:`address`)."""

    def __init__(self, host: str, port: int) -> None:
        self.name = f"udp://{host}:{port}"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER_BYTES)
            self._sock.bind((host, port))
        except OSError as exc:
            self._sock.close()
            raise TransportError(f"{self.name}: cannot bind ({exc.strerror or exc})") from exc

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def receive(self, timeout_s: float) -> Received | None:
        self._sock.settimeout(max(timeout_s, 0.0))
        try:
            data = self._sock.recv(MAX_DATAGRAM_BYTES)
        except (TimeoutError, BlockingIOError):
            return None
        return Received(data, datagram=True)

    def close(self) -> None:
        self._sock.close()


class _Reconnecting:
    """Shared logic of links that can drop: open with backoff, read, report changes."""

    name = ""

    def __init__(self, backoff: Backoff | None = None) -> None:
        self._backoff = backoff or Backoff()
        self._handle: Any = None
        self._retry_at = 0.0

    def receive(self, timeout_s: float) -> Received | None:
        deadline = time.monotonic() + max(timeout_s, 0.0)
        if self._handle is None:
            return self._try_open(deadline)
        try:
            data = self._read(max(deadline - time.monotonic(), 0.0))
        except OSError:
            data = b""
        if data is None:
            return None
        if not data:  # closed by the other side, or failed
            self.close()
            self._retry_at = time.monotonic() + self._backoff.next_delay_s()
            return Received(link=LINK_DOWN)
        return Received(data)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _try_open(self, deadline: float) -> Received | None:
        wait_s = self._retry_at - time.monotonic()
        if wait_s > 0:
            time.sleep(max(min(wait_s, deadline - time.monotonic()), 0.0))
            if time.monotonic() < self._retry_at:
                return None
        try:
            self._handle = self._open(max(deadline - time.monotonic(), 0.05))
        except OSError:
            self._retry_at = time.monotonic() + self._backoff.next_delay_s()
            return None
        self._backoff.reset()
        return Received(link=LINK_UP)

    def _open(self, timeout_s: float) -> Any:
        raise NotImplementedError

    def _read(self, timeout_s: float) -> bytes | None:
        """Bytes (b"" if the link closed), or None when none came within the timeout."""
        raise NotImplementedError


class TcpTransport(_Reconnecting):
    """Connect to HOST:PORT (a device or gateway that listens); reconnect with backoff."""

    def __init__(self, host: str, port: int, backoff: Backoff | None = None) -> None:
        super().__init__(backoff)
        self.name = f"tcp://{host}:{port}"
        self._address = (host, port)

    def _open(self, timeout_s: float) -> socket.socket:
        return socket.create_connection(self._address, timeout=timeout_s)

    def _read(self, timeout_s: float) -> bytes | None:
        self._handle.settimeout(timeout_s)
        try:
            return bytes(self._handle.recv(TCP_READ_BYTES))
        except (TimeoutError, BlockingIOError):
            return None


class SerialTransport(_Reconnecting):
    """A USB serial device (pyserial, imported on first use); reopened with backoff."""

    def __init__(self, path: str, baud: int) -> None:
        super().__init__()
        self.name = f"serial://{path}?baud={baud}"
        self._path, self._baud = path, baud
        self._serial = import_pyserial()
        try:  # fail fast on a wrong path; later drops are reopened with backoff
            self._handle = self._open(0.0)
        except OSError as exc:
            raise TransportError(f"{self.name}: cannot open ({exc})") from exc

    def _open(self, timeout_s: float) -> Any:
        try:
            return self._serial.Serial(self._path, self._baud, timeout=timeout_s)
        except self._serial.SerialException as exc:
            raise OSError(str(exc)) from exc

    def _read(self, timeout_s: float) -> bytes | None:
        port = self._handle
        try:
            port.timeout = timeout_s
            first = port.read(1)
            return bytes(first + port.read(port.in_waiting)) if first else None
        except self._serial.SerialException:
            return b""


def import_pyserial() -> Any:
    try:
        import serial
    except ImportError:
        raise TransportError(PYSERIAL_HINT) from None
    return serial


def open_transport(url: LinkUrl) -> UdpTransport | TcpTransport | SerialTransport:
    """The receiving transport for ``url`` (options other than ``baud`` are the caller's)."""
    if url.scheme == "udp":
        return UdpTransport(url.host, url.port)
    if url.scheme == "tcp":
        return TcpTransport(url.host, url.port)
    return SerialTransport(url.path, url.baud)
