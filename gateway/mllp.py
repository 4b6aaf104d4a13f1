"""MLLP (HL7's Minimal Lower Layer Protocol) over TCP: each message between a start block (0x0B) and
an end block plus carriage return (0x1C 0x0D); the receiver's ACK to each is framed the same way."""

from __future__ import annotations

import socket
import time

from gateway.hl7 import Hl7Error, parse_ack
from gateway.outbox import REFUSED, REJECTED, RETRY, SENT, Queued
from lungwatch.errors import LungwatchError

START, END = b"\x0b", b"\x1c\x0d"
MAX_FRAME_BYTES = 1 << 20  # a reply larger than this is no acknowledgement
REJECTIONS = ("AR", "CR")  # the receiver will not take the message as it is


class MllpError(LungwatchError):
    """The exchange failed; the connection is closed."""


def frame(text: str) -> bytes:
    return START + text.encode("utf-8") + END


def read_frame(sock: socket.socket, buffer: bytearray, deadline: float | None = None) -> str | None:
    """The next frame's text (bytes after it stay in ``buffer``); None: the peer closed between
    frames. TimeoutError once ``deadline`` (monotonic) passed, however slowly bytes trickle in."""
    while True:
        end = buffer.find(END)
        if end >= 0:
            if not buffer.startswith(START):
                raise MllpError("MLLP: bytes before the start block")
            text = bytes(buffer[1:end]).decode("utf-8", errors="replace")
            del buffer[: end + len(END)]
            return text
        if len(buffer) > MAX_FRAME_BYTES:
            raise MllpError(f"MLLP: no end block within {MAX_FRAME_BYTES} bytes")
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0.0:
                raise TimeoutError("no whole reply before the deadline")
            sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            if buffer:
                raise MllpError("MLLP: connection closed inside a frame")
            return None
        buffer += chunk


class MllpClient:
    """One receiver, over one connection kept open and opened again after any failure."""

    def __init__(self, host: str, port: int, timeout_s: float = 10.0) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self.connects = 0

    def exchange(self, text: str) -> str:
        """The reply to ``text``; any failure closes the connection and raises MllpError."""
        try:
            sock = self._connected()
            sock.settimeout(self.timeout_s)
            sock.sendall(frame(text))
            # one deadline per reply: a byte per timeout would otherwise hold the courier
            reply = read_frame(sock, self._buffer, time.monotonic() + self.timeout_s)
        except (OSError, MllpError) as exc:
            self.close()
            reason = "no reply within the timeout" if isinstance(exc, TimeoutError) else exc
            raise MllpError(f"MLLP {self.host}:{self.port}: {reason}") from None
        if reply is None:
            self.close()
            raise MllpError(f"MLLP {self.host}:{self.port}: the receiver closed the connection")
        return reply

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buffer.clear()

    def _connected(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), self.timeout_s)
            self._sock.settimeout(self.timeout_s)
            self.connects += 1
        return self._sock


class MllpTransport:
    """The courier's transport over MLLP (docs/gateway.md, "Delivery": which reply is which)."""

    def __init__(self, client: MllpClient) -> None:
        self.client = client

    def deliver(self, row: Queued) -> tuple[str, str]:
        try:
            ack = parse_ack(self.client.exchange(row.message))
        except (MllpError, Hl7Error) as exc:
            return RETRY, str(exc)
        if ack.control_id != row.control_id:
            self.client.close()  # a reply to some other message: the stream is out of step
            why = f"the reply acknowledges {ack.control_id[:40]!r}, not {row.control_id!r}"
            return REFUSED, why
        if ack.accepted:
            return SENT, ""
        outcome = REJECTED if ack.code in REJECTIONS else REFUSED
        return outcome, f"{ack.code} {ack.text}".strip()

    def close(self) -> None:
        self.client.close()
