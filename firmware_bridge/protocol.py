"""Wire protocol of the wearable stethoscope, versions 1 and 2; a :class:`Frame` with ``session``
set is a v2 frame. The normative description (byte tables, CRC, tag and AEAD parameters, limits)
is ``docs/firmware-protocol.md``; this module is its Python reference, and
``firmware_bridge/c/lungwatch_frame.c`` its C twin (byte-for-byte equal on the test vectors)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NamedTuple

import google_crc32c
import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from firmware_bridge.errors import ProtocolError

MAGIC = b"LW"
VERSION = 1  # version 1: payload in clear, optional HMAC tag
VERSION_2 = 2  # version 2: payload encrypted (ChaCha20-Poly1305), session and counter
# magic, version, frame_type, flags, sample_format, payload_bytes, device_id, stream_id,
# sample_count, sequence (v2: session), first_sample, sample_rate_hz
HEADER = struct.Struct("<2sBBBBHIHHIQI")
HEADER_BYTES = HEADER.size  # 32
# v2: the v1 fields (sequence -> session) + counter (u64)
HEADER_V2 = struct.Struct("<2sBBBBHIHHIQIQ")
HEADER_V2_BYTES = HEADER_V2.size  # 40
COUNTER = struct.Struct("<Q")  # v2's counter, at HEADER_BYTES
CRC_BYTES = 4
TAG_BYTES = 16  # v1: HMAC-SHA256 truncated to 16 bytes; v2: the Poly1305 tag (16 bytes)
CRC = struct.Struct("<I")
MAX_FRAME_BYTES = 1472  # one unfragmented UDP datagram on a 1500-byte MTU (1500 - 20 - 8)
MAX_PAYLOAD_BYTES = MAX_FRAME_BYTES - HEADER_BYTES - TAG_BYTES - CRC_BYTES  # 1420
MAX_PAYLOAD_V2_BYTES = MAX_FRAME_BYTES - HEADER_V2_BYTES - TAG_BYTES - CRC_BYTES  # 1412
NONCE = struct.Struct("<IQ")  # v2's 96-bit nonce: session, counter
SESSION_KEY_SALT = b"lungwatch v2"  # HKDF-SHA256 salt of the session key
SESSION_KEY_INFO = b"lungwatch v2 session key"  # ... info, then device, stream, session
SESSION_INFO_IDS = struct.Struct("<IHI")  # device_id, stream_id, session
MIN_DEVICE_KEY_BYTES = 16  # v2 device keys (provisioning makes 32)
MAX_SAMPLE_RATE_HZ = 384_000
MAX_MODEL_BYTES = 60
U16_MAX, U32_MAX, U64_MAX = 2**16 - 1, 2**32 - 1, 2**64 - 1

FLAG_AUTH = 0x01  # a 16-byte tag precedes the CRC (always set in v2)
FLAG_STREAM_START = 0x02  # first frame after the device (re)started this stream
KNOWN_FLAGS = FLAG_AUTH | FLAG_STREAM_START


class FrameType(IntEnum):
    AUDIO = 1
    HEARTBEAT = 2
    DEVICE_INFO = 3
    STATUS = 4


class SampleFormat(IntEnum):
    NONE = 0  # frames without samples
    INT16 = 1  # 2 bytes per sample, full scale 2**15
    INT24 = 2  # 3 bytes per sample (packed), full scale 2**23
    FLOAT32 = 3  # IEEE 754 binary32, full scale 1.0


BYTES_PER_SAMPLE = {SampleFormat.INT16: 2, SampleFormat.INT24: 3, SampleFormat.FLOAT32: 4}
FULL_SCALE = {SampleFormat.INT16: 2.0**15, SampleFormat.INT24: 2.0**23, SampleFormat.FLOAT32: 1.0}
STATUS = struct.Struct("<BBhI")  # battery_percent, status_flags, gain_cdb, clipped_samples
INFO = struct.Struct("<BBBB")  # firmware major, minor, patch, hardware revision (+ model)
BATTERY_UNKNOWN = 0xFF
STATUS_OFF_BODY = 0x01  # the contact sensor says the chest piece is not on the body
STATUS_HAS_CONTACT_SENSOR = 0x02  # STATUS_OFF_BODY is meaningful


class Frame(NamedTuple):
    """One decoded (or to-be-encoded) frame. A NamedTuple rather than a frozen dataclass:
    immutable all the same, and about 4x cheaper to build on the decoder's hot path."""

    frame_type: int
    device_id: int
    stream_id: int
    sequence: int
    first_sample: int  # audio: index of payload's first sample; else the next sample's index
    sample_rate_hz: int
    sample_format: int = SampleFormat.NONE
    sample_count: int = 0
    payload: bytes = b""
    flags: int = 0  # FLAG_STREAM_START; FLAG_AUTH is set by the encoder when given a key
    verified: bool = False  # decoder: the tag was checked against the device's key
    # v2 only (None: a v1 frame): the device's session counter; ``sequence`` is then the
    # frame's 64-bit counter within the session (the AEAD nonce is session || counter)
    session: int | None = None


