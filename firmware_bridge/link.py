"""The receive loop: a transport feeding a receiver, with link changes as reports.

ring = load_keys("keys/bed-1.key")   # firmware_bridge.keys
receiver = Receiver(keys=ring.keys, state_path="keys/bed-1.sessions.json")
bridge = Bridge(open_transport(parse_link_url("udp://0.0.0.0:5005")), receiver)
while running:
    for item in bridge.poll(timeout_s=0.1):
        ...  # Segment / Report, as from Receiver.push
"""

from __future__ import annotations

import time
from collections.abc import Callable

from firmware_bridge.receiver import Output, Receiver
from firmware_bridge.timeline import Report
from firmware_bridge.transport import LINK_DOWN, LINK_UP, Received, Transport

DISCONNECTED, RECONNECTED = "disconnected", "reconnected"
MAX_BATCH = 256  # reads taken per poll after the first, before draining


class Bridge:
    """A transport and a receiver; a dropped link gives every known stream a ``disconnected``
    report, and its return a ``reconnected`` one."""

    def __init__(
        self, transport: Transport, receiver: Receiver, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.transport, self.receiver, self._clock = transport, receiver, clock
        self._link_down = False
        self._reports: list[Output] = []
        self._datagrams: list[bytes] = []

    def poll(self, timeout_s: float) -> list[Output]:
        """After the first data, whatever else waits is parsed together before one drain, so
        many small frames become few segments."""
        received = self.transport.receive(timeout_s)
        reads = 0
        while received is not None:
            if received.datagram and not received.link:
                self._datagrams.append(received.data)
            else:
                self._take(received)
            reads += 1
            if reads > MAX_BATCH:
                break
            received = self.transport.receive(0.0)
        self._feed_datagrams()
        out, self._reports = self._reports + self.receiver.poll(self._clock()), []
        return out

    def _feed_datagrams(self) -> None:
        """One scanner call for a poll's datagrams; a frame cut short in one still cannot
        swallow the next: the parser skips past it when its CRC fails."""
        if self._datagrams:
            data, self._datagrams = b"".join(self._datagrams), []
            self.receiver.feed(data, self._clock(), datagram=True)

    def finish(self) -> list[Output]:
        return self.receiver.finish()

    def close(self) -> None:
        self.transport.close()
        self.receiver.close()

    def _take(self, received: Received) -> None:
        self._feed_datagrams()
        now_s = self._clock()
        if received.data:
            self.receiver.feed(received.data, now_s, datagram=received.datagram)
        if received.link == LINK_DOWN:
            self._link_down = True
            self._reports += self.receiver.link_down(now_s)
            self._reports += self._link_reports(DISCONNECTED)
        elif received.link == LINK_UP and self._link_down:
            self._link_down = False
            self._reports += self._link_reports(RECONNECTED)

    def _link_reports(self, kind: str) -> list[Output]:
        return [
            Report(a.key, kind, a.next_sample, {"link": self.transport.name})
            for a in self.receiver.streams.values()
        ]
