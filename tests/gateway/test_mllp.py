"""The MLLP client (gateway.mllp) against real sockets: a receiver that trickles its reply a
byte at a time cannot hold the courier past the reply's deadline."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from gateway.mllp import END, START, MllpClient, MllpError

ACK = "MSH|^~\\&|HIS||||20261127||ACK^R01^ACK|A1|P|2.6\rMSA|AA|X1"


class Trickle:
    """A receiver that reads a message and answers with an ACK, ``gap_s`` between bytes."""

    def __init__(self, gap_s: float) -> None:
        self.gap_s = gap_s
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            data = b""
            while END not in data:
                data += conn.recv(65536)
            for byte in START + ACK.encode() + END:
                if self.stop.wait(self.gap_s):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def close(self) -> None:
        self.stop.set()
        self.server.close()
        self.thread.join(5.0)


def test_a_trickled_reply_fails_at_the_deadline_and_a_prompt_one_is_read() -> None:
    slow = Trickle(gap_s=0.2)  # each byte well within the timeout, the whole reply not
    client = MllpClient("127.0.0.1", slow.port, timeout_s=1.0)
    started = time.monotonic()
    try:
        with pytest.raises(MllpError, match="no reply within the timeout"):
            client.exchange("MSH|^~\\&|LUNGWATCH|||||ORU^R01^ORU_R01|X1|P|2.6")
    finally:
        client.close()
        slow.close()
    assert time.monotonic() - started < 2.5  # the deadline, not a byte's timeout, ended it
    prompt = Trickle(gap_s=0.0)
    client = MllpClient("127.0.0.1", prompt.port, timeout_s=1.0)
    try:
        assert client.exchange("MSH|^~\\&|LUNGWATCH|||||ORU^R01^ORU_R01|X1|P|2.6") == ACK
    finally:
        client.close()
        prompt.close()