@dataclass(frozen=True)
class DeviceStatus:
    battery_percent: int | None  # 0..100, None if unknown
    gain_cdb: int  # microphone gain in hundredths of a dB
    clipped_samples: int  # cumulative since the stream started (wraps at 2**32)
    off_body: bool | None  # None when the device has no contact sensor


@dataclass(frozen=True)
class DeviceInfo:
    firmware_version: tuple[int, int, int]
    hardware_revision: int
    model: str  # at most MAX_MODEL_BYTES bytes of UTF-8


def header_problem(fields: tuple[Any, ...]) -> str | None:
    """Why the 12 unpacked :data:`HEADER` ``fields`` cannot start a frame, ``"bad_header"`` or
    ``"bad_length"``; None when they can."""
    _, version, ftype, flags, fmt, nbytes, _, _, count, _, _, rate = fields
    if version not in (VERSION, VERSION_2) or not 1 <= ftype <= 4 or flags & ~KNOWN_FLAGS:
        return "bad_header"
    if version == VERSION_2 and not flags & FLAG_AUTH:
        return "bad_header"
    if not 1 <= rate <= MAX_SAMPLE_RATE_HZ:
        return "bad_header"
    if ftype == FrameType.AUDIO:
        width = BYTES_PER_SAMPLE.get(fmt)
        if width is None:
            return "bad_header"
        ok = count >= 1 and nbytes == count * width
    elif fmt != SampleFormat.NONE or count != 0:
        return "bad_header"
    elif ftype == FrameType.HEARTBEAT:
        ok = nbytes == 0
    elif ftype == FrameType.STATUS:
        ok = nbytes == STATUS.size
    else:
        ok = INFO.size <= nbytes <= INFO.size + MAX_MODEL_BYTES
    limit = MAX_PAYLOAD_BYTES if version == VERSION else MAX_PAYLOAD_V2_BYTES
    return None if ok and nbytes <= limit else "bad_length"


def compute_tag(key: bytes, signed: bytes | bytearray | memoryview) -> bytes:
    """The frame's authentication tag: HMAC-SHA256(key, header + payload)[:16]."""
    return hmac.digest(key, signed, hashlib.sha256)[:TAG_BYTES]


def session_key(device_key: bytes, device_id: int, stream_id: int, session: int) -> bytes:
    """v2's ChaCha20-Poly1305 key per (device, stream, session): docs/firmware-protocol.md, 4.3"""
    info = SESSION_KEY_INFO + SESSION_INFO_IDS.pack(device_id, stream_id, session)
    return HKDF(hashes.SHA256(), 32, SESSION_KEY_SALT, info).derive(device_key)


@functools.lru_cache(maxsize=64)
def session_cipher(
    device_key: bytes, device_id: int, stream_id: int, session: int
) -> ChaCha20Poly1305:
    """The AEAD of :func:`session_key` (cached: one derivation per session)."""
    return ChaCha20Poly1305(session_key(device_key, device_id, stream_id, session))


