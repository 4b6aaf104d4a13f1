"""An alarm's evidence: its audio (FLAC) and the model's outputs over it, keyed by its event's
``episode_id`` (docs/events.md, "The evidence topic"; docs/evidence.md). On MQTT it goes in
parts under the broker's packet limit; :class:`Assembler` joins them in any order, ignores
repeats and checks the whole FLAC's hash: a clip is complete, or it is not there."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile

from lungwatch.errors import LungwatchError
from lungwatch.events import (
    PHYSIOLOGICAL_TYPES,
    SCHEMA_VERSION,
    TECHNICAL_TYPES,
    EventError,
    check_segment,
    event_topic,
    is_int,
    parse_utc,
)

DEFAULT_PART_BYTES = 32_768  # FLAC bytes per message: base64 and JSON stay under 64 KiB
MAX_PARTS = 64  # a clip of more parts is refused (a 20-s 8-kHz clip needs about 8)
MAX_CLIP_S = 120  # a clip's FLAC declaring more audio is refused unread (evidence.max_s <= 120)
MAX_CLIP_RATE_HZ = 48_000
OUTPUT_SCALE = 255  # output frames travel as round(p * 255) in one byte


class EvidenceError(LungwatchError, ValueError):
    """A clip or one of its messages is malformed (the message names what)."""


def evidence_topic(site: str, device_id: str, stream_id: str) -> str:
    """``lungwatch/v1/<site>/<device>/<stream>/evidence``."""
    return event_topic(site, device_id, stream_id)[: -len("event")] + "evidence"


@dataclass(frozen=True)
class Clip:
    """One event's evidence: 16-bit FLAC from before the event's start to its end (bounded)
    and the model's output frames over it. Samples are on the bed's timeline."""

    site: str
    device_id: str
    stream_id: str
    episode_id: str  # the event's episode
    event_type: str
    event_start_sample: int
    start_sample: int  # the clip's first sample
    start_utc: str  # its time
    sample_rate_hz: int
    flac: bytes
    outputs: tuple[str, ...] = ()  # the model's output names (columns of ``frames``)
    first_frame_sample: int = 0  # where output frame 0 of ``frames`` starts
    frame_samples: int = 0  # samples per output frame
    frames: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.uint8))
    event_end_sample: int | None = None  # where the event ended (None: after the clip)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.flac).hexdigest()

    def header(self) -> dict[str, Any]:
        """What part 0 carries besides its data."""
        return {
            "event_type": self.event_type,
            "event_start_sample": self.event_start_sample,
            "start_sample": self.start_sample,
            "start_utc": self.start_utc,
            "sample_rate_hz": self.sample_rate_hz,
            "outputs": list(self.outputs),
            "first_frame_sample": self.first_frame_sample,
            "frame_samples": self.frame_samples,
            "event_end_sample": self.event_end_sample,
            "frames_shape": list(self.frames.shape),
            "frames": base64.b64encode(
                np.ascontiguousarray(self.frames, np.uint8).tobytes()
            ).decode(),
        }

    def audio(self) -> np.ndarray:
        """The clip's samples, float32 in [-1, 1) (:func:`check_flac` first)."""
        check_flac(self.flac, self.sample_rate_hz)
        samples, _ = soundfile.read(io.BytesIO(self.flac), dtype="float32")
        return np.asarray(samples, np.float32)

    @property
    def duration_s(self) -> float:
        return float(soundfile.info(io.BytesIO(self.flac)).duration)

    def probabilities(self) -> np.ndarray:
        """(n, O) output frames as probabilities."""
        return self.frames.astype(np.float32) / OUTPUT_SCALE


