"""Who lies in which bed: the hospital's ADT feed, a file of HL7 v2 messages replayed from the start
with hl7apy (any v2 version) whenever its size or time changes (docs/gateway.md, "Patient identity":
which events move whom). An unreadable message is counted, logged and passed over, never fatal."""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

from lungwatch.errors import ConfigError

log = logging.getLogger(__name__)

ARRIVE = ("A01", "A04", "A08")
LEAVE = ("A03", "A11")
TRANSFER = "A02"
MAX_FEED_BYTES = 64 * 1024 * 1024  # a ward's feed; a larger file is refused, not read
_MSH = re.compile(r"(?m)^(?=MSH\|)")


def location_key(location: str) -> tuple[str, ...]:
    """PV1-3 as matched: point of care, room, bed and (when given) facility, trimmed."""
    parts = [part.strip() for part in location.split("^")[:4]]
    while parts and not parts[-1]:
        parts.pop()
    return tuple(parts)


def same_place(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Point of care, room and bed equal; the facility too where both give one."""
    if len(a) < 3 or len(b) < 3 or a[:3] != b[:3]:
        return False
    return len(a) < 4 or len(b) < 4 or a[3] == b[3]


class AdtFeed:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"adt_file: {self.path} is not a file")
        self.counts: Counter[str] = Counter()  # applied, passed_over, unreadable
        self._stamp: tuple[int, int] | None = None
        self._at: dict[tuple[str, ...], str] = {}  # location -> patient
        self.refresh()

    def patient_at(self, location: str) -> str | None:
        self.refresh()
        key = location_key(location)
        return next((p for place, p in self._at.items() if same_place(place, key)), None)

    def refresh(self) -> None:
        try:
            info = os.stat(self.path)
            stamp = (info.st_size, info.st_mtime_ns)
            if stamp == self._stamp:
                return
            if info.st_size > MAX_FEED_BYTES:
                raise OSError(f"larger than {MAX_FEED_BYTES} bytes")
            text = self.path.read_bytes().decode("utf-8", "replace")
        except OSError as exc:
            if self._stamp != (-1, -1):
                log.warning("ADT feed %s cannot be read (%s); keeping what it said", self.path,
                            exc)  # fmt: skip
            self._stamp = (-1, -1)
            return
        self._stamp = stamp
        self._at, self.counts = {}, Counter()
        for index, chunk in enumerate(m for m in _MSH.split(text) if m.strip()):
            self._apply(index, "\r".join(line for line in chunk.splitlines() if line))

    def _apply(self, index: int, text: str) -> None:
        try:
            msg = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT)
            event = msg.msh.msh_9.msh_9_2.to_er7()
            patient = msg.pid.pid_3.to_er7().split("~")[0]
            where = location_key(msg.pv1.pv1_3.to_er7())
            prior = location_key(msg.pv1.pv1_6.to_er7())
        except (HL7apyException, AttributeError, IndexError, ValueError) as exc:
            self.counts["unreadable"] += 1
            log.warning("ADT feed %s: message %d cannot be read (%s); passed over", self.path,
                        index + 1, exc)  # fmt: skip
            return
        if not patient or event not in (*ARRIVE, *LEAVE, TRANSFER):
            self.counts["passed_over"] += 1
            return
        # a patient is in one bed at a time: wherever the feed placed them before is free
        self._at = {place: who for place, who in self._at.items() if who != patient}
        if event == TRANSFER and prior:
            self._at = {p: who for p, who in self._at.items() if not same_place(p, prior)}
        if event in (*ARRIVE, TRANSFER) and len(where) >= 3:
            self._at = {p: who for p, who in self._at.items() if not same_place(p, where)}
            self._at[where] = patient
        self.counts["applied"] += 1