def encode_frame(frame: Frame, key: bytes | None = None) -> bytes:
    """The frame's bytes: v1 tagged when given a ``key``; v2 (``session`` set) encrypted under
    the device ``key``, which it requires. ProtocolError if a field does not fit."""
    v2 = frame.session is not None
    if v2 and (key is None or len(key) < MIN_DEVICE_KEY_BYTES):
        got = "none" if key is None else f"{len(key)} bytes"
        raise ProtocolError(
            f"a v2 frame (session set) needs the device key, at least {MIN_DEVICE_KEY_BYTES} "
            f"bytes, got {got}"
        )
    flags = frame.flags | FLAG_AUTH if v2 or key is not None else frame.flags & ~FLAG_AUTH
    version = VERSION_2 if v2 else VERSION
    _check_fields(frame, flags, version)
    fields = (
        *(MAGIC, version, int(frame.frame_type), flags, int(frame.sample_format)),
        *(len(frame.payload), frame.device_id, frame.stream_id, frame.sample_count),
        *(frame.sequence if frame.session is None else int(frame.session), frame.first_sample),
        frame.sample_rate_hz,
    )
    problem = header_problem(fields)
    if problem is not None:
        limit = MAX_PAYLOAD_BYTES if frame.session is None else MAX_PAYLOAD_V2_BYTES
        raise ProtocolError(
            f"frame is inconsistent ({problem}): type {frame.frame_type}, format "
            f"{frame.sample_format}, {frame.sample_count} samples, {len(frame.payload)} payload "
            f"bytes (at most {limit}), rate {frame.sample_rate_hz} Hz"
        )
    if frame.session is None or key is None:  # v1 (a v2 frame has its key by now)
        signed = HEADER.pack(*fields) + bytes(frame.payload)
        if key is not None:
            signed += compute_tag(key, signed)
        return signed + CRC.pack(google_crc32c.value(signed))
    session, counter = int(frame.session), int(frame.sequence)
    header = HEADER_V2.pack(*fields, counter)
    cipher = session_cipher(bytes(key), frame.device_id, frame.stream_id, session)
    sealed = header + cipher.encrypt(NONCE.pack(session, counter), bytes(frame.payload), header)
    return sealed + CRC.pack(google_crc32c.value(sealed))


def _check_fields(frame: Frame, flags: int, version: int = VERSION) -> None:
    v1 = version == VERSION
    limits = {"device_id": U32_MAX, "stream_id": U16_MAX, "sequence": U32_MAX if v1 else U64_MAX}
    limits |= {"first_sample": U64_MAX, "sample_count": U16_MAX, "sample_rate_hz": U32_MAX}
    limits |= {} if v1 else {"session": U32_MAX}
    for name, limit in limits.items():
        value = getattr(frame, name)
        if not isinstance(value, (int, np.integer)) or not 0 <= value <= limit:
            raise ProtocolError(f"frame.{name} must be an integer in [0, {limit}], got {value!r}")
    if flags & ~KNOWN_FLAGS:
        raise ProtocolError(f"frame.flags has unknown bits: {frame.flags:#x}")


def pack_samples(samples: np.ndarray, sample_format: int) -> bytes:
    """int16, int24 or float32 samples -> payload bytes; ProtocolError if they do not fit."""
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ProtocolError(f"samples must be 1-D, got shape {x.shape}")
    if sample_format == SampleFormat.FLOAT32:
        return x.astype("<f4").tobytes()
    if sample_format not in (SampleFormat.INT16, SampleFormat.INT24):
        raise ProtocolError(f"sample_format must be 1, 2 or 3, got {sample_format!r}")
    limit = int(FULL_SCALE[SampleFormat(sample_format)])
    if x.size and (x.dtype.kind not in "iu" or x.min() < -limit or x.max() >= limit):
        raise ProtocolError(f"samples must be integers in [-{limit}, {limit}) for the format")
    if sample_format == SampleFormat.INT16:
        return x.astype("<i2").tobytes()
    return x.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()