def check_flac(flac: bytes, sample_rate_hz: int) -> None:
    """EvidenceError unless ``flac``'s header declares mono FLAC at the clip's rate and at
    most ``MAX_CLIP_S``: a small file declaring millions of samples costs nothing."""
    try:
        info = soundfile.info(io.BytesIO(flac))
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise EvidenceError(f"clip audio is not readable FLAC ({exc})") from None
    if info.format != "FLAC" or info.channels != 1 or info.samplerate != sample_rate_hz:
        raise EvidenceError(
            f"clip audio must be mono FLAC at {sample_rate_hz} Hz, got {info.format} "
            f"{info.channels} channel(s) at {info.samplerate} Hz"
        )
    if not 0 < info.frames <= MAX_CLIP_S * sample_rate_hz:
        raise EvidenceError(
            f"clip audio declares {info.frames} samples ({info.frames / sample_rate_hz:.0f} s); "
            f"a clip holds at most {MAX_CLIP_S} s"
        )


def encode_flac(samples: np.ndarray, sample_rate_hz: int) -> bytes:
    """16-bit FLAC of int16 samples (as they are) or of float samples in [-1, 1] (clipped)."""
    buffer = io.BytesIO()
    data = np.asarray(samples)
    if data.dtype != np.int16:
        data = np.clip(data.astype(np.float32), -1.0, 1.0)
    soundfile.write(buffer, data, sample_rate_hz, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def quantise(probs: np.ndarray) -> np.ndarray:
    """(n, O) probabilities -> uint8 (NaN rows: frames never described, become 0)."""
    values = np.nan_to_num(np.asarray(probs, np.float32), nan=0.0)
    return np.clip(np.round(values * OUTPUT_SCALE), 0, OUTPUT_SCALE).astype(np.uint8)


def clip_messages(clip: Clip, part_bytes: int = DEFAULT_PART_BYTES) -> list[tuple[str, str]]:
    """(topic, payload) of each part of ``clip``, in order; part 0 carries the header."""
    parts = max(1, math.ceil(len(clip.flac) / part_bytes))
    if parts > MAX_PARTS:
        raise EvidenceError(
            f"clip {clip.episode_id}: {len(clip.flac)} bytes need {parts} parts of "
            f"{part_bytes}, more than {MAX_PARTS}"
        )
    topic = evidence_topic(clip.site, clip.device_id, clip.stream_id)
    digest = clip.sha256
    out = []
    for index in range(parts):
        body: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "site": clip.site,
            "device_id": clip.device_id,
            "stream_id": clip.stream_id,
            "episode_id": clip.episode_id,
            "part": index,
            "parts": parts,
            "sha256": digest,
            "data": base64.b64encode(
                clip.flac[index * part_bytes : (index + 1) * part_bytes]
            ).decode(),
        }
        if index == 0:
            body["clip"] = clip.header()
        out.append((topic, json.dumps(body, separators=(",", ":"))))
    return out


