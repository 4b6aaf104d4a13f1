"""An MLLP receiver that is not this project's code: python-hl7's asyncio MLLP server
(``hl7.mllp.start_hl7_server``) in a thread of its own, answering with python-hl7's own ACKs
(``Message.create_ack``), and misbehaving on request as a hospital's interface engine can:

    receiver = Hl7Receiver().start()
    receiver.behaviour = "AE-then-AA"   # AA, AE-then-AA, AR-once, wrong-MSA-2, stalled, trickle
    receiver.kill(); receiver.start()   # down and up again on the same port

It keeps every arrival (control id, text) in order and the messages it accepted, each
checked against the IHE rules of :mod:`tests.gateway.conformance` (a message that breaks one
is answered AE and listed in ``errors``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import hl7
from hl7.mllp import start_hl7_server

from tests.gateway.conformance import problems

BEHAVIOURS = ("AA", "AE-then-AA", "AR-once", "wrong-MSA-2", "stalled", "trickle")


class Hl7Receiver:
    def __init__(self, equipment: bool = True) -> None:
        self.port = 0
        self.equipment = equipment
        self.behaviour = "AA"
        self.arrivals: list[tuple[str, str]] = []  # (control id, text), retransmissions too
        self.accepted: dict[str, str] = {}  # control id -> text, in order of acceptance
        self.answered: dict[str, list[str]] = {}  # control id -> the codes answered
        self.errors: list[str] = []
        self.rejected: list[str] = []  # control ids answered AR
        self.lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._writers: set[Any] = set()
        self._thread: threading.Thread | None = None

    # -- control (the test's thread) ----------------------------------------------------
    def start(self) -> Hl7Receiver:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
            self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        future.result(10.0)
        return self

    def kill(self) -> None:
        """The listening socket and every connection closed at once (a crashed receiver)."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10.0)

    def stop(self) -> None:
        if self._loop is not None:
            self.kill()
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(5.0)

    # -- the server (its loop's thread) -------------------------------------------------
    async def _listen(self) -> None:
        self._server = await start_hl7_server(self._serve, "127.0.0.1", self.port,
                                              encoding="utf-8")  # fmt: skip
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: Any, writer: Any) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    block = await reader.readblock()
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                text = block.decode("utf-8")
                msg = hl7.parse(text)
                control_id = str(msg.segment("MSH")[10])
                code, acknowledged, manner = self._decide(control_id, text)
                if manner == "stalled":
                    continue  # read, never answered: the sender's deadline must end it
                ack = msg.create_ack(code, message_id=f"A{control_id}"[:20],
                                     application="TEST-HIS", facility="HOSP")  # fmt: skip
                ack.segment("MSA")[2] = acknowledged
                if manner == "trickle":  # one byte a second: the whole reply has a deadline
                    framed = b"\x0b" + str(ack).encode("utf-8") + b"\x1c\x0d"
                    for i in range(len(framed)):
                        writer.write(framed[i : i + 1])
                        await writer.drain()
                        await asyncio.sleep(1.0)
                    continue
                writer.writemessage(ack)
                await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    def _decide(self, control_id: str, text: str) -> tuple[str, str, str]:
        """(MSA-1, MSA-2, how it is answered) for one arrival."""
        with self.lock:
            self.arrivals.append((control_id, text))
            seen = sum(1 for c, _ in self.arrivals if c == control_id)
            behaviour = self.behaviour
            wrong = problems(text, self.equipment)
            code, acknowledged, manner = "AA", control_id, "answer"
            if wrong:
                code = "AE"
                self.errors.append(f"{control_id}: {wrong[0]}")
            elif behaviour == "AE-then-AA" and seen == 1:
                code = "AE"
            elif behaviour == "AR-once":
                code, self.behaviour = "AR", "AA"
                self.rejected.append(control_id)
            elif behaviour == "wrong-MSA-2":  # once: a receiver out of step, then in step
                acknowledged, self.behaviour = "SOMEONE-ELSE", "AA"
            elif behaviour in ("stalled", "trickle"):
                code, manner = "AA", behaviour
            if code == "AA" and acknowledged == control_id and manner == "answer":
                self.accepted.setdefault(control_id, text)
            self.answered.setdefault(control_id, []).append(
                code if manner == "answer" else manner)  # fmt: skip
            return code, acknowledged, manner
