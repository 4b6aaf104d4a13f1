"""Sending side of the links, as a device does it (used by the emulator).

Over TCP the sender listens and streams to one client at a time; frames sent while none is
connected are dropped, as a device's would be (``wait_for_client=True`` waits instead). Each
sender's ``send(frame)`` is False when the frame could not be sent (no client, link down)."""

from __future__ import annotations

import socket
from typing import Any

from firmware_bridge.errors import TransportError
from firmware_bridge.transport import import_pyserial
from firmware_bridge.urls import LinkUrl

ACCEPT_POLL_S = 0.0


class UdpSender:
    """Datagrams to HOST:PORT; the host is resolved once, here (TransportError if it cannot
    be: a name that does not resolve would otherwise fail every send silently)."""

    def __init__(self, host: str, port: int) -> None:
        self.name = f"udp://{host}:{port}"
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except (socket.gaierror, UnicodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise TransportError(f"{self.name}: cannot resolve {host} ({reason})") from None
        family, _, _, _, address = found[0]
        self._address: tuple[Any, ...] = tuple(address)
        self._sock = socket.socket(family, socket.SOCK_DGRAM)

    def send(self, frame: bytes) -> bool:
        try:
            self._sock.sendto(frame, self._address)
        except OSError:  # e.g. ECONNREFUSED from an earlier datagram: UDP carries on
            return False
        return True

    def close(self) -> None:
        self._sock.close()


class TcpServerSender:
    def __init__(self, host: str, port: int, wait_for_client: bool = False) -> None:
        self.name = f"tcp://{host}:{port}"
        self._wait = wait_for_client
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = socket.socket(family, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._server.bind((host, port))
            self._server.listen(1)
        except OSError as exc:
            self._server.close()
            raise TransportError(f"{self.name}: cannot listen ({exc.strerror or exc})") from exc
        self._client: socket.socket | None = None

    def send(self, frame: bytes) -> bool:
        if self._client is None and not self.accept(None if self._wait else ACCEPT_POLL_S):
            return False
        try:
            self._client.sendall(frame)  # type: ignore[union-attr]
        except OSError:
            self.drop_client()
            return False
        return True

    def drop_client(self) -> None:
        """Close the connection (the bridge should reconnect)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def close(self) -> None:
        self.drop_client()
        self._server.close()

    def accept(self, timeout_s: float | None) -> bool:
        """Take a waiting client (``timeout_s`` None: wait for one); False if none came."""
        if self._client is not None:
            return True
        self._server.settimeout(timeout_s)
        try:
            self._client, _ = self._server.accept()
        except (TimeoutError, BlockingIOError):
            return False
        self._client.setblocking(True)
        return True


class SerialSender:
    def __init__(self, path: str, baud: int) -> None:
        self.name = f"serial://{path}?baud={baud}"
        serial = import_pyserial()
        try:
            self._port: Any = serial.Serial(path, baud, write_timeout=5.0)
        except serial.SerialException as exc:
            raise TransportError(f"{self.name}: cannot open ({exc})") from exc
        self._error = serial.SerialException

    def send(self, frame: bytes) -> bool:
        try:
            self._port.write(frame)
        except self._error:
            return False
        return True

    def close(self) -> None:
        self._port.close()


def open_sender(
    url: LinkUrl, wait_for_client: bool = False
) -> UdpSender | TcpServerSender | SerialSender:
    if url.scheme == "udp":
        return UdpSender(url.host, url.port)
    if url.scheme == "tcp":
        return TcpServerSender(url.host, url.port, wait_for_client)
    return SerialSender(url.path, url.baud)
