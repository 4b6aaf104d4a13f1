"""Hypothesis strategies: arbitrary valid frames, byte streams and chunkings."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from firmware_bridge.protocol import (
    BYTES_PER_SAMPLE,
    FLAG_STREAM_START,
    MAX_MODEL_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_PAYLOAD_V2_BYTES,
    MAX_SAMPLE_RATE_HZ,
    U16_MAX,
    U32_MAX,
    U64_MAX,
    DeviceInfo,
    DeviceStatus,
    Frame,
    FrameType,
    SampleFormat,
    audio_frame,
    device_info_frame,
    heartbeat_frame,
    status_frame,
)

FORMATS = (SampleFormat.INT16, SampleFormat.INT24, SampleFormat.FLOAT32)


@st.composite
def samples(draw: st.DrawFn, sample_format: int, max_bytes: int = MAX_PAYLOAD_BYTES) -> np.ndarray:
    count = draw(st.integers(1, max_bytes // BYTES_PER_SAMPLE[SampleFormat(sample_format)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if sample_format == SampleFormat.INT16:
        return rng.integers(-(2**15), 2**15, count).astype(np.int16)
    if sample_format == SampleFormat.INT24:
        return rng.integers(-(2**23), 2**23, count).astype(np.int32)
    return rng.uniform(-1, 1, count).astype(np.float32)


statuses = st.builds(
    DeviceStatus,
    battery_percent=st.none() | st.integers(0, 100),
    gain_cdb=st.integers(-(2**15), 2**15 - 1),
    clipped_samples=st.integers(0, U32_MAX),
    off_body=st.none() | st.booleans(),
)
models = st.text(max_size=MAX_MODEL_BYTES // 4)
infos = st.builds(
    DeviceInfo,
    firmware_version=st.tuples(*[st.integers(0, 255)] * 3),
    hardware_revision=st.integers(0, 255),
    model=models,
)


@st.composite
def frames(draw: st.DrawFn, small_ids: bool = False, version: int = 1) -> Frame:
    """Any valid frame (``small_ids``: few devices and streams, as on a real link; ``version``
    2: a session, a 64-bit counter and v2's payload limit)."""
    ids = (
        draw(st.integers(0, 3) if small_ids else st.integers(0, U32_MAX)),
        draw(st.integers(0, 1) if small_ids else st.integers(0, U16_MAX)),
        draw(st.integers(0, U32_MAX if version == 1 else U64_MAX)),
        draw(st.integers(0, U64_MAX)),
        draw(st.integers(1, MAX_SAMPLE_RATE_HZ)),
    )
    flags = draw(st.sampled_from([0, FLAG_STREAM_START]))
    kind = draw(st.sampled_from(list(FrameType)))
    if kind == FrameType.AUDIO:
        fmt = draw(st.sampled_from(FORMATS))
        limit = MAX_PAYLOAD_BYTES if version == 1 else MAX_PAYLOAD_V2_BYTES
        frame = audio_frame(*ids, draw(samples(fmt, limit)), fmt, flags)
    elif kind == FrameType.STATUS:
        frame = status_frame(*ids, draw(statuses))._replace(flags=flags)
    elif kind == FrameType.DEVICE_INFO:
        frame = device_info_frame(*ids, draw(infos))._replace(flags=flags)
    else:
        frame = heartbeat_frame(*ids)._replace(flags=flags)
    return frame if version == 1 else frame._replace(session=draw(st.integers(0, U32_MAX)))


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    """``data`` cut in pieces whose sizes cycle through ``sizes`` (each >= 1)."""
    out, start, i = [], 0, 0
    while start < len(data):
        size = max(1, sizes[i % len(sizes)])
        out.append(data[start : start + size])
        start, i = start + size, i + 1
    return out


chunk_sizes = st.lists(st.integers(1, 3000), min_size=1, max_size=8)
keys = st.none() | st.binary(min_size=1, max_size=100)
device_keys = st.binary(min_size=16, max_size=64)  # v2 device keys
