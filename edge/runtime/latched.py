"""Latched alarms that outlive the process: the device's file of unacknowledged alarms.

    store = LatchedStore(Path("out/spool/latched-alarms.json"))
    carried = store.load()              # stream id -> [Event, ...] held before the restart
    store.save({"bed-1": [event, ...]}) # every change of the set (atomic, 0600)

A latched alarm ends only when a person acknowledges it, never because the device restarted
(docs/runtime.md, "Signals and shutdown"); the file is 0600 since the alarms name beds and
times. A file that cannot be read is an error naming it, not an empty set: the runtime
refuses to start rather than drop alarms.
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
