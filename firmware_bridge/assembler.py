"""One device stream's timeline: jitter buffer, duplicates, gaps, restarts and drift.

Frames are placed by sample index, not arrival (the rules: docs/firmware-protocol.md, 6). The hot
path (a frame at ``next``, nothing waiting) appends one tuple; float32 conversion waits for the
receiver's drain (:func:`firmware_bridge.timeline.build_outputs`)."""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any

from firmware_bridge.drift import DriftEstimator
from firmware_bridge.errors import SettingError
from firmware_bridge.protocol import (
    BYTES_PER_SAMPLE,
    FLAG_STREAM_START,
    Frame,
    FrameType,
    unpack_device_info,
    unpack_status,
)
from firmware_bridge.timeline import (
    DEVICE_INFO,
    DEVICE_STATUS,
    RATE_MISMATCH,
    RESTART,
    SIGNAL_GAP,
    Piece,
    Report,
    Segment,
    StreamKey,
    build_outputs,
)

_AUDIO = int(FrameType.AUDIO)  # a plain int: compared once per frame on the hot path
RECENT_MARKERS = 64  # marker sequence numbers remembered to drop duplicate markers
RECENT_GAPS = 64  # declared gaps remembered to tell late frames from duplicates
RESTART_MEMORY_FRAMES = 256  # a repeat of the stream-start frame this soon is a duplicate
STAT_NAMES = (
    *("frames", "samples", "duplicates", "late", "reordered", "overlaps", "gaps"),
    *("missing_samples", "jumps", "restarts", "rate_mismatches", "markers"),
)
JITTER_MINIMA = {"depth_frames": 0, "max_hold_s": 0, "max_fill_s": 0, "restart_after_frames": 1}
JITTER_MINIMA |= {"drift_window_points": 3, "drift_min_span_s": 0}


@dataclass(frozen=True)
class JitterConfig:
    depth_frames: int = 8  # frames waiting behind a hole before it is declared a gap
    max_hold_s: float = 0.25  # ... or the time the oldest of them may wait
    max_fill_s: float = 10.0  # longer gaps are timeline jumps, not silence
    restart_after_frames: int = 32  # frames in a row behind the timeline: device restarted
    drift_window_points: int = 2048
    drift_min_span_s: float = 2.0

    def __post_init__(self) -> None:
        bad = [name for name, low in JITTER_MINIMA.items() if not getattr(self, name) >= low]
        if bad:
            raise SettingError(f"jitter.{bad[0]} out of range: {getattr(self, bad[0])!r}")


@dataclass(frozen=True)
class StreamStats:
    device_id: int
    stream_id: int
    sample_rate_hz: int
    frames: int  # audio frames played out
    samples: int  # audio samples played out
    duplicates: int
    late: int  # arrived after their place was played out or declared a gap
    reordered: int  # arrived out of order but in time
    overlaps: int  # overlapped what was played out (trimmed)
    gaps: int
    missing_samples: int
    jumps: int  # gaps longer than max_fill_s (not filled)
    restarts: int
    rate_mismatches: int  # frames dropped for a sample rate other than the stream's
    markers: int  # status, heartbeat and device-info frames
    drift_ppm: float | None
    next_sample: int  # output index of the next sample


