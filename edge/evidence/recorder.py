"""One bed's audio history and the evidence clips it cuts from it: the bed gives it every chunk,
output frame and event message; :meth:`ClipRecorder.due_cuts` (``finish_cuts`` once the stream
ended) copies clips out, which ``Cut.encode`` makes FLAC in the publisher's thread.

A clip starts for every physiological onset and every technical onset of a priority in
``alarm_priorities`` (a finding episode's events have theirs, the episode none of its own);
its span and the history's size: docs/evidence.md, "On the device"."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from numba import njit
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt

from edge.bed.detector import FrameGrid
from lungwatch.clip import DEFAULT_PART_BYTES, MAX_CLIP_S, Clip, encode_flac, quantise
from lungwatch.config import Settings, check
from lungwatch.events import PRIORITIES, Event

INT16_SCALE = 32767.0


@dataclass(frozen=True)
class EvidenceConfig(Settings):
    enabled: bool = True  # false: no clips
    pre_s: NonNegativeFloat = 3.0  # audio before the event's start
    post_s: NonNegativeFloat = 1.0  # audio after its end
    max_s: float = 20.0  # the longest clip
    history_s: float = 25.0  # audio kept per bed for clips (16 kB a second at 8 kHz)
    alarm_priorities: tuple[str, ...] = ("high", "medium")  # technical events with clips
    spool_path: str | None = None  # clips wait here for the broker (None: next to mqtt's spool)
    max_spool_mb: PositiveFloat = 200.0  # the spool's bound: the oldest clips go first
    max_age_h: PositiveFloat = 24.0  # a clip not delivered by then is dropped (counted)
    # FLAC bytes per MQTT message (at most 45000: base64 and JSON must stay under 64 KiB)
    part_bytes: Annotated[int, Field(ge=4096, le=45000)] = DEFAULT_PART_BYTES
    max_inflight: PositiveInt = 4  # parts unacknowledged at once (events have their own connection)
    # the broker login of the clips' connection, with mqtt's password (None: mqtt.username); a
    # broker that makes each client's id its username needs one per connection
    username: str | None = None

    def __post_init__(self) -> None:
        ok = self.max_s > 0 and self.max_s + self.pre_s + self.post_s <= MAX_CLIP_S
        check(ok, "max_s", self.max_s, f"a number > 0 with pre_s + post_s at most {MAX_CLIP_S}")
        check(self.history_s >= self.max_s, "history_s", self.history_s, "a number >= max_s")
        bad = [p for p in self.alarm_priorities if p not in PRIORITIES]
        check(not bad, "alarm_priorities", self.alarm_priorities, f"a list of {PRIORITIES}")
        check(self.spool_path != "", "spool_path", self.spool_path, "a path or null")
        name = self.username
        ok = name is None or (isinstance(name, str) and 0 < len(name) <= 128
                              and name.isprintable() and ":" not in name)  # fmt: skip
        check(ok, "username", name, "a broker user name (1..128 printable characters, no ':')")


@dataclass(frozen=True)
class Identity:
    site: str
    device_id: str
    stream_id: str


@dataclass(frozen=True)
class Cut:
    identity: Identity
    episode_id: str
    event_type: str
    event_start_sample: int
    start_sample: int
    start_utc: str
    sample_rate_hz: int
    samples: np.ndarray  # int16, the clip's audio
    outputs: tuple[str, ...]
    first_frame_sample: int
    frame_samples: int
    frames: np.ndarray  # (n, O) float32 probabilities (NaN: never described)
    event_end_sample: int | None

    def encode(self) -> Clip:
        """The :class:`Clip`: 16-bit FLAC of the samples, the frames as bytes."""
        ident = self.identity
        return Clip(
            site=ident.site, device_id=ident.device_id, stream_id=ident.stream_id,
            episode_id=self.episode_id, event_type=self.event_type,
            event_start_sample=self.event_start_sample, start_sample=self.start_sample,
            start_utc=self.start_utc, sample_rate_hz=self.sample_rate_hz,
            flac=encode_flac(self.samples, self.sample_rate_hz), outputs=self.outputs,
            first_frame_sample=self.first_frame_sample, frame_samples=self.frame_samples,
            frames=quantise(self.frames), event_end_sample=self.event_end_sample,
        )  # fmt: skip


@dataclass
class _Capture:
    episode_id: str
    event_type: str
    event_start: int
    start: int  # first sample of the clip
    limit: int  # its end at the latest (start + max)
    end: int | None = None  # its end once the event's end is known
    event_end: int | None = None  # the event's end


class ClipRecorder:
    def __init__(
        self,
        config: EvidenceConfig,
        identity: Identity,
        rate_hz: int,
        grid: FrameGrid,
        outputs: Sequence[str],
        utc_of: Callable[[int], str],
    ) -> None:
        self.config, self.identity, self.rate_hz, self.grid = config, identity, rate_hz, grid
        self.outputs, self.utc_of = tuple(outputs), utc_of
        self._audio = np.zeros(round(config.history_s * rate_hz), np.int16)
        self._audio_end = 0  # the next sample's index on the bed's timeline
        frames = int(np.ceil(config.history_s * rate_hz / grid.frame_samples)) + 1
        self._frames = np.full((frames, len(outputs)), np.nan, np.float32)
        self._frames_end = 0  # the next output frame's index
        self._open: dict[str, _Capture] = {}
        self.lost = 0  # clips whose audio had left the history before they could be cut

    @property
    def oldest_sample(self) -> int:
        return max(0, self._audio_end - self._audio.shape[0])

    def audio(self, first_sample: int, samples: np.ndarray) -> None:
        """A jump forward leaves zeros (as the model was given); kept samples are not rewritten."""
        if first_sample > self._audio_end:
            gap = min(first_sample - self._audio_end, self._audio.shape[0])
            _write_ring(self._audio, first_sample - gap, np.zeros(gap, np.float32))
        skip = max(0, self._audio_end - first_sample)
        if samples.shape[0] > skip:
            _write_ring(self._audio, first_sample + skip, samples[skip:])
        self._audio_end = max(self._audio_end, first_sample + samples.shape[0])

    def frames(self, first_frame: int, probs: np.ndarray) -> None:
        if probs.shape[0]:
            _put_ring(self._frames, first_frame, probs)
            self._frames_end = max(self._frames_end, first_frame + probs.shape[0])

    def events(self, events: Sequence[Event]) -> None:
        cfg = self.config
        for event in events:
            if event.start_sample is None:
                continue
            capture = self._open.get(event.episode_id)
            if event.state == "onset" and capture is None and self._wanted(event):
                start = max(event.start_sample - round(cfg.pre_s * self.rate_hz),
                            self.oldest_sample)  # fmt: skip
                self._open[event.episode_id] = _Capture(
                    event.episode_id, event.type, event.start_sample, start,
                    start + round(cfg.max_s * self.rate_hz),
                )  # fmt: skip
            elif capture is not None and capture.end is None:
                end = _end_of(event)
                if end is not None:
                    capture.event_end = end
                    capture.end = min(end + round(cfg.post_s * self.rate_hz), capture.limit)

    def _wanted(self, event: Event) -> bool:
        technical = event.kind == "technical" and event.priority in self.config.alarm_priorities
        return event.kind == "physiological" or technical

    def due_cuts(self) -> list[Cut]:
        """The clips whose end the audio has reached (those whose audio is gone: ``lost``)."""
        ready = [c for c in self._open.values() if self._audio_end >= (c.end or c.limit)]
        return [cut for c in ready if (cut := self._cut(c, c.end or c.limit)) is not None]

    def finish_cuts(self) -> list[Cut]:
        """The stream ended: every open clip, cut at the audio there is."""
        captures = list(self._open.values())
        cuts = [self._cut(c, min(c.end or c.limit, self._audio_end)) for c in captures]
        return [c for c in cuts if c is not None]

    def due(self) -> list[Clip]:
        return [cut.encode() for cut in self.due_cuts()]

    def finish(self) -> list[Clip]:
        return [cut.encode() for cut in self.finish_cuts()]

    def _cut(self, capture: _Capture, end: int) -> Cut | None:
        del self._open[capture.episode_id]
        start = max(capture.start, self.oldest_sample)
        if end <= start:
            self.lost += 1
            return None
        first, last = self._frame_span(start, end)
        return Cut(
            identity=self.identity, episode_id=capture.episode_id,
            event_type=capture.event_type, event_start_sample=capture.event_start,
            start_sample=start, start_utc=self.utc_of(start), sample_rate_hz=self.rate_hz,
            samples=_take_ring(self._audio, start, end), outputs=self.outputs,
            first_frame_sample=self.grid.start_sample(first) - start,
            frame_samples=self.grid.frame_samples, frames=_take_ring(self._frames, first, last),
            event_end_sample=capture.event_end,
        )  # fmt: skip

    def _frame_span(self, start: int, end: int) -> tuple[int, int]:
        """The output frames kept that overlap ``[start, end)``."""
        step, offset = self.grid.frame_samples, self.grid.offset_samples
        first = max(0, (start - offset) // step, self._frames_end - self._frames.shape[0])
        last = min(self._frames_end, -(-(end - offset) // step))
        return first, max(first, last)


def _take_ring(ring: np.ndarray, start: int, end: int) -> np.ndarray:
    """Items ``start .. end-1`` of a ring indexed modulo its length (at most one lap)."""
    size = ring.shape[0]
    first, n = start % size, end - start
    if first + n <= size:
        return ring[first : first + n].copy()
    return np.concatenate((ring[first:], ring[: first + n - size]))


def _put_ring(ring: np.ndarray, start: int, rows: np.ndarray) -> None:
    """Write ``rows`` at ring positions ``start, start + 1, ...`` (the last lap's worth)."""
    size = ring.shape[0]
    if rows.shape[0] > size:
        start, rows = start + rows.shape[0] - size, rows[-size:]
    first, n = start % size, rows.shape[0]
    head = min(n, size - first)
    ring[first : first + head] = rows[:head]
    ring[: n - head] = rows[head:]


@njit(cache=True)
def _write_ring(ring: np.ndarray, at: int, samples: np.ndarray) -> None:
    """``samples`` as int16 into ``ring`` from sample ``at`` (the last ring's worth)."""
    size = ring.shape[0]
    n = samples.shape[0]
    first = max(0, n - size)
    place = (at + first) % size
    for i in range(first, n):
        value = min(max(samples[i], -1.0), 1.0) * INT16_SCALE
        ring[place] = np.int16(round(value))
        place = place + 1 if place + 1 < size else 0


def _end_of(event: Event) -> int | None:
    """Where an event's condition ended: its ``ended``, or the ``ongoing`` that latched it."""
    if event.state == "ended":
        return event.end_sample
    end = event.detail.get("condition_end_sample") if event.detail.get("latched") else None
    return int(end) if isinstance(end, int) else None
