"""Small readers of a deployed prefix and of the devices' status on the broker."""

from __future__ import annotations

import os
from pathlib import Path

from deploy.remote import running_pid
from lungwatch.events import parse_utc
from tests.brokers import Message, Recorder

ONLINE_TIMEOUT_S = 20.0


def link(prefix: Path, name: str = "current") -> str | None:
    path = prefix / name
    return Path(os.readlink(path)).name if path.is_symlink() else None


def releases(prefix: Path) -> list[str]:
    return sorted(p.name for p in (prefix / "releases").iterdir())


def service_pid(prefix: Path) -> int | None:
    return running_pid(prefix / "state" / "lungwatch.pid")


def statuses(recorder: Recorder, topic: str) -> list[dict[str, object]]:
    return [m.json() for m in list(recorder.messages) if m.topic == topic]


def wait_online(recorder: Recorder, topic: str, after: int = 0) -> dict[str, object]:
    """The first ``online`` among the status messages after the first ``after`` ones."""

    def seen(messages: list[Message]) -> bool:
        return any(s["state"] == "online" for s in statuses(recorder, topic)[after:])

    assert recorder.wait_for(seen, ONLINE_TIMEOUT_S), f"no online on {topic}"
    return next(s for s in statuses(recorder, topic)[after:] if s["state"] == "online")


def wait_retained_online(port: int, topic: str, since_s: float) -> dict[str, object]:
    """A fresh subscriber: the latest status on ``topic`` is ``online`` from after ``since_s``."""

    def fresh_online(messages: list[Message]) -> bool:
        if not messages:
            return False
        last = messages[-1].json()
        return bool(last["state"] == "online" and parse_utc(last["utc"]).timestamp() >= since_s)

    with Recorder(port, topic=topic) as rec:
        assert rec.wait_for(fresh_online, ONLINE_TIMEOUT_S), [m.json() for m in rec.messages]
        return dict(rec.messages[-1].json())
