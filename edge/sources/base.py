"""The audio source interface: files, microphones and wearable stethoscopes look the same.

A source delivers mono float32 :class:`SourceChunk` s on a sample-accurate timeline, so a gap
is visible as a jump or as a chunk of silence marked ``missing``; technical conditions travel
with the chunk as :class:`Notice` s. Nothing is dropped silently."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lungwatch.errors import LungwatchError


class SourceError(LungwatchError):
    """A source cannot be opened or failed for good (the message names the source)."""


class SourceEnded(LungwatchError):  # noqa: N818 (an end-of-stream signal, like StopIteration)
    """Raised by :meth:`AudioSource.read` once a finite source (a file) has been consumed."""


@dataclass(frozen=True)
class Notice:
    """A technical condition reported by a source; ``kind``: ``signal_gap`` (``detail`` has
    ``missing_samples``), ``overflow``, ``disconnected`` / ``reconnected``, ``device_status``
    or ``stalled``."""

    kind: str
    sample_index: int  # where on the stream's timeline it applies
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceChunk:
    samples: np.ndarray  # float32, shape (n,), mono, at the source's sample_rate_hz
    first_sample: int  # index of samples[0] on the stream's timeline
    missing: bool = False  # True: the samples are silence standing in for lost audio
    notices: tuple[Notice, ...] = ()
    # when its last sample was captured on the source's clock (time.monotonic unless injected),
    # for the runtime's read wait; None where unknown (a file read as fast as possible, bridge)
    captured_s: float | None = None


@runtime_checkable
class AudioSource(Protocol):
    stream_id: str
    sample_rate_hz: int

    def read(self, timeout_s: float) -> SourceChunk | None:
        """The next chunk, or None if none arrived within ``timeout_s``; :class:`SourceEnded`
        once a finite source is exhausted."""
        ...

    def close(self) -> None: ...
