"""What a stethoscope sends, frame by frame, and when (the emulator's device half). Send times
run on a clock ``drift_ppm`` fast; with a ``session`` the frames are version 2 (the sequence is
the session's 64-bit counter, from 0). soundfile is imported on first use."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from firmware_bridge.errors import BridgeError
from firmware_bridge.protocol import (
    BYTES_PER_SAMPLE,
    FLAG_STREAM_START,
    FULL_SCALE,
    MAX_PAYLOAD_BYTES,
    MAX_PAYLOAD_V2_BYTES,
    MIN_DEVICE_KEY_BYTES,
    U32_MAX,
    DeviceInfo,
    DeviceStatus,
    Frame,
    SampleFormat,
    audio_frame,
    device_info_frame,
    heartbeat_frame,
    status_frame,
)

EMULATOR_INFO = DeviceInfo(firmware_version=(1, 0, 0), hardware_revision=1, model="lungwatch-emu")
BATTERY_DRAIN_PERCENT_PER_S = 1.0 / 600.0  # 1 % per 10 minutes
CLOSING_HEARTBEATS = 3  # the end-of-audio marker, sent three times against loss
PPM = 1e-6


@dataclass(frozen=True)
class DeviceConfig:
    device_id: int = 1
    stream_id: int = 0
    frame_samples: int = 256
    sample_format: int = SampleFormat.INT16
    drift_ppm: float = 0.0
    status_every_s: float = 1.0
    off_body_s: tuple[float, float] | None = None  # audio time reported off body
    key: bytes | None = None  # v1: HMAC key (frames carry a tag); v2: the device key
    session: int | None = None  # v2: the session (the device's persisted counter); None: v1

    def __post_init__(self) -> None:
        width = BYTES_PER_SAMPLE.get(self.sample_format)  # type: ignore[call-overload]
        if width is None:
            raise BridgeError(f"sample_format must be 1, 2 or 3, got {self.sample_format}")
        limit = (MAX_PAYLOAD_BYTES if self.session is None else MAX_PAYLOAD_V2_BYTES) // width
        if not 1 <= self.frame_samples <= limit:
            raise BridgeError(
                f"frame_samples must be in [1, {limit}] for this format and protocol version, "
                f"got {self.frame_samples}"
            )
        if self.session is not None and not 0 <= self.session <= U32_MAX:
            raise BridgeError(f"session must be in [0, {U32_MAX}], got {self.session}")
        if self.session is not None and (self.key is None or len(self.key) < MIN_DEVICE_KEY_BYTES):
            raise BridgeError(
                f"a v2 device (session set) needs a key of at least {MIN_DEVICE_KEY_BYTES} bytes"
            )
        if self.status_every_s <= 0 or abs(self.drift_ppm) >= 1e5:
            raise BridgeError("status_every_s must be > 0 and |drift_ppm| < 1e5")


def device_frames(
    samples: np.ndarray, sample_rate_hz: int, config: DeviceConfig
) -> Iterator[tuple[float, Frame]]:
    """(send time in seconds since the start, frame) in the order the device sends them."""
    for t_s, frame in _frames(samples, sample_rate_hz, config):
        yield t_s, frame if config.session is None else frame._replace(session=config.session)


def _frames(
    samples: np.ndarray, sample_rate_hz: int, config: DeviceConfig
) -> Iterator[tuple[float, Frame]]:
    ids = (config.device_id, config.stream_id)
    device_rate_hz = sample_rate_hz * (1.0 + config.drift_ppm * PPM)
    n, seq = int(samples.shape[0]), 0
    info = device_info_frame(*ids, 0, 0, sample_rate_hz, EMULATOR_INFO)
    yield 0.0, info._replace(flags=FLAG_STREAM_START)
    status_every = max(int(config.status_every_s * sample_rate_hz), 1)
    fmt, clipped = config.sample_format, 0
    clip_at = FULL_SCALE[fmt] - (0 if fmt == SampleFormat.FLOAT32 else 1)  # type: ignore[index]
    for start in range(0, n, config.frame_samples):
        chunk = samples[start : start + config.frame_samples]
        end, seq = start + chunk.shape[0], seq + 1
        t_s = end / device_rate_hz
        yield t_s, audio_frame(*ids, seq, start, sample_rate_hz, chunk, fmt)
        clipped += int(np.count_nonzero(np.abs(chunk.astype(np.float64)) >= clip_at))
        if end // status_every > start // status_every or end == n:
            seq += 1
            status = _status(config, end / sample_rate_hz, clipped)
            yield t_s, status_frame(*ids, seq, end, sample_rate_hz, status)
    for _ in range(CLOSING_HEARTBEATS):
        seq += 1
        yield n / device_rate_hz, heartbeat_frame(*ids, seq, n, sample_rate_hz)


def _status(config: DeviceConfig, audio_s: float, clipped: int) -> DeviceStatus:
    battery = max(0, round(100 - audio_s * BATTERY_DRAIN_PERCENT_PER_S))
    window = config.off_body_s
    off_body = window is not None and window[0] <= audio_s < window[1]
    return DeviceStatus(battery, gain_cdb=0, clipped_samples=clipped & U32_MAX, off_body=off_body)


def read_pcm(path: Path, sample_format: int) -> tuple[np.ndarray, int]:
    """(mono samples as the device's ADC delivers them, rate): int16 / int32 (24-bit) / float32.
    A 16-bit file sent as int16 (or 24-bit as int24) keeps its exact values; other combinations
    are scaled, and multichannel audio is averaged, then rounded."""
    try:
        import soundfile as sf
    except ImportError:
        raise BridgeError(
            "the emulator reads audio with soundfile: pip install soundfile"
        ) from None
    if not Path(path).is_file():
        raise BridgeError(f"{path}: cannot read audio: no such file")
    try:
        with sf.SoundFile(str(path)) as reader:
            rate_hz, subtype = int(reader.samplerate), reader.subtype
            exact = {SampleFormat.INT16: "PCM_16", SampleFormat.INT24: "PCM_24"}
            if reader.channels == 1 and exact.get(sample_format) == subtype:  # type: ignore[call-overload]
                raw = reader.read(dtype="int16" if subtype == "PCM_16" else "int32")
                x = raw if subtype == "PCM_16" else raw >> 8
            else:
                x = reader.read(dtype="float32", always_2d=True).mean(axis=1)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise BridgeError(f"{path}: cannot read audio ({exc})") from exc
    if x.size == 0:
        raise BridgeError(f"{path}: no samples")
    if x.dtype.kind == "i":
        return x, rate_hz
    if sample_format == SampleFormat.FLOAT32:
        return x.astype(np.float32), rate_hz
    scale = FULL_SCALE[sample_format]  # type: ignore[index]
    return np.clip(np.round(x * scale), -scale, scale - 1).astype(np.int32), rate_hz
