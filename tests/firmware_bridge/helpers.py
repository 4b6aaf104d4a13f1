"""Shared by the firmware-bridge tests: recordings, frames, and collecting a timeline."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from firmware_bridge.keys import load_key_file, provision
from firmware_bridge.protocol import Frame, audio_frame
from firmware_bridge.timeline import Report, Segment

RATE_HZ = 8000


def write_recording(
    path: Path, seconds: float, rate_hz: int = RATE_HZ, seed: int = 0
) -> np.ndarray:
    """A 16-bit mono WAV of breath-like noise; returns its int16 samples."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate_hz)
    envelope = 0.3 + 0.7 * np.sin(np.linspace(0, 6 * np.pi, n)) ** 2
    x = np.clip(rng.standard_normal(n) * 4000 * envelope, -32768, 32767).astype(np.int16)
    sf.write(str(path), x, rate_hz, subtype="PCM_16")
    return x


def audio_frames(
    samples: np.ndarray, frame_samples: int = 256, device_id: int = 1, first_seq: int = 1
) -> list[Frame]:
    """int16 samples cut into consecutive audio frames (sequence numbers from first_seq)."""
    return [
        audio_frame(
            device_id, 0, first_seq + k, start, RATE_HZ, samples[start : start + frame_samples]
        )
        for k, start in enumerate(range(0, samples.shape[0], frame_samples))
    ]


class Timeline:
    """Collects one stream's segments and reports into an array and a missing mask."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self.reports: list[Report] = []

    def take(self, items: Iterable[Segment | Report]) -> None:
        for item in items:
            (self.segments if isinstance(item, Segment) else self.reports).append(item)

    @property
    def end(self) -> int:
        return max((s.first_sample + s.samples.size for s in self.segments), default=0)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(samples, missing mask), both of length ``end``; unset samples count as missing."""
        samples = np.zeros(self.end, dtype=np.float32)
        missing = np.ones(self.end, dtype=bool)
        for s in sorted(self.segments, key=lambda s: s.first_sample):
            samples[s.first_sample : s.first_sample + s.samples.size] = s.samples
            missing[s.first_sample : s.first_sample + s.samples.size] = s.missing
        return samples, missing

    def kinds(self) -> list[str]:
        return [r.kind for r in self.reports]


def as_float(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) / np.float32(32768.0)).astype(np.float32)


def device_key(folder: Path, device_id: int = 1, name: str = "device.key") -> tuple[Path, bytes]:
    """A provisioned key file (``lungwatch bridge provision``) and its key."""
    path = folder / name
    provision(device_id, path)
    return path, load_key_file(path).keys[device_id]


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def collect_until(
    poll: Callable[[float], list[Any]],
    timeline: Timeline,
    done: Callable[[], bool],
    timeout_s: float,
) -> None:
    """Poll into ``timeline`` until ``done()`` or the timeout (then the caller's asserts fail)."""
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        timeline.take(poll(0.05))


class Background:
    """Run ``fn`` in a thread; ``join()`` re-raises its exception and returns its result."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._result: list[Any] = []
        self._error: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._result.append(fn())
        except BaseException as exc:  # handed to join()
            self._error.append(exc)

    def join(self, timeout_s: float = 30.0) -> Any:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError("background task did not finish")
        if self._error:
            raise self._error[0]
        return self._result[0] if self._result else None
