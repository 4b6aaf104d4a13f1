"""The runtime's event messages: one per detector or gate transition, handed over per round.

:class:`EventOutbox` turns a stream's transitions into :class:`~edge.events.Event` messages
(an onset opens an episode, ``ongoing`` and ``ended`` continue it) and keeps them until
:meth:`EventOutbox.flush`, which the runtime calls once per round (and after an acknowledge
or at shutdown): the sinks then take the round's events in one call
(:func:`edge.sinks.publish_all`; the MQTT sink commits them to its spool in one transaction).
Events keep their order. The runtime calls both methods under its own lock.
"""

from __future__ import annotations

from typing import Any, Protocol

from edge.bed.detector import Transition
from edge.events import Event
from edge.sinks import Sink, publish_all


class Stream(Protocol):
    """What the outbox needs of a stream (:class:`edge.runtime.loop.Stream` has it): its id, its
    open episodes (transition key -> last message), its counters and its sample clock."""

    id: str
    episodes: dict[str, Event]
    counters: dict[str, int]

    def utc(self, sample: int) -> str: ...


class EventOutbox:
    """Builds the events of transitions and publishes them to ``sink`` in groups.

    ``site``, ``device_id``: every event's identity; ``model_id``, ``model_sha256``: the
    model named by physiological events.
    """

    def __init__(
        self, sink: Sink, site: str, device_id: str, model_id: str, model_sha256: str
    ) -> None:
        self.sink = sink
        self._identity = {"site": site, "device_id": device_id}
        self._model = {"model_id": model_id, "model_sha256": model_sha256}
        self._pending: list[Event] = []

    def emit(
        self,
        stream: Stream,
        transitions: list[Transition],
        quality: dict[str, float] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Queue one event per transition (updating the stream's episodes and counter)."""
        for transition in transitions:
            event = self._event(stream, transition, quality, extra or {})
            if event.state == "ended":
                stream.episodes.pop(transition.key, None)
            else:
                stream.episodes[transition.key] = event
            stream.counters["events"] += 1
            self._pending.append(event)

    def flush(self) -> None:
        """Hand the queued events to the sink (one call), in order."""
        if self._pending:
            events, self._pending = self._pending, []
            publish_all(self.sink, events)

    def _event(
        self, stream: Stream, t: Transition, quality: dict[str, float] | None, extra: dict[str, Any]
    ) -> Event:
        """The message for ``t``: an onset opens an episode; ``ongoing`` and ``ended`` continue
        the open one (an ``ended`` with no onset opens and closes one at once). ``quality``
        None keeps the episode's last measures; ``extra`` goes to ``detail`` of endings."""
        detail = _detail(t)
        previous = stream.episodes.get(t.key)
        if previous is None:
            previous = Event.onset(**self._onset_fields(stream, t), quality=quality or {})
            if t.state == "onset":
                return previous
        changes: dict[str, Any] = {"confidence": _confidence(t), "priority": t.priority}
        if quality is not None:
            changes["quality"] = quality
        if t.state == "ended":
            end = t.end_sample if t.end_sample is not None else t.start_sample
            return previous.ended(stream.utc(end), end, detail={**detail, **extra}, **changes)
        if t.latched and t.end_sample is not None:  # condition over, alarm latched until ack
            detail.update(latched=True, condition_end_sample=t.end_sample)
            detail["condition_end_utc"] = stream.utc(t.end_sample)
        return previous.ongoing(detail=detail, **changes)

    def _onset_fields(self, stream: Stream, t: Transition) -> dict[str, Any]:
        physiological = t.kind == "physiological"
        return {
            **self._identity,
            "stream_id": stream.id,
            "type": t.type,
            "priority": t.priority,
            "start_utc": stream.utc(t.start_sample),
            "start_sample": t.start_sample,
            "model_id": self._model["model_id"] if physiological else None,
            "model_sha256": self._model["model_sha256"] if physiological else None,
            "confidence": _confidence(t),
            "detail": _detail(t),
        }


def _confidence(t: Transition) -> float | None:
    """The peak probability of a physiological event; None for technical ones."""
    return float(min(max(t.confidence, 0.0), 1.0)) if t.kind == "physiological" else None


def _detail(t: Transition) -> dict[str, Any]:
    return {"key": t.key, "reason": t.reason} if t.reason else {"key": t.key}
