"""Audio sources: files, microphones, the wearable stethoscope bridge.

``url_or_path``: ``file:PATH`` or a plain path, ``mic:NAME_OR_INDEX`` (``mic:`` or
``mic:default``: the default input device), ``bridge://...`` (imported only when used)."""

from __future__ import annotations

import importlib
from typing import Any

from edge.sources.base import AudioSource, Notice, SourceChunk, SourceEnded, SourceError
from edge.sources.file import FileSource

__all__ = [
    "AudioSource",
    "FileSource",
    "Notice",
    "SourceChunk",
    "SourceEnded",
    "SourceError",
    "open_source",
]

FILE_PREFIX = "file:"
MIC_PREFIX = "mic:"
BRIDGE_PREFIX = "bridge://"
DEFAULT_DEVICE_NAMES = ("", "default")


def open_source(
    url_or_path: str, stream_id: str, sample_rate_hz: int, **options: Any
) -> AudioSource:
    if url_or_path.startswith(MIC_PREFIX):
        from edge.sources.mic import MicSource

        device = parse_device(url_or_path[len(MIC_PREFIX) :])
        return MicSource(device, stream_id, sample_rate_hz, **options)
    if url_or_path.startswith(BRIDGE_PREFIX):
        return _bridge(url_or_path, stream_id, sample_rate_hz, options)
    path = url_or_path[len(FILE_PREFIX) :] if url_or_path.startswith(FILE_PREFIX) else url_or_path
    if not path:
        raise SourceError(
            f"{url_or_path!r}: no file path given (file:PATH, mic:NAME, bridge://...)"
        )
    return FileSource(path, stream_id, sample_rate_hz, **options)


def parse_device(text: str) -> str | int | None:
    """``mic:`` device part: None (the default device), an index, or a (sub)name."""
    text = text.strip()
    if text.lower() in DEFAULT_DEVICE_NAMES:
        return None
    return int(text) if text.isdigit() else text


def _bridge(url: str, stream_id: str, sample_rate_hz: int, options: dict[str, Any]) -> AudioSource:
    """A wearable stethoscope stream (options in the URL; ``rate`` defaults to the model's)."""
    if options:
        raise SourceError(f"{url}: bridge sources take their options in the URL, not {options}")
    try:
        module = importlib.import_module("edge.sources.bridge")
    except ImportError as exc:
        raise SourceError(f"{url}: the firmware bridge source is not available ({exc})") from exc
    source: AudioSource = module.BridgeSource(url, default_rate_hz=sample_rate_hz)
    if source.sample_rate_hz != sample_rate_hz:
        source.close()
        raise SourceError(
            f"{url}: the device stream is {source.sample_rate_hz} Hz, "
            f"the model needs {sample_rate_hz} Hz"
        )
    source.stream_id = stream_id
    return source