def clip_of(header: Mapping[str, Any], ids: Mapping[str, str], flac: bytes) -> Clip:
    """The clip of a part-0 ``header``, ``ids`` and the whole FLAC; EvidenceError names a field."""
    try:
        shape = tuple(int(n) for n in header["frames_shape"])
        frames = np.frombuffer(base64.b64decode(header["frames"], validate=True), np.uint8)
        if len(shape) != 2 or frames.size != shape[0] * shape[1]:
            raise EvidenceError(f"clip.frames holds {frames.size} bytes, not {shape}")
        outputs = tuple(str(name) for name in header["outputs"])
        if shape[0] and shape[1] != len(outputs):
            raise EvidenceError(f"clip.frames has {shape[1]} columns for {len(outputs)} outputs")
        if header["event_type"] not in (*PHYSIOLOGICAL_TYPES, *TECHNICAL_TYPES):
            named = str(header["event_type"])[:40]
            raise EvidenceError(f"clip.event_type {named!r} is not an event type")
        if not all(isinstance(n, str) and n.isprintable() and len(n) <= 64 for n in outputs):
            raise EvidenceError("clip.outputs must be printable names of at most 64 characters")
        parse_utc(str(header["start_utc"]))  # EventError (a ValueError) names it
        rate = int(header["sample_rate_hz"])
        if not 0 < rate <= MAX_CLIP_RATE_HZ:
            raise EvidenceError(f"clip.sample_rate_hz must be in (0, {MAX_CLIP_RATE_HZ}]: {rate}")
        check_flac(flac, rate)
        return Clip(
            site=ids["site"], device_id=ids["device_id"], stream_id=ids["stream_id"],
            episode_id=ids["episode_id"], event_type=str(header["event_type"]),
            event_start_sample=int(header["event_start_sample"]),
            start_sample=int(header["start_sample"]), start_utc=str(header["start_utc"]),
            sample_rate_hz=int(header["sample_rate_hz"]), flac=flac, outputs=outputs,
            first_frame_sample=int(header["first_frame_sample"]),
            frame_samples=int(header["frame_samples"]), frames=frames.reshape(shape),
            event_end_sample=_optional_int(header.get("event_end_sample")),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        if isinstance(exc, EvidenceError):
            raise
        raise EvidenceError(f"clip header: {exc!r}") from None


@dataclass
class _Partial:
    parts: int
    sha256: str
    ids: dict[str, str]
    data: dict[int, bytes] = field(default_factory=dict)
    header: dict[str, Any] | None = None


class Assembler:
    """At most ``max_open`` clips wait for parts at once (the oldest dropped, counted)."""

    def __init__(self, max_open: int = 256) -> None:
        self.max_open = max_open
        self._open: dict[str, _Partial] = {}
        self.dropped = 0

    def take(self, body: Mapping[str, Any]) -> Clip | None:
        """One part (a parsed message); the clip when this part completed it."""
        ids = {key: body.get(key) for key in ("site", "device_id", "stream_id", "episode_id")}
        for key, value in ids.items():
            try:
                check_segment(value, f"evidence.{key}")
            except EventError as exc:
                raise EvidenceError(str(exc)) from None
        raw_part, raw_parts, digest = body.get("part"), body.get("parts"), body.get("sha256")
        if not (is_int(raw_part) and is_int(raw_parts)):
            raise EvidenceError(f"evidence part {raw_part!r} of {raw_parts!r} is not a part")
        part, parts = int(raw_part), int(raw_parts)  # type: ignore[arg-type]
        if not (1 <= parts <= MAX_PARTS and 0 <= part < parts):
            raise EvidenceError(f"evidence part {part} of {parts} is not a part of a clip")
        if not (isinstance(digest, str) and len(digest) == 64):
            raise EvidenceError("evidence.sha256 must be 64 hex digits")
        try:
            data = base64.b64decode(str(body.get("data")), validate=True)
        except (binascii.Error, ValueError):
            raise EvidenceError("evidence.data is not base64") from None
        key = str(ids["episode_id"])
        partial = self._open.get(key)
        if partial is None or (partial.parts, partial.sha256) != (parts, digest):
            partial = self._open[key] = _Partial(parts, digest, {k: str(v) for k, v in ids.items()})
            while len(self._open) > self.max_open:  # the oldest dropped
                self._open.pop(next(iter(self._open)))
                self.dropped += 1
        partial.data[part] = data
        if part == 0:
            header = body.get("clip")
            if not isinstance(header, dict):
                raise EvidenceError("evidence part 0 must carry the clip header")
            partial.header = header
        if len(partial.data) < parts or partial.header is None:
            return None
        del self._open[key]
        flac = b"".join(partial.data[i] for i in range(parts))
        if hashlib.sha256(flac).hexdigest() != digest:
            raise EvidenceError(f"clip {key}: its parts do not hash to its sha256")
        return clip_of(partial.header, partial.ids, flac)

    @property
    def waiting(self) -> Sequence[str]:
        return tuple(self._open)


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    if not is_int(value):
        raise EvidenceError(f"clip.event_end_sample must be an integer or null, got {value!r}")
    return int(value)  # type: ignore[call-overload]