class StreamAssembler:
    def __init__(self, key: StreamKey, sample_rate_hz: int, config: JitterConfig) -> None:
        self.key, self.sample_rate_hz, self._cfg = key, sample_rate_hz, config
        self._max_fill = int(config.max_fill_s * sample_rate_hz)
        self._started = False
        self._next = -1  # device index expected next (-1 until the first frame)
        self._offset = 0  # output index = device index + offset
        self._heap: list[tuple[int, int, int, Frame, float]] = []
        self._tie = itertools.count()
        self._recent_markers: deque[int] = deque(maxlen=RECENT_MARKERS)
        self._gaps: deque[tuple[int, int]] = deque(maxlen=RECENT_GAPS)  # device index ranges
        self._max_seen = -1
        self._behind_run = 0
        # (session, sequence, first_sample) of the last stream-start frame and the frame count
        # then; v2's counter restarts at 0 each session: the session tells a start from a repeat
        self._start_id: tuple[int | None, int, int] | None = None
        self._start_frames = 0
        self._pieces: list[Piece] = []
        self.counts = dict.fromkeys(STAT_NAMES, 0)
        self.drift = DriftEstimator(config.drift_window_points, config.drift_min_span_s)
        self._drift_add = self.drift.add

    def push(self, frame: Frame, arrival_s: float) -> bool:
        """A frame of this stream (any type); True if frames now wait in the jitter buffer.
        Only the depth rule applies here: call :meth:`poll` once the read's frames are placed."""
        first = frame.first_sample
        if (
            first == self._next  # never before the first frame: _next is -1 then
            and frame.frame_type == _AUDIO
            and not self._heap
            and frame.sample_rate_hz == self.sample_rate_hz
        ):  # the common case, inlined: in order, nothing held
            count = frame.sample_count
            piece = ("audio", first + self._offset, count, frame.sample_format, frame.payload)
            self._pieces.append(piece)
            self._next = first + count
            self.counts["frames"] += 1
            self.counts["samples"] += count
            self._max_seen, self._behind_run = first, 0
            self._drift_add(first + count, arrival_s)  # sent once complete
            return False
        self._push_slow(frame, arrival_s)
        return bool(self._heap)

    def _push_slow(self, frame: Frame, arrival_s: float) -> None:
        if frame.sample_rate_hz != self.sample_rate_hz:
            self._rate_mismatch(frame)
            return
        if not self._started:
            self._start(frame.first_sample)
            if frame.flags & FLAG_STREAM_START:
                self._start_id = (frame.session, frame.sequence, frame.first_sample)
        elif frame.flags & FLAG_STREAM_START and self._is_restart(frame):
            self._restart(frame.first_sample)
            self._start_id = (frame.session, frame.sequence, frame.first_sample)
        if frame.frame_type == FrameType.AUDIO:
            self._push_audio(frame, arrival_s)
        else:
            self._push_marker(frame, arrival_s)
        self._release()

    def poll(self, now_s: float) -> None:
        """Declare gaps whose frames have waited ``max_hold_s`` by ``now_s``."""
        self._release(now_s)

    def finish(self) -> None:
        """No more frames will come: play out everything held, declaring the gaps."""
        self._release(force=True)

    @property
    def next_sample(self) -> int:
        return self._next + self._offset if self._started else 0

    @property
    def pending(self) -> bool:
        """Whether :meth:`drain` has something to return."""
        return bool(self._pieces)

    def take_pieces(self) -> list[Piece]:
        """The raw pieces since the last take (see :mod:`firmware_bridge.timeline`)."""
        pieces, self._pieces = self._pieces, []
        return pieces

    def drain(self) -> list[Segment | Report]:
        """Timeline order; contiguous audio of one format is merged into one segment."""
        return build_outputs([(self.key, self.sample_rate_hz, self.take_pieces())])

    def stats(self) -> StreamStats:
        return StreamStats(
            *(self.key.device_id, self.key.stream_id, self.sample_rate_hz),
            **self.counts,
            drift_ppm=self.drift.drift_ppm(self.sample_rate_hz),
            next_sample=self.next_sample,
        )

    def _report(self, kind: str, device_index: int, **detail: Any) -> None:
        self._pieces.append(("report", Report(self.key, kind, device_index + self._offset, detail)))

    def _start(self, first_sample: int) -> None:
        joining = first_sample > self._max_fill
        self._started = True
        self._start_frames = self.counts["frames"]
        self._next = first_sample if joining else 0
        self._offset = -first_sample if joining else 0

    def _is_restart(self, frame: Frame) -> bool:
        """A stream-start frame behind the timeline is a restart unless it repeats the last
        one (a duplicate arriving late) while that is recent."""
        if frame.first_sample >= self._next:
            return False
        recent = self.counts["frames"] - self._start_frames < RESTART_MEMORY_FRAMES
        return not (
            recent and self._start_id == (frame.session, frame.sequence, frame.first_sample)
        )

    def _restart(self, first_sample: int) -> None:
        """The device restarted its sample clock: continue the output where it is."""
        self._release(force=True)
        next_out = self._next + self._offset
        self._next, self._offset = first_sample, next_out - first_sample
        self._recent_markers.clear()
        self._gaps.clear()
        self._max_seen, self._behind_run = -1, 0
        self.drift.reset()
        self._start_frames = self.counts["frames"]
        self.counts["restarts"] += 1
        self._report(RESTART, first_sample)

    def _rate_mismatch(self, frame: Frame) -> None:
        self.counts["rate_mismatches"] += 1
        if self.counts["rate_mismatches"] == 1:
            rates = {"frame_rate_hz": frame.sample_rate_hz, "stream_rate_hz": self.sample_rate_hz}
            self._report(RATE_MISMATCH, self._next, **rates)

    def _push_audio(self, frame: Frame, arrival_s: float) -> None:
        if frame.first_sample + frame.sample_count <= self._next:
            self._behind(frame)
            return
        if any(e[0] == frame.first_sample and e[1] == 0 for e in self._heap):  # held already
            self.counts["duplicates"] += 1
            return
        self._behind_run = 0
        if frame.first_sample < self._max_seen:
            self.counts["reordered"] += 1
        else:
            self._max_seen = frame.first_sample
            self.drift.add(frame.first_sample + frame.sample_count, arrival_s)
        heapq.heappush(self._heap, (frame.first_sample, 0, next(self._tie), frame, arrival_s))

    def _behind(self, frame: Frame) -> None:
        """A frame wholly behind ``next``: late if it falls in a declared gap, else a
        duplicate; many in a row mean the device restarted without our seeing the flag."""
        self._behind_run += 1
        if self._behind_run >= self._cfg.restart_after_frames:
            self._restart(frame.first_sample)
            self._play(frame)
            return
        start, end = frame.first_sample, frame.first_sample + frame.sample_count
        late = any(a < end and start < b for a, b in self._gaps)
        self.counts["late" if late else "duplicates"] += 1

    def _push_marker(self, frame: Frame, arrival_s: float) -> None:
        if frame.sequence in self._recent_markers:
            self.counts["duplicates"] += 1
            return
        self._recent_markers.append(frame.sequence)
        self.counts["markers"] += 1
        if frame.first_sample <= self._next:
            self._apply_marker(frame)
        else:
            heapq.heappush(self._heap, (frame.first_sample, 1, next(self._tie), frame, arrival_s))

    def _apply_marker(self, frame: Frame) -> None:
        index = min(frame.first_sample, self._next)
        if frame.frame_type == FrameType.STATUS:
            self._report(DEVICE_STATUS, index, **vars(unpack_status(frame.payload)))
        elif frame.frame_type == FrameType.DEVICE_INFO:
            self._report(DEVICE_INFO, index, **vars(unpack_device_info(frame.payload)))

    def _release(self, now_s: float | None = None, force: bool = False) -> None:
        """The hole before the first held frame becomes a gap when ``force``, when more than
        ``depth_frames`` wait, or, given ``now_s``, when the oldest has waited ``max_hold_s``."""
        heap = self._heap
        while heap:
            index = heap[0][0]
            if index > self._next:
                if not (force or self._hole_due(now_s)):
                    return
                self._gap(index)
            frame = heapq.heappop(heap)[3]
            if frame.frame_type != FrameType.AUDIO:
                self._apply_marker(frame)
            elif frame.first_sample + frame.sample_count <= self._next:
                self.counts["late"] += 1  # covered by an overlapping frame played before it
            else:
                self._play(frame)

    def _hole_due(self, now_s: float | None) -> bool:
        if len(self._heap) > self._cfg.depth_frames:
            return True
        return now_s is not None and now_s - min(e[4] for e in self._heap) >= self._cfg.max_hold_s

    def _gap(self, index: int) -> None:
        missing = index - self._next
        filled = missing <= self._max_fill
        self._report(SIGNAL_GAP, self._next, missing_samples=missing, filled=filled)
        if filled:  # else the output timeline jumps, as the device's did
            self._pieces.append(("missing", self._next + self._offset, missing))
        self._gaps.append((self._next, index))
        self.counts["gaps"] += 1
        self.counts["missing_samples"] += missing
        self.counts["jumps"] += 0 if filled else 1
        self._next = index

    def _play(self, frame: Frame) -> None:
        """Append an audio frame at ``next`` (trimming any part already played)."""
        skip = self._next - frame.first_sample
        payload, count = frame.payload, frame.sample_count
        if skip > 0:
            self.counts["overlaps"] += 1
            width = BYTES_PER_SAMPLE[frame.sample_format]  # type: ignore[index]
            payload, count = payload[skip * width :], count - skip
        self._pieces.append(
            ("audio", self._next + self._offset, count, frame.sample_format, payload)
        )
        self._next += count
        self.counts["frames"] += 1
        self.counts["samples"] += count
