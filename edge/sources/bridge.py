"""The ``bridge://`` audio source: a wearable stethoscope's stream through ``firmware_bridge``.

URL forms, options and security: docs/firmware-protocol.md, "Runtime source URL". Frames at
another rate than ``rate`` are dropped with a ``device_status`` notice; ``state_file`` defaults
next to the key (``keys/bed-1.key`` -> ``keys/bed-1.sessions.json``, ``key_dir=keys`` ->
``keys/sessions.json``).

Chunks follow the device's sample index; a gap longer than 10 s is a jump of ``first_sample``
(``filled: False``) rather than a chunk of silence. Notices ride on the next chunk, or on an
empty one when no audio follows within a read's timeout. A network source never ends."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from edge.sources.base import Notice, SourceChunk, SourceError
from firmware_bridge.assembler import JitterConfig
from firmware_bridge.errors import BridgeError, SettingError
from firmware_bridge.keys import KeyRing, default_state_path, load_keys, require_key
from firmware_bridge.link import DISCONNECTED, RECONNECTED, Bridge
from firmware_bridge.parser import POLICY_COUNTERS
from firmware_bridge.receiver import V1_WARNING, Receiver, ReceiverConfig, ReceiverStats
from firmware_bridge.timeline import (
    DEVICE_INFO,
    DEVICE_STATUS,
    RATE_MISMATCH,
    RESTART,
    SIGNAL_GAP,
    Report,
    Segment,
    StreamKey,
)
from firmware_bridge.transport import UdpTransport, open_transport
from firmware_bridge.urls import LinkUrl, check_options, float_option, int_option, parse_link_url

OPTIONS = (
    *("device", "stream", "rate", "name", "key_file", "key_dir", "state_file", "allow_v1"),
    *("jitter_frames", "max_hold_ms", "baud"),
)
DEFAULT_RATE_HZ = 8000
REJECTION_LOG_S = 10.0  # growing policy rejections are logged at most this often
KEY_HINT = "key_file=PATH or key_dir=DIR to the URL"
log = logging.getLogger("lungwatch.sources.bridge")
NOTICE_KINDS = {
    SIGNAL_GAP: "signal_gap",
    DEVICE_STATUS: "device_status",
    DEVICE_INFO: "device_status",
    RATE_MISMATCH: "device_status",
    RESTART: "reconnected",
    DISCONNECTED: "disconnected",
    RECONNECTED: "reconnected",
}


class BridgeSource:
    def __init__(
        self,
        url: str,
        *,
        default_rate_hz: int = DEFAULT_RATE_HZ,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            link, ring, allow_v1, jitter = _checked(url)
            self._device = _optional_int(link, "device")
            self._stream = _optional_int(link, "stream")
            self.sample_rate_hz = int_option(link, "rate", default_rate_hz)
            state = link.options.get("state_file") or default_state_path(
                link.options.get("key_file"), link.options.get("key_dir")
            )
            config = ReceiverConfig(jitter=jitter)
            receiver = Receiver(
                config, ring.keys, ring.default, allow_v1=allow_v1, state_path=state
            )
            self._bridge = Bridge(open_transport(link), receiver, clock=clock)
        except BridgeError as exc:
            raise SourceError(f"{url}: {exc}") from exc
        if allow_v1:
            log.warning(V1_WARNING, url)
        default_name = "bridge" if self._device is None else f"bridge-{self._device}"
        default_name += "" if self._stream is None else f"-{self._stream}"
        self.stream_id = link.options.get("name", default_name)
        self.url, self._clock = url, clock
        self._key: StreamKey | None = None
        self._ready: deque[SourceChunk] = deque()
        self._notices: list[Notice] = []
        self._next_sample = 0
        self._rate_warned = False
        self._rejections_logged = dict.fromkeys(POLICY_COUNTERS, 0)
        self._next_rejection_log_s = clock()

    @property
    def address(self) -> tuple[str, int] | None:
        """The bound (host, port) of a UDP link (useful with port 0), else None."""
        transport = self._bridge.transport
        return transport.address if isinstance(transport, UdpTransport) else None

    def read(self, timeout_s: float) -> SourceChunk | None:
        deadline_s = self._clock() + timeout_s
        while not self._ready:
            remaining_s = deadline_s - self._clock()
            for item in self._bridge.poll(max(remaining_s, 0.0)):
                self._take(item)
            if remaining_s <= 0:
                break
        if self._clock() >= self._next_rejection_log_s:
            self._log_rejections()
        if self._ready:
            return self._ready.popleft()
        if self._notices:
            empty = np.zeros(0, dtype=np.float32)
            notices, self._notices = tuple(self._notices), []
            return SourceChunk(empty, self._next_sample, notices=notices)
        return None

    def close(self) -> None:
        self._bridge.close()

    def stats(self) -> ReceiverStats:
        """The link's counters (the parser's and the security policy's) and each stream's."""
        return self._bridge.receiver.stats()

    def rejections(self) -> dict[str, int]:
        """Refusals of the link's security policy since the start (metrics ``link_<reason>``)."""
        link = self._bridge.receiver.parser.stats()
        return {name: int(getattr(link, name)) for name in POLICY_COUNTERS}

    def _log_rejections(self) -> None:
        self._next_rejection_log_s = self._clock() + REJECTION_LOG_S
        now = self.rejections()
        grown = {k: v - self._rejections_logged[k] for k, v in now.items()}
        if any(grown.values()):
            self._rejections_logged = now
            counts = ", ".join(f"{k} {v}" for k, v in grown.items() if v)
            log.warning("%s: frames rejected since the last report: %s", self.stream_id, counts)

    def _take(self, item: Segment | Report) -> None:
        if self._key is None and self._wanted(item.stream):
            self._key = item.stream
        if item.stream != self._key:
            return
        if isinstance(item, Report):
            self._notices.append(_notice(item))
        elif item.sample_rate_hz != self.sample_rate_hz:
            self._rate_mismatch(item)
        else:
            notices, self._notices = tuple(self._notices), []
            chunk = SourceChunk(item.samples, item.first_sample, item.missing, notices)
            self._ready.append(chunk)
            self._next_sample = item.first_sample + item.samples.size

    def _wanted(self, key: StreamKey) -> bool:
        device_ok = self._device is None or key.device_id == self._device
        return device_ok and (self._stream is None or key.stream_id == self._stream)

    def _rate_mismatch(self, segment: Segment) -> None:
        if not self._rate_warned:
            self._rate_warned = True
            detail = {"sample_rate_hz": segment.sample_rate_hz, "expected_hz": self.sample_rate_hz}
            self._notices.append(Notice("device_status", segment.first_sample, detail))


