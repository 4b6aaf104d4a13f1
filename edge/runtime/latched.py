"""The device's file of unacknowledged latched alarms, stream id -> [Event, ...], saved (atomic,
0600: the alarms name beds and times) on every change of the set. A latched alarm ends only when
a person acknowledges it, never because the device restarted (docs/runtime.md, "Signals and
shutdown"). A file that cannot be read is an error naming it, not an empty set: the runtime
refuses to start rather than drop alarms."""

from __future__ import annotations

import json
from pathlib import Path

from lungwatch.errors import ConfigError
from lungwatch.events import Event, EventError
from lungwatch.private import write_private

FORMAT = "lungwatch-latched-alarms"
VERSION = 1


class LatchedStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, list[Event]]:
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
        kept = {bed: [e.to_dict() for e in events] for bed, events in beds.items() if events}
        doc = {"format": FORMAT, "version": VERSION, "beds": kept}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_private(self.path, json.dumps(doc, indent=1) + "\n")
