"""A recording as an audio source: as fast as possible, or paced in real time.

The file is read once by :func:`edge.audio.read_audio` and resampled to the model's rate (the
same samples training sees). Chunks are read-only views of it on a timeline that starts at 0;
with ``loop`` the timeline keeps counting across repetitions. In real time, a chunk is handed
out once its last sample would have been captured: at ``t0 + (first_sample + n) / rate`` on the
monotonic clock, ``t0`` being the first :meth:`FileSource.read`, and that moment is the
chunk's ``captured_s``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge.audio import read_audio
from edge.sources.base import SourceChunk, SourceEnded, SourceError
from lungwatch.errors import AudioError

DEFAULT_CHUNK_SAMPLES = 800  # 0.1 s at 8 kHz


class FileSource:
    def __init__(
        self,
        path: str | Path,
        stream_id: str,
        sample_rate_hz: int,
        chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
        realtime: bool = False,
        loop: bool = False,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if chunk_samples < 1:
            raise SourceError(f"{path}: chunk_samples must be >= 1, got {chunk_samples}")
        self.path = Path(path)
        self.stream_id = stream_id
        self.sample_rate_hz = sample_rate_hz
        self.chunk_samples = chunk_samples
        self.realtime, self.loop = realtime, loop
        try:
            self._samples = read_audio(self.path, target_rate_hz=sample_rate_hz).samples
        except AudioError as exc:
            raise SourceError(str(exc)) from exc
        self._samples.setflags(write=False)
        self._clock, self._sleep = clock, sleep
        self._pos = 0  # index into the file
        self._next_sample = 0  # index on the stream's timeline
        self._t0: float | None = None

    @property
    def samples(self) -> np.ndarray:
        """The whole recording at ``sample_rate_hz`` (read-only)."""
        return self._samples

    def read(self, timeout_s: float) -> SourceChunk | None:
        """None if (in real time) not due within ``timeout_s``; no SourceEnded with ``loop``."""
        if self._pos >= self._samples.shape[0]:
            if not self.loop:
                raise SourceEnded(f"{self.path}: end of file after {self._next_sample} samples")
            self._pos = 0
        chunk = self._samples[self._pos : self._pos + self.chunk_samples]
        captured_s = None
        if self.realtime:
            captured_s = self._wait_until_due(chunk.shape[0], timeout_s)
            if captured_s is None:
                return None
        out = SourceChunk(samples=chunk, first_sample=self._next_sample, captured_s=captured_s)
        self._pos += chunk.shape[0]
        self._next_sample += chunk.shape[0]
        return out

    def _wait_until_due(self, n: int, timeout_s: float) -> float | None:
        """The next ``n`` samples' due moment once it has come; None if not within ``timeout_s``."""
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        due_s = self._t0 + (self._next_sample + n) / self.sample_rate_hz
        wait_s = due_s - now
        if wait_s > timeout_s:
            if timeout_s > 0.0:  # a non-blocking read (0) returns at once: no sleep(0), which
                self._sleep(timeout_s)  # yields the GIL and cost the runtime's rounds 80 us
            return None
        if wait_s > 0.0:
            self._sleep(wait_s)
        return due_s

    def close(self) -> None:
        """Nothing to release (the file was read at construction)."""
