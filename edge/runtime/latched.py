"""Latched alarms that outlive the process: the device's file of unacknowledged alarms.

    store = LatchedStore(Path("out/spool/latched-alarms.json"))
    carried = store.load()              # stream id -> [Event, ...] held before the restart
    store.save({"bed-1": [event, ...]}) # every change of the set (atomic, 0600)

A latched alarm ends only when a person acknowledges it (or its bed's stream ends), never
because the device stopped: a rollout (``make deploy``) and every SIGTERM restart the
runtime. The runtime keeps in this file, whenever the set changes, each bed's open alarms
that need an acknowledgement: the latched ones (their condition over, not yet
acknowledged) and, at shutdown, the live ones of a latching priority (their condition still
held when monitoring stopped). After a restart it announces each again (an ``ongoing``
message of the same episode, ``detail.latched`` and ``detail.restored`` true), lists it in
the bed's summary, and ends it when an acknowledge names its key, type or alarm condition.

The file holds each alarm's last event message (``Event.to_dict``), so nothing of what the
ward saw is lost; it is written to a temporary file beside it and renamed over it (a crash
mid-write leaves the previous version), created 0600 (the alarms name beds and times). A
file that cannot be read or holds something else is an error naming the file, not an empty
set: the runtime refuses to start rather than drop alarms it cannot read.
"""

from __future__ import annotations

import json
from pathlib import Path

from lungwatch.errors import ConfigError
from lungwatch.events import Event, EventError
from lungwatch.private import write_private

FORMAT = "lungwatch-latched-alarms"
VERSION = 1


class LatchedStore:
    """The file of one device's unacknowledged alarms (module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, list[Event]]:
        """The alarms held when the runtime last changed them (none if there is no file)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read the latched alarms ({exc})") from None
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT or doc.get("version") != VERSION:
                raise ValueError(f"not a {FORMAT} file of version {VERSION}")
            beds = doc["beds"]
            if not isinstance(beds, dict):
                raise ValueError("beds must be a mapping")
            return {str(bed): [Event.from_dict(e) for e in events] for bed, events in beds.items()}
        except (ValueError, KeyError, TypeError, AttributeError, EventError) as exc:
            raise ConfigError(
                f"{self.path}: unreadable latched alarms ({exc}); the runtime will not start "
                "without them: repair or move the file (every alarm in it is also in the ward "
                "view's history)"
            ) from None

    def save(self, beds: dict[str, list[Event]]) -> None:
        """Replace the file with ``beds`` (beds without alarms left out)."""
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "beds": {bed: [e.to_dict() for e in events] for bed, events in beds.items() if events},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_private(self.path, json.dumps(doc, indent=1) + "\n")
