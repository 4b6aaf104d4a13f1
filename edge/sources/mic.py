"""A microphone (any PortAudio input device) as an audio source, through pyaudio.

Device: None (PortAudio's default input), an index, or a name: an exact (case-insensitive) match,
else the only device whose name contains it; otherwise the error lists the inputs. Rate: the model's
when the device supports it, else the device's default, converted by :class:`StreamingResampler`.

Capture is 16-bit mono in blocking mode. A block's ``captured_s`` is the read's time less the audio
still buffered behind it (PortAudio's own input latency not counted). An input overflow (PortAudio
dropped audio because we read late) is an ``overflow`` notice and its block a ``missing`` chunk of
zeros (``exception_on_overflow=False`` would hide the loss), so the timeline stays sample-accurate.
A failing stream is a disconnect: one empty chunk carries a ``disconnected`` notice, reopening is
tried every ``reopen_interval_s``, and the first chunk after it carries ``reconnected`` (with
``missing_samples``, the wall-clock length of the outage) and a timeline jump of that length."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
from numba import njit
from scipy.signal import firwin

from edge.audio import to_float32
from edge.sources.base import Notice, SourceChunk, SourceError

INSTALL_HINT = "pip install 'lungwatch[mic]' (and apt install portaudio19-dev)"
DEFAULT_CHUNK_SAMPLES = 800
DEFAULT_REOPEN_INTERVAL_S = 2.0
POLL_FRACTION = 0.25  # poll for audio every quarter of a block
KAISER_BETA = 5.0  # resample_poly's default window ("kaiser", 5.0)
HALF_LEN_PER_RATE = 10  # resample_poly: half_len = 10 * max(up, down)
N_IN, N_OUT = 0, 1  # counter slots of the resampler kernel


def import_pyaudio() -> ModuleType:
    try:
        import pyaudio
    except ImportError:
        raise SourceError(f"microphone input needs pyaudio: {INSTALL_HINT}") from None
    return pyaudio


@njit(cache=True)
def _resample_push(x, out, ring, counters, taps, up, down, half_len):
    """Output ``m`` is ``sum_q taps[m*down + half_len - up*q] * x[q]``, emitted once its last
    input arrived; returns the number written to ``out``."""
    size = ring.shape[0]
    n_in, n_out, written = counters[N_IN], counters[N_OUT], 0
    for i in range(x.shape[0]):
        ring[n_in % size] = x[i]
        n_in += 1
        while (n_out * down + half_len) // up < n_in:
            centre = n_out * down + half_len
            q_hi = centre // up
            q_lo = max(0, -((half_len - n_out * down) // up))  # ceil((m*down - half_len)/up)
            acc = 0.0
            for q in range(q_lo, q_hi + 1):
                acc += taps[centre - up * q] * ring[q % size]
            out[written] = acc
            written += 1
            n_out += 1
    counters[N_IN], counters[N_OUT] = n_in, n_out
    return written


class StreamingResampler:
    """``from_hz`` -> ``to_hz`` chunk by chunk, equal to ``resample_poly`` on the whole signal
    but for the last ``half_len / up`` inputs, still in the filter."""

    def __init__(self, from_hz: int, to_hz: int, max_chunk_samples: int = 4096) -> None:
        divisor = math.gcd(from_hz, to_hz)
        self.up, self.down = to_hz // divisor, from_hz // divisor
        rate = max(self.up, self.down)
        self.half_len = HALF_LEN_PER_RATE * rate
        taps = firwin(2 * self.half_len + 1, 1.0 / rate, window=("kaiser", KAISER_BETA))
        self._taps = np.ascontiguousarray(taps * self.up, dtype=np.float64)
        self._ring = np.zeros(self._taps.shape[0] // self.up + 2, dtype=np.float64)
        self._counters = np.zeros(2, dtype=np.int64)
        self._grow(max_chunk_samples)

    def _grow(self, n_in: int) -> None:
        self._out = np.zeros(-(-n_in * self.up // self.down) + 2, dtype=np.float32)

    def push(self, x: np.ndarray) -> np.ndarray:
        """Resampled samples now available (a view valid until the next push)."""
        if -(-x.shape[0] * self.up // self.down) + 2 > self._out.shape[0]:
            self._grow(x.shape[0])
        n = _resample_push(
            x, self._out, self._ring, self._counters, self._taps, self.up, self.down, self.half_len
        )
        return self._out[:n]

    def reset(self) -> None:
        self._ring[:] = 0.0
        self._counters[:] = 0


def input_devices(pa: Any) -> list[tuple[int, str, int]]:
    infos = (pa.get_device_info_by_index(i) for i in range(pa.get_device_count()))
    return [
        (int(d["index"]), str(d["name"]), int(d["defaultSampleRate"]))
        for d in infos
        if int(d["maxInputChannels"]) > 0
    ]


def resolve_device(pa: Any, device: str | int | None) -> tuple[int, str]:
    devices = input_devices(pa)
    listing = "; ".join(f"{i}: {name} ({rate} Hz)" for i, name, rate in devices) or "none"
    if device is None:
        try:
            info = pa.get_default_input_device_info()
        except OSError:
            raise SourceError(f"mic: no default input device; inputs: {listing}") from None
        return int(info["index"]), str(info["name"])
    if isinstance(device, int):
        found = [(i, name) for i, name, _ in devices if i == device]
    else:
        wanted = device.casefold()
        found = [(i, name) for i, name, _ in devices if name.casefold() == wanted]
        found = found or [(i, name) for i, name, _ in devices if wanted in name.casefold()]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise SourceError(f"mic: {what} input device matches {device!r}; inputs: {listing}")
    return found[0]


def negotiate_rate(pa: Any, pyaudio: ModuleType, index: int, wanted_hz: int) -> int:
    with contextlib.suppress(ValueError):  # pyaudio's way of saying "not supported"
        if pa.is_format_supported(
            wanted_hz, input_device=index, input_channels=1, input_format=pyaudio.paInt16
        ):
            return wanted_hz
    return int(pa.get_device_info_by_index(index)["defaultSampleRate"])


class MicSource:
    def __init__(
        self,
        device: str | int | None,
        stream_id: str,
        sample_rate_hz: int,
        chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
        *,
        device_rate_hz: int | None = None,
        reopen_interval_s: float = DEFAULT_REOPEN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if chunk_samples < 1:
            raise SourceError(f"mic {device!r}: chunk_samples must be >= 1, got {chunk_samples}")
        self._pyaudio = import_pyaudio()
        self.device, self.stream_id = device, stream_id
        self.sample_rate_hz, self.chunk_samples = sample_rate_hz, chunk_samples
        self._forced_rate_hz = device_rate_hz
        self.reopen_interval_s, self._clock = reopen_interval_s, clock
        self._pa: Any = self._pyaudio.PyAudio()
        self._stream: Any = None
        self._next_sample = 0
        self._down_since_s = 0.0
        self._last_attempt_s = -math.inf
        self._open()

    def _open(self) -> None:
        index, self.device_name = resolve_device(self._pa, self.device)
        rate = self._forced_rate_hz or negotiate_rate(
            self._pa, self._pyaudio, index, self.sample_rate_hz
        )
        self.device_rate_hz = rate
        self._block = max(1, round(self.chunk_samples * rate / self.sample_rate_hz))
        self._resampler: StreamingResampler | None = None
        if rate != self.sample_rate_hz:
            self._resampler = StreamingResampler(rate, self.sample_rate_hz, self._block)
        try:
            self._stream = self._pa.open(
                format=self._pyaudio.paInt16,
                channels=1,
                rate=rate,
                input=True,
                input_device_index=index,
                frames_per_buffer=self._block,
            )
        except (OSError, ValueError) as exc:
            raise SourceError(
                f"mic {self.device_name!r}: cannot open at {rate} Hz ({exc})"
            ) from exc

    def read(self, timeout_s: float) -> SourceChunk | None:
        if self._stream is None:
            return self._reopen(timeout_s)
        deadline_s = self._clock() + timeout_s
        while True:
            try:
                available = self._stream.get_read_available()
            except OSError as exc:
                return self._disconnect(str(exc))
            if available >= self._block:
                lag_s = (available - self._block) / self.device_rate_hz
                return self._read_block(self._clock() - lag_s)
            if not self._stream.is_active():
                return self._disconnect("stream stopped")
            remaining_s = deadline_s - self._clock()
            if remaining_s <= 0.0:
                return None
            time.sleep(min(remaining_s, POLL_FRACTION * self._block / self.device_rate_hz))

    def _read_block(self, captured_s: float) -> SourceChunk:
        try:
            data = self._stream.read(self._block, exception_on_overflow=True)
        except OSError as exc:
            if exc.errno != self._pyaudio.paInputOverflowed:
                return self._disconnect(str(exc))
            notice = Notice("overflow", self._next_sample, {"device_samples": self._block})
            zeros = np.zeros(self._block, dtype=np.float32)
            return self._chunk(zeros, missing=True, notices=(notice,), captured_s=captured_s)
        samples = to_float32(np.frombuffer(data, dtype="<i2"), source="mic")
        return self._chunk(samples, captured_s=captured_s)

    @property
    def resampler_half_len(self) -> int:
        """Half length of the resampling filter in device samples (0 without resampling)."""
        return 0 if self._resampler is None else self._resampler.half_len

    def _chunk(
        self,
        x: np.ndarray,
        missing: bool = False,
        notices: tuple[Notice, ...] = (),
        captured_s: float | None = None,
    ) -> SourceChunk:
        samples = x if self._resampler is None else self._resampler.push(x).copy()
        chunk = SourceChunk(samples, self._next_sample, missing, notices, captured_s)
        self._next_sample += samples.shape[0]
        return chunk

    def _disconnect(self, reason: str) -> SourceChunk:
        self._close_stream()
        self._down_since_s = self._last_attempt_s = self._clock()
        notice = Notice("disconnected", self._next_sample, {"reason": reason})
        return SourceChunk(np.zeros(0, np.float32), self._next_sample, notices=(notice,))

    def _reopen(self, timeout_s: float) -> SourceChunk | None:
        wait_s = self._last_attempt_s + self.reopen_interval_s - self._clock()
        if wait_s > 0.0:
            time.sleep(min(wait_s, max(0.0, timeout_s)))
            if wait_s > timeout_s:
                return None
        self._last_attempt_s = self._clock()
        self._pa.terminate()  # a fresh PortAudio sees devices plugged in since
        self._pa = self._pyaudio.PyAudio()
        try:
            self._open()
        except SourceError:
            return None
        missing = round((self._clock() - self._down_since_s) * self.sample_rate_hz)
        self._next_sample += missing
        notice = Notice("reconnected", self._next_sample, {"missing_samples": missing})
        return SourceChunk(np.zeros(0, np.float32), self._next_sample, notices=(notice,))

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(OSError):  # a device gone already: nothing left to release
                stream.stop_stream()
                stream.close()

    def close(self) -> None:
        self._close_stream()
        self._pa.terminate()
