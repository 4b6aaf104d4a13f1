"""Receiver: bytes from one link in, every device stream's timeline out.

    receiver = Receiver(keys={17: device_key})   # v2 frames of device 17
    for data in link:
        for item in receiver.push(data, arrival_s=time.monotonic()):
            ...  # Segment (audio or missing) or Report (signal_gap, device_status, ...)

One :class:`~firmware_bridge.parser.FrameParser` per link feeds one
:class:`~firmware_bridge.assembler.StreamAssembler` per (device id, stream id), at most
``max_streams`` (further streams are counted and dropped, so made-up ids cannot grow memory).
Nothing here raises on bad input."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from firmware_bridge.assembler import JitterConfig, StreamAssembler, StreamStats
from firmware_bridge.errors import SettingError
from firmware_bridge.parser import FrameParser, ParserStats
from firmware_bridge.protocol import Frame
from firmware_bridge.timeline import Report, Segment, StreamKey, build_outputs

Output = Segment | Report
V1_WARNING = (  # logged by whoever opens a receiver with allow_v1, with the link's name
    "%s: allow_v1: version-1 frames are accepted (audio in clear, no replay protection); "
    "remove it once every device sends version 2"
)


@dataclass(frozen=True)
class ReceiverConfig:
    jitter: JitterConfig = field(default_factory=JitterConfig)
    max_streams: int = 256  # streams tracked at once; frames of more are dropped (counted)

    def __post_init__(self) -> None:
        if self.max_streams < 1:
            raise SettingError(f"max_streams must be >= 1, got {self.max_streams}")


@dataclass(frozen=True)
class ReceiverStats:
    link: ParserStats
    streams: tuple[StreamStats, ...]
    bad_crc_by_device: dict[int, int]  # CRC failures by the device id their header claimed
    dropped_stream_frames: int  # frames of streams beyond max_streams


class Receiver:
    """The keys, scanner and security options are :class:`~firmware_bridge.parser.FrameParser`'s."""

    def __init__(
        self,
        config: ReceiverConfig | None = None,
        keys: Mapping[int, bytes] | None = None,
        default_key: bytes | None = None,
        scanner: str = "auto",
        allow_v1: bool = False,
        state_path: str | Path | None = None,
    ) -> None:
        self.config = config or ReceiverConfig()
        self.parser = FrameParser(keys, default_key, scanner, allow_v1, state_path)
        self.streams: dict[tuple[int, int], StreamAssembler] = {}
        self._dropped = 0

    def push(self, data: bytes | bytearray | memoryview, arrival_s: float) -> list[Output]:
        """Bytes of a byte stream (TCP, serial), in any chunking: :meth:`feed` + :meth:`drain`."""
        self.feed(data, arrival_s)
        return self.drain()

    def push_datagram(self, data: bytes | bytearray | memoryview, arrival_s: float) -> list[Output]:
        """One whole datagram: :meth:`feed` (``datagram=True``) + :meth:`drain`."""
        self.feed(data, arrival_s, datagram=True)
        return self.drain()

    def feed(
        self, data: bytes | bytearray | memoryview, arrival_s: float, datagram: bool = False
    ) -> None:
        """No output collected: :meth:`drain` merges what many small frames made into few
        segments. A frame left incomplete at a ``datagram``'s end is dropped as truncated."""
        frames = self.parser.push(data)
        if datagram:
            frames += self.parser.flush()
        self.place(frames, arrival_s)

    def link_down(self, now_s: float) -> list[Output]:
        """The connection dropped: bytes of a half-received frame will never be completed."""
        self.place(self.parser.flush(), now_s)
        return self.drain()

    def poll(self, now_s: float) -> list[Output]:
        """Gaps due by ``now_s`` (call this when no data arrives, e.g. on a read timeout)."""
        for assembler in self.streams.values():
            assembler.poll(now_s)
        return self.drain()

    def finish(self) -> list[Output]:
        """The link ended for good: play out every jitter buffer."""
        for assembler in self.streams.values():
            assembler.finish()
        return self.drain()

    def close(self) -> None:
        """Save the v2 session state (see :meth:`FrameParser.close`)."""
        self.parser.close()

    def drain(self) -> list[Output]:
        """Everything produced since the last drain: per stream, in timeline order."""
        pending = [a for a in self.streams.values() if a.pending]
        return build_outputs([(a.key, a.sample_rate_hz, a.take_pieces()) for a in pending])

    def stats(self) -> ReceiverStats:
        return ReceiverStats(
            link=self.parser.stats(),
            streams=tuple(a.stats() for a in self.streams.values()),
            bad_crc_by_device=dict(self.parser.bad_crc_by_device),
            dropped_stream_frames=self._dropped,
        )

    def place(self, frames: Iterable[Frame], arrival_s: float) -> None:
        """Put parsed frames on their streams, then apply the hold time: frames that arrived
        together are all placed before any hole is declared for having waited too long."""
        get = self.streams.get
        holding: dict[StreamAssembler, None] = {}
        for frame in frames:
            assembler = get((frame[1], frame[2]))  # (device_id, stream_id)
            if assembler is None:
                if len(self.streams) >= self.config.max_streams:
                    self._dropped += 1
                    continue
                key = StreamKey(frame.device_id, frame.stream_id)
                assembler = StreamAssembler(key, frame.sample_rate_hz, self.config.jitter)
                self.streams[key] = assembler
            if assembler.push(frame, arrival_s):
                holding[assembler] = None
        for assembler in holding:
            assembler.poll(arrival_s)