def _notice(report: Report) -> Notice:
    detail: dict[str, Any] = dict(report.detail)
    if report.kind != NOTICE_KINDS.get(report.kind):
        detail["event"] = report.kind
    return Notice(NOTICE_KINDS.get(report.kind, "device_status"), report.sample_index, detail)


def _optional_int(link: LinkUrl, name: str) -> int | None:
    return int_option(link, name, 0) if name in link.options else None


def _jitter(link: LinkUrl) -> JitterConfig:
    return JitterConfig(
        depth_frames=int_option(link, "jitter_frames", JitterConfig.depth_frames),
        max_hold_s=float_option(link, "max_hold_ms", JitterConfig.max_hold_s * 1000) / 1000,
    )


def _checked(url: str) -> tuple[LinkUrl, KeyRing, bool, JitterConfig]:
    """(link, its keys, allow_v1, jitter buffer) of a ``bridge://`` URL (see :func:`check_url`)."""
    link = parse_link_url(url)
    check_options(link, OPTIONS)
    jitter = _jitter(link)
    int_option(link, "rate", DEFAULT_RATE_HZ)
    _optional_int(link, "stream")
    allow_v1 = int_option(link, "allow_v1", 0)
    if allow_v1 not in (0, 1):
        raise SettingError(f"option allow_v1 must be 0 or 1, got {allow_v1}")
    device = _optional_int(link, "device")
    ring = load_keys(link.options.get("key_file"), link.options.get("key_dir"), device)
    require_key(link, ring, KEY_HINT)
    return link, ring, bool(allow_v1), jitter


def check_url(url: str) -> None:
    """Check a ``bridge://`` URL as opening it would (options, key files, a key beyond
    loopback) without binding or connecting: SourceError naming the URL and what to fix."""
    try:
        _checked(url)
    except BridgeError as exc:
        raise SourceError(f"{url}: {exc}") from exc
