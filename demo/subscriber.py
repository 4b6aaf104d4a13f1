"""The demo's subscriber: what the broker delivers, printed as ``mqtt>`` lines and kept. QoS 1 is
at-least-once, so events are kept by ``id`` and a repeated delivery is only counted
(:attr:`Subscriber.duplicates`)."""

from __future__ import annotations

import json
import threading
from typing import Any

from lungwatch.errors import LungwatchError
from lungwatch.events import TOPIC_ROOT

SUBACK_TIMEOUT_S = 10.0
KEEPALIVE_S = 30
ID_PREVIEW_CHARS = 8


class SubscriberError(LungwatchError):
    """The subscriber could not reach the broker or subscribe (the message says which)."""


class Subscriber:
    def __init__(self, address: str, site: str, device_id: str) -> None:
        import paho.mqtt.client as mqtt

        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        self.topic = f"{TOPIC_ROOT}/{site}/{device_id}/#"
        self.events: dict[str, dict[str, Any]] = {}  # id -> event JSON of its first delivery
        self.duplicates = 0
        self.offline = threading.Event()  # a live (not retained) ``offline`` status arrived
        self._cond = threading.Condition()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"lungwatch-demo-subscriber-{id(self)}"
        )
        self._client.on_message = self._on_message

    def start(self) -> Subscriber:
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *args: subscribed.set()
        try:
            self._client.connect(self.host, self.port, keepalive=KEEPALIVE_S)
        except OSError as exc:
            raise SubscriberError(
                f"broker {self.host}:{self.port} is unreachable: {exc.strerror or exc}"
            ) from None
        self._client.subscribe(self.topic, qos=1)
        self._client.loop_start()
        if not subscribed.wait(SUBACK_TIMEOUT_S):
            self.stop()
            raise SubscriberError(
                f"broker {self.host}:{self.port} did not acknowledge the subscription"
            )
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def wait_for(self, n_events: int, timeout_s: float) -> bool:
        """Wait until ``n_events`` distinct events and a live ``offline`` status arrived."""
        with self._cond:
            return self._cond.wait_for(
                lambda: len(self.events) >= n_events and self.offline.is_set(), timeout_s
            )

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        kind = message.topic.rsplit("/", 1)[-1]
        try:
            body = json.loads(message.payload)
        except ValueError:
            print(f"mqtt> {message.topic}: unreadable payload", flush=True)
            return
        with self._cond:
            if kind == "event" and body.get("id") in self.events:
                self.duplicates += 1
            elif kind == "event":
                self.events[str(body.get("id"))] = body
            elif kind == "status" and body.get("state") == "offline" and not message.retain:
                self.offline.set()
            self._cond.notify_all()
        print(describe_message(kind, body, message.retain), flush=True)


def describe_message(kind: str, body: dict[str, Any], retained: bool) -> str:
    """One ``mqtt>`` line for a delivered message (``kind``: the topic's last segment)."""
    if kind == "event":
        start, end = body.get("start_sample"), body.get("end_sample")
        span = "" if start is None else f" samples {start}..{'' if end is None else end}"
        conf = "" if body.get("confidence") is None else f" conf={body['confidence']:.2f}"
        return (
            f"mqtt> {body.get('stream_id')} {body.get('type')} {body.get('state')} "
            f"[{body.get('priority')}]{conf}{span} id={str(body.get('id'))[:ID_PREVIEW_CHARS]}"
        )
    if kind == "status":
        before = " (retained from an earlier run)" if retained else ""
        return f"mqtt> status {body.get('state')} ({body.get('reason')}){before}"
    if kind == "metrics":
        numbers = body.get("metrics", {})
        shown = [f"{k}={numbers[k]}" for k in ("samples", "windows", "events") if k in numbers]
        return f"mqtt> metrics {body.get('stream_id')} {' '.join(shown)}"
    return f"mqtt> {kind}: {json.dumps(body)[:120]}"
