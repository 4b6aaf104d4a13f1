"""A real MLLP receiver for the gateway's tests: a TCP server that reads MLLP frames, parses
each message with python-hl7 (not the gateway's own code) and checks it against the IHE PCD
rules of :mod:`tests.gateway.conformance` (PCD-01 ``ORU^R01^ORU_R01`` and PCD-04
``ORU^R40^ORU_R40``), and answers each with an ACK: AA when it conforms, AE naming what is
wrong when it does not, or whatever a test asks for a control id. It can be killed
(listening socket and every connection closed at once) and
started again on the same port, and told to die right after receiving a message, before
answering it, as a crashed receiver does."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

from hl7apy.core import Message

from gateway.mllp import frame, read_frame
from tests.gateway.conformance import problems


class Receiver:
    def __init__(self, port: int = 0, equipment: bool = False) -> None:
        self.port = port
        self.equipment = equipment  # the EUI-64s must be there (MSH-3, OBX-18)
        self.received: list[str] = []  # control ids in arrival order (retransmissions too)
        self.accepted: dict[str, str] = {}  # control id -> message text, first accepted copy
        self.errors: list[str] = []
        self.answer: Callable[[str, int], str | None] = lambda control_id, seen: None
        self.die_on: Callable[[int], bool] = lambda count: False
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)

    def start(self) -> Receiver:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(8)
        self.port = server.getsockname()[1]
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def kill(self) -> None:
        with self._lock:
            server, conns, self._server, self._conns = self._server, self._conns, None, []
        for sock in ([server] if server is not None else []) + conns:
            with contextlib.suppress(OSError):  # wakes the thread blocked in accept or recv
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout_s)

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # killed
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = bytearray()
        try:
            while True:
                text = read_frame(conn, buffer)
                if text is None:
                    return
                reply = self._handle(text)
                if reply is None:  # died before answering
                    self.kill()
                    return
                conn.sendall(frame(reply))
        except OSError:
            return

    def _handle(self, text: str) -> str | None:
        code, detail = "AA", ""
        msh = text.split("\r", 1)[0].split("|")
        control_id = msh[9] if len(msh) > 9 else ""
        wrong = problems(text, self.equipment)
        if wrong:
            code, detail = "AE", f"not conformant: {wrong[0]}"
        with self.changed:
            self.received.append(control_id)
            seen = self.received.count(control_id)
            if self.die_on(len(self.received)):
                self.changed.notify_all()
                return None
            asked = self.answer(control_id, seen)
            acknowledged = control_id
            if asked is not None:  # "AA" or "AA:<another control id>" (MSA-2 out of step)
                code, _, other = asked.partition(":")
                acknowledged, detail = other or control_id, "answered by the test"
            if code == "AA" and acknowledged == control_id:
                self.accepted.setdefault(control_id, text)
            else:
                self.errors.append(f"{control_id}: {code} {detail}")
            self.changed.notify_all()
        trigger = msh[8].split("^")[1] if len(msh) > 8 and "^" in msh[8] else "R01"
        return _ack(acknowledged, code, detail, trigger)


def _ack(control_id: str, code: str, detail: str, trigger: str = "R01") -> str:
    ack = Message("ACK", version="2.6")
    ack.msh.msh_3 = "TEST-HIS"
    ack.msh.msh_9 = f"ACK^{trigger}^ACK"
    ack.msh.msh_10 = f"ACK{control_id}"[:20]
    ack.msh.msh_11 = "P"
    ack.msh.msh_12 = "2.6"
    ack.msa.msa_1 = code
    ack.msa.msa_2 = control_id
    if detail:
        ack.msa.msa_3 = detail.replace("|", " ").replace("^", " ")[:80]
    return str(ack.to_er7())