def to_float32(payload: bytes | memoryview, sample_format: int) -> np.ndarray:
    """Payload bytes -> float32 in [-1, 1) (integer PCM divided by its full scale)."""
    if sample_format == SampleFormat.FLOAT32:
        return np.frombuffer(payload, dtype="<f4").astype(np.float32)
    if sample_format == SampleFormat.INT16:
        pcm = np.frombuffer(payload, dtype="<i2")
    else:  # INT24: each triplet sign-extended through an int32
        triplets = np.frombuffer(payload, dtype=np.uint8).reshape(-1, 3)
        padded = np.zeros((triplets.shape[0], 4), dtype=np.uint8)
        padded[:, 1:] = triplets
        pcm = padded.view("<i4").reshape(-1) >> 8
    out = pcm.astype(np.float32)
    out *= np.float32(1.0 / FULL_SCALE[sample_format])  # type: ignore[index]
    return out


def audio_frame(
    device_id: int,
    stream_id: int,
    sequence: int,
    first_sample: int,
    sample_rate_hz: int,
    samples: np.ndarray,
    sample_format: int = SampleFormat.INT16,
    flags: int = 0,
) -> Frame:
    payload = pack_samples(samples, sample_format)
    return Frame(
        *(FrameType.AUDIO, device_id, stream_id, sequence, first_sample, sample_rate_hz),
        *(sample_format, int(np.asarray(samples).shape[0]), payload, flags),
    )


def status_frame(
    device_id: int,
    stream_id: int,
    sequence: int,
    first_sample: int,
    sample_rate_hz: int,
    status: DeviceStatus,
) -> Frame:
    return Frame(
        *(FrameType.STATUS, device_id, stream_id, sequence, first_sample, sample_rate_hz),
        payload=pack_status(status),
    )


def heartbeat_frame(
    device_id: int, stream_id: int, sequence: int, first_sample: int, sample_rate_hz: int
) -> Frame:
    """A HEARTBEAT frame: "every sample before ``first_sample`` has been sent"."""
    return Frame(FrameType.HEARTBEAT, device_id, stream_id, sequence, first_sample, sample_rate_hz)


def device_info_frame(
    device_id: int,
    stream_id: int,
    sequence: int,
    first_sample: int,
    sample_rate_hz: int,
    info: DeviceInfo,
) -> Frame:
    return Frame(
        *(FrameType.DEVICE_INFO, device_id, stream_id, sequence, first_sample, sample_rate_hz),
        payload=pack_device_info(info),
    )


def pack_status(status: DeviceStatus) -> bytes:
    battery = BATTERY_UNKNOWN if status.battery_percent is None else status.battery_percent
    if not 0 <= battery <= 100 and battery != BATTERY_UNKNOWN:
        raise ProtocolError(f"battery_percent must be in [0, 100] or None, got {battery}")
    if not -(2**15) <= status.gain_cdb < 2**15 or not 0 <= status.clipped_samples <= U32_MAX:
        raise ProtocolError(f"status gain_cdb or clipped_samples out of range: {status}")
    bits = 0 if status.off_body is None else STATUS_HAS_CONTACT_SENSOR
    bits |= STATUS_OFF_BODY if status.off_body else 0
    return STATUS.pack(battery, bits, status.gain_cdb, status.clipped_samples)


def unpack_status(payload: bytes) -> DeviceStatus:
    battery, bits, gain_cdb, clipped = STATUS.unpack(payload)
    off_body = bool(bits & STATUS_OFF_BODY) if bits & STATUS_HAS_CONTACT_SENSOR else None
    return DeviceStatus(None if battery > 100 else battery, gain_cdb, clipped, off_body)


def pack_device_info(info: DeviceInfo) -> bytes:
    model = info.model.encode("utf-8")
    if len(model) > MAX_MODEL_BYTES:
        raise ProtocolError(f"model must be at most {MAX_MODEL_BYTES} UTF-8 bytes: {info.model!r}")
    if not all(0 <= v <= 255 for v in (*info.firmware_version, info.hardware_revision)):
        raise ProtocolError(f"firmware version and hardware revision must be bytes: {info}")
    return INFO.pack(*info.firmware_version, info.hardware_revision) + model


def unpack_device_info(payload: bytes) -> DeviceInfo:
    major, minor, patch, hardware = INFO.unpack_from(payload)
    model = bytes(payload[INFO.size :]).decode("utf-8", errors="replace")
    return DeviceInfo((major, minor, patch), hardware, model)
