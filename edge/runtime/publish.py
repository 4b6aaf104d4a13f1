"""Everything a bed produces leaves the device through :class:`Publisher`: one window's
:class:`edge.bed.chain.WindowStep` becomes the bed's episodes, its retained summary, verdict and
breathing, and its evidence clips. The runtime itself publishes only the live strip and metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge.bed.agebands import age_band
from edge.bed.breathing_state import Respiration
from edge.bed.chain import WindowStep
from edge.bed.detector import Transition
from edge.evidence.publisher import EvidencePublisher
from edge.evidence.recorder import Cut
from edge.inference.streaming import OutputFrames
from edge.monitor import Monitor
from edge.runtime.config import RuntimeConfig
from edge.runtime.outbox import EventOutbox
from edge.runtime.stream import Stream
from edge.sinks import Sink, publish_respiration, publish_verdict
from lungwatch.events import FINDING_RATE_FAMILY, utc_now


class Publisher:
    def __init__(
        self,
        config: RuntimeConfig,
        model: Monitor,
        sink: Sink,
        evidence: EvidencePublisher | None,
        clock: Callable[[], float],
    ) -> None:
        self.config, self.model, self.sink = config, model, sink
        self.evidence = evidence  # None: no clips are cut
        self.outbox = EventOutbox(sink, config.site, config.device_id, model.model_id, model.sha256)
        self._clock = clock

    def step(self, stream: Stream, step: WindowStep) -> None:
        if stream.recorder is not None:
            stream.recorder.frames(step.frames.first_frame, step.frames.probs)
        if not stream.summary_sent:  # the view names the bed before its first event
            self.summary(stream)
        self.emit(stream, step.transitions, step.quality)
        if stream.recorder is not None:
            self.clips(stream, stream.recorder.due_cuts())
        if step.verdict is not None:
            self.verdict(stream, step.frames)
        if step.respiration is not None:
            self.respiration(stream, step.respiration)

    def end(self, stream: Stream, held: bool) -> None:
        """Withdraws the bed's verdict and breathing; its summary is sent again while it holds
        alarms (a view that starts while the device is down lists them), else withdrawn."""
        if held:
            self.summary(stream)
        else:
            self.outbox.summary(stream.id, None)  # after the bed's last events
        if stream.chain.verdict is not None:
            publish_verdict(self.sink, stream.id, None)
        if stream.chain.breathing is not None:
            publish_respiration(self.sink, stream.id, None)

    def emit(
        self, stream: Stream, transitions: list[Transition], quality: dict[str, Any] | None = None
    ) -> None:
        """The transitions' events; the summary again when the bed's open alarms changed."""
        if not transitions:
            return
        if not stream.summary_sent:  # a first event before the first window (the gate, a stall)
            self.summary(stream)
        made = self.outbox.emit(stream, transitions, quality)
        if stream.recorder is not None:
            stream.recorder.events(made)
        if any(e.state != "ongoing" or e.detail.get("latched") for e in made):
            self.summary(stream)

    def summary(self, stream: Stream) -> None:
        """Retained, so a view that starts late lists the alarms latched before it."""
        rows = []
        for event in self.outbox.open_episodes(stream.id):
            rows.append({"episode_id": event.episode_id, "type": event.type,
                         "kind": event.kind, "priority": event.priority,
                         "start_utc": event.start_utc, "confidence": event.confidence,
                         "latched": bool(event.detail.get("latched")),
                         "key": event.detail.get("key")})  # fmt: skip
        summary = {"name": stream.config.name, "location": stream.config.location,
                   "open": rows, "utc": utc_now()}  # fmt: skip
        self.outbox.summary(stream.id, summary)  # after the events made before it
        stream.summary_sent = True

    def clips(self, stream: Stream, clips: list[Cut]) -> None:
        if self.evidence is not None:
            for clip in clips:
                self.evidence.submit(clip)

    def verdict(self, stream: Stream, frames: OutputFrames) -> None:
        verdict = stream.chain.verdict
        if verdict is None:  # a step carries a verdict only from a chain that has one
            return
        end = self.model.grid.end_sample(frames.first_frame + max(0, frames.probs.shape[0] - 1))
        pq, cas, das = verdict.scores
        message = {
            "site": self.config.site,
            "verdict": verdict.label,
            "utc": stream.utc(end),
            "sample": end,
            "window_s": verdict.rule.config.window_s,
            "scores": {"poor_quality": round(pq, 4), "cas": round(cas, 4), "das": round(das, 4)},
            "model_id": self.model.model_id,
        }
        publish_verdict(self.sink, stream.id, message)

    def respiration(self, stream: Stream, reading: Respiration) -> None:
        now, sent = self._clock(), stream.respiration_sent
        due = sent is None or sent[1] != reading.state
        if not due and now - sent[0] < self.config.respiration_publish_s:  # type: ignore[index]
            return
        stream.respiration_sent = (now, reading.state)
        message = {**reading.to_dict(), "utc": stream.utc(reading.sample), "sample": reading.sample}
        band = age_band(reading.age_band)
        message.update(low_bpm=band.low_bpm, high_bpm=band.high_bpm, model_id=self.model.model_id)
        if reading.last_breath_sample is not None:
            message["last_breath_utc"] = stream.utc(reading.last_breath_sample)
        rates = stream.chain.finding_rates()  # the share of breathing time with each finding
        for key, family in FINDING_RATE_FAMILY.items():
            share = rates.get(family)
            message[key] = None if share is None else round(100.0 * share, 1)
        publish_respiration(self.sink, stream.id, message)
