"""The incremental parser: round trips in any chunking, resync, corruption, tags, counters."""

from __future__ import annotations

import random

import google_crc32c
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.errors import ProtocolError
from firmware_bridge.parser import FrameParser, ParserStats
from firmware_bridge.protocol import (
    CRC,
    FLAG_AUTH,
    HEADER,
    MAX_PAYLOAD_BYTES,
    MAX_PAYLOAD_V2_BYTES,
    Frame,
    SampleFormat,
    audio_frame,
    encode_frame,
    heartbeat_frame,
)
from tests.firmware_bridge.strategies import chunk_sizes, chunked, device_keys, frames, keys

SCANNERS = ["numba", "numpy"]
KEY = b"0123456789abcdef"
DEVICE_KEY = bytes(range(32))  # v2


def parse_all(parser: FrameParser, pieces: list[bytes]) -> list[Frame]:
    out = []
    for piece in pieces:
        out += parser.push(piece)
    return out + parser.flush()


def as_sent(frame: Frame) -> Frame:
    """A decoded frame in the form it was handed to the encoder."""
    return frame._replace(flags=frame.flags & ~FLAG_AUTH, verified=False)


def bytes_add_up(stats: ParserStats) -> bool:
    total = stats.frame_bytes + stats.skipped_bytes + stats.pending_bytes
    return stats.bytes_received == total


@pytest.mark.parametrize("scanner", SCANNERS)
@settings(max_examples=60, deadline=None)
@given(sent=st.lists(frames(), min_size=1, max_size=6), sizes=chunk_sizes, key=keys)
def test_round_trip_in_any_chunking(
    scanner: str, sent: list[Frame], sizes: list[int], key: bytes | None
) -> None:
    stream = b"".join(encode_frame(f, key) for f in sent)
    parser = FrameParser(default_key=key, scanner=scanner, allow_v1=True)
    got = parse_all(parser, chunked(stream, sizes))
    assert [as_sent(f) for f in got] == sent
    assert all(f.verified == (key is not None) for f in got)
    stats = parser.stats()
    assert stats.frames_ok == len(sent)
    assert stats.frame_bytes == len(stream)
    assert stats.skipped_bytes == stats.pending_bytes == stats.bad_crc == 0


@pytest.mark.parametrize("scanner", SCANNERS)
@settings(max_examples=60, deadline=None)
@given(
    sent=st.lists(frames(), min_size=1, max_size=5),
    garbage=st.lists(st.binary(max_size=300), min_size=6, max_size=6),
    sizes=chunk_sizes,
)
def test_resynchronises_after_garbage(
    scanner: str, sent: list[Frame], garbage: list[bytes], sizes: list[int]
) -> None:
    parts = [garbage[0]]
    for frame, noise in zip(sent, garbage[1:], strict=False):
        parts += [encode_frame(frame), noise + b"LW\x01"[: len(noise) % 4]]
    parser = FrameParser(scanner=scanner, allow_v1=True)
    got = parse_all(parser, chunked(b"".join(parts), sizes))
    assert got == sent
    assert bytes_add_up(parser.stats())
    assert parser.stats().pending_bytes == 0


@st.composite
def corrupted(draw: st.DrawFn, version: int = 1) -> tuple[list[Frame], bytes]:
    """Frames (v2: sealed with DEVICE_KEY) and their bytes, flipped, cut and spliced."""
    sent = draw(st.lists(frames(small_ids=True, version=version), min_size=1, max_size=5))
    data = bytearray(b"".join(encode_frame(f, None if version == 1 else DEVICE_KEY) for f in sent))
    rng = random.Random(draw(st.integers(0, 2**32)))
    for _ in range(draw(st.integers(1, 12))):
        where = rng.randrange(len(data) + 1)
        action = rng.choice(["flip", "insert", "delete", "magic"])
        if action == "flip" and where < len(data):
            data[where] ^= 1 << rng.randrange(8)
        elif action == "insert":
            data[where:where] = rng.randbytes(rng.randint(1, 40))
        elif action == "delete":
            del data[where : where + rng.randint(1, 40)]
        else:
            data[where:where] = b"LW\x01" + rng.randbytes(rng.randint(0, 40))
    return sent, bytes(data)


@pytest.mark.parametrize("scanner", SCANNERS)
@settings(max_examples=150, deadline=None)
@given(case=corrupted(), sizes=chunk_sizes)
def test_corruption_never_raises_and_never_invents_frames(
    scanner: str, case: tuple[list[Frame], bytes], sizes: list[int]
) -> None:
    sent, data = case
    parser = FrameParser(scanner=scanner, allow_v1=True)
    got = parse_all(parser, chunked(data, sizes))
    assert all(frame in sent for frame in got)
    stats = parser.stats()
    assert bytes_add_up(stats)
    assert stats.pending_bytes == 0
    assert stats.bytes_received == len(data)
    assert stats.frames_ok == len(got)


@settings(max_examples=150, deadline=None)
@given(case=corrupted(), sizes=chunk_sizes, key=keys)
def test_numba_and_numpy_scanners_agree(
    case: tuple[list[Frame], bytes], sizes: list[int], key: bytes | None
) -> None:
    data = case[1]
    results = []
    for scanner in SCANNERS:
        parser = FrameParser(default_key=key, scanner=scanner, allow_v1=True)
        results.append((parse_all(parser, chunked(data, sizes)), parser.stats()))
    assert results[0] == results[1]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), chunk_sizes)
def test_random_bytes_never_raise(data: bytes, sizes: list[int]) -> None:
    parser = FrameParser(allow_v1=True)
    assert parse_all(parser, chunked(data, sizes)) == []
    assert bytes_add_up(parser.stats())


def a_frame(device_id: int = 1, count: int = 8) -> Frame:
    return audio_frame(device_id, 0, 1, 0, 8000, np.arange(count))


@pytest.mark.parametrize("scanner", SCANNERS)
def test_tag_policy(scanner: str) -> None:
    parser = FrameParser(keys={1: KEY}, scanner=scanner, allow_v1=True)
    good, other = a_frame(1), a_frame(2)
    got = parser.push(encode_frame(good, KEY) + encode_frame(good, b"wrong key"))
    got += parser.push(encode_frame(good) + encode_frame(other, KEY) + encode_frame(other))
    assert [(f.device_id, f.verified) for f in got] == [(1, True), (2, False), (2, False)]
    stats = parser.stats()
    assert (stats.bad_tag, stats.unverified, stats.frames_ok) == (2, 1, 3)
    assert bytes_add_up(stats)


@pytest.mark.parametrize("scanner", SCANNERS)
def test_bad_crc_is_counted_and_attributed_to_the_claimed_device(scanner: str) -> None:
    data = bytearray(encode_frame(a_frame(7)))
    data[40] ^= 0x10
    parser = FrameParser(scanner=scanner, allow_v1=True)
    assert parser.push(bytes(data) + encode_frame(a_frame(8))) == [a_frame(8)]
    assert parser.stats().bad_crc == 1
    assert parser.bad_crc_by_device == {7: 1}


def with_header(frame: Frame, **changes: int) -> bytes:
    """An encoded frame whose header fields are changed (the CRC recomputed to match)."""
    data = bytearray(encode_frame(frame))
    names = (
        *("magic", "version", "frame_type", "flags", "sample_format", "payload_bytes"),
        *("device_id", "stream_id", "sample_count", "sequence", "first_sample", "rate"),
    )
    fields = dict(zip(names, HEADER.unpack_from(data), strict=True)) | changes
    HEADER.pack_into(data, 0, *fields.values())
    CRC.pack_into(data, len(data) - 4, google_crc32c.value(bytes(data[:-4])))
    return bytes(data)


@pytest.mark.parametrize("scanner", SCANNERS)
@pytest.mark.parametrize(
    ("changes", "counter"),
    [
        ({"version": 2}, "bad_header"),
        ({"frame_type": 9}, "bad_header"),
        ({"flags": 0x80}, "bad_header"),
        ({"sample_format": 7}, "bad_header"),
        ({"rate": 0}, "bad_header"),
        ({"sample_count": 9}, "bad_length"),
        ({"payload_bytes": MAX_PAYLOAD_BYTES + 2, "sample_count": MAX_PAYLOAD_BYTES // 2 + 1},
         "bad_length"),
    ],
)  # fmt: skip
def test_invalid_headers_are_counted(scanner: str, changes: dict[str, int], counter: str) -> None:
    parser = FrameParser(scanner=scanner, allow_v1=True)
    got = parse_all(parser, [with_header(a_frame(), **changes) + encode_frame(a_frame(3))])
    assert got == [a_frame(3)]
    assert getattr(parser.stats(), counter) == 1


@pytest.mark.parametrize("scanner", SCANNERS)
def test_flush_drops_a_truncated_frame_and_keeps_later_ones(scanner: str) -> None:
    parser = FrameParser(scanner=scanner, allow_v1=True)
    whole = encode_frame(a_frame())
    assert parser.push(whole[:-3]) == []
    assert parser.stats().pending_bytes == len(whole) - 3
    assert parser.flush() == []
    assert parser.push(whole) == [a_frame()]
    stats = parser.stats()
    assert stats.truncated == 1
    assert stats.skipped_bytes == len(whole) - 3
    assert bytes_add_up(stats)


def test_a_false_start_waits_then_the_real_frame_is_found() -> None:
    fake = with_header(a_frame(), sample_count=700, payload_bytes=1400)[:32]  # claims 1400 B
    real = encode_frame(a_frame(5))
    parser = FrameParser(allow_v1=True)
    assert parser.push(fake + real) == []  # waiting for the fake frame's 1400 bytes
    assert parser.flush() == [a_frame(5)]


def test_encoder_rejects_what_does_not_fit() -> None:
    with pytest.raises(ProtocolError, match="payload bytes"):
        encode_frame(audio_frame(1, 0, 0, 0, 8000, np.zeros(MAX_PAYLOAD_BYTES // 2 + 1, np.int16)))
    with pytest.raises(ProtocolError, match="device_id"):
        encode_frame(heartbeat_frame(2**32, 0, 0, 0, 8000))
    with pytest.raises(ProtocolError, match="integers in"):
        audio_frame(1, 0, 0, 0, 8000, np.array([40000]), SampleFormat.INT16)
    with pytest.raises(ProtocolError, match="rate"):
        encode_frame(heartbeat_frame(1, 0, 0, 0, 0))


# -- protocol version 2 ------------------------------------------------------------------------
def sealed(frame: Frame, session: int = 1, key: bytes = DEVICE_KEY) -> bytes:
    """``frame`` as a v2 frame of ``session`` (its sequence is the counter)."""
    return encode_frame(frame._replace(session=session), key)


@pytest.mark.parametrize("scanner", SCANNERS)
@settings(max_examples=60, deadline=None)
@given(
    sent=st.lists(frames(version=2), min_size=1, max_size=6),
    sizes=chunk_sizes,
    key=device_keys,
    base=st.integers(0, 2**63),
)
def test_v2_round_trip_in_any_chunking(
    scanner: str, sent: list[Frame], sizes: list[int], key: bytes, base: int
) -> None:
    session = sent[0].session
    sent = [f._replace(session=session, sequence=base + k) for k, f in enumerate(sent)]
    stream = b"".join(encode_frame(f, key) for f in sent)
    parser = FrameParser(default_key=key, scanner=scanner)
    got = parse_all(parser, chunked(stream, sizes))
    assert [as_sent(f) for f in got] == sent
    assert all(f.verified and f.flags & FLAG_AUTH for f in got)
    stats = parser.stats()
    assert (stats.frames_ok, stats.frame_bytes) == (len(sent), len(stream))
    assert stats.skipped_bytes == stats.pending_bytes == stats.auth_failed == stats.replayed == 0


@settings(max_examples=150, deadline=None)
@given(case=corrupted(version=2), sizes=chunk_sizes)
def test_v2_corruption_never_invents_frames_and_the_scanners_agree(
    case: tuple[list[Frame], bytes], sizes: list[int]
) -> None:
    sent, data = case
    results = []
    for scanner in SCANNERS:
        parser = FrameParser(default_key=DEVICE_KEY, scanner=scanner)
        results.append((parse_all(parser, chunked(data, sizes)), parser.stats()))
    assert results[0] == results[1]
    got, stats = results[0]
    assert all(as_sent(frame) in sent for frame in got)
    assert bytes_add_up(stats)
    assert stats.pending_bytes == 0


def v2_with_crc(data: bytes | bytearray) -> bytes:
    """``data`` with its CRC recomputed (a tampering that passes the link check)."""
    out = bytearray(data)
    CRC.pack_into(out, len(out) - 4, google_crc32c.value(bytes(out[:-4])))
    return bytes(out)


@pytest.mark.parametrize("scanner", SCANNERS)
@pytest.mark.parametrize(
    ("where", "bit", "what"),
    [(8, 1, "device id"), (12, 1, "stream id"), (20, 1, "first sample"), (28, 1, "rate"),
     (16, 1, "session"), (32, 1, "counter"), (4, 2, "stream start flag"), (40, 1, "payload"),
     (-5, 1, "tag")],
)  # fmt: skip
def test_v2_tampering_that_keeps_the_crc_is_auth_failed(
    scanner: str, where: int, bit: int, what: str
) -> None:
    """Header bytes (associated data), ciphertext and tag: any change with the CRC recomputed
    is rejected whole, counted ``auth_failed``; the genuine frame after it still decodes."""
    frame = a_frame(1, count=16)
    good = sealed(frame)
    bad = bytearray(good)
    bad[where] ^= bit
    parser = FrameParser(default_key=DEVICE_KEY, scanner=scanner)
    got = parser.push(v2_with_crc(bad) + good)
    assert [as_sent(f) for f in got] == [frame._replace(session=1)], what
    stats = parser.stats()
    assert (stats.auth_failed, stats.frames_ok, stats.bad_header) == (1, 1, 0), what
    assert bytes_add_up(stats)


@pytest.mark.parametrize("scanner", SCANNERS)
def test_v2_policy_counters(scanner: str) -> None:
    """No key for the device, another key, a duplicate, an older session, v1 by default."""
    parser = FrameParser(keys={1: DEVICE_KEY}, scanner=scanner)
    first, second = a_frame(1)._replace(sequence=7), a_frame(1)._replace(sequence=8)
    data = [sealed(first, 3), sealed(a_frame(2)), sealed(first, 3, key=bytes(32))]
    data += [sealed(first, 3), sealed(second, 2), sealed(second, 3), encode_frame(a_frame(1))]
    got = parser.push(b"".join(data))
    assert [(f.session, f.sequence) for f in got] == [(3, 7), (3, 8)]
    stats = parser.stats()
    assert (stats.no_key, stats.auth_failed, stats.replayed) == (1, 1, 1)
    assert (stats.stale_session, stats.v1_rejected, stats.frames_ok) == (1, 1, 2)
    assert bytes_add_up(stats)
    assert stats.skipped_bytes == sum(map(len, data)) - stats.frame_bytes


@pytest.mark.parametrize("scanner", SCANNERS)
def test_v1_is_refused_by_default_and_taken_with_allow_v1(scanner: str) -> None:
    v1 = encode_frame(a_frame(4))
    refusing, allowing = FrameParser(scanner=scanner), FrameParser(scanner=scanner, allow_v1=True)
    assert refusing.push(v1) == []
    assert (refusing.stats().v1_rejected, refusing.stats().skipped_bytes) == (1, len(v1))
    assert allowing.push(v1) == [a_frame(4)]
    assert allowing.stats().v1_rejected == 0


@pytest.mark.parametrize("scanner", SCANNERS)
def test_v2_header_limits(scanner: str) -> None:
    """A v2 header without FLAG_AUTH is bad_header; a payload over 1412 bytes bad_length."""
    good = sealed(a_frame(1))
    no_auth = bytearray(good)
    no_auth[4] &= ~FLAG_AUTH
    too_long = bytearray(good)
    too_long[6:8] = (MAX_PAYLOAD_V2_BYTES + 2).to_bytes(2, "little")
    too_long[14:16] = ((MAX_PAYLOAD_V2_BYTES + 2) // 2).to_bytes(2, "little")
    parser = FrameParser(keys={1: DEVICE_KEY}, scanner=scanner)
    assert parse_all(parser, [v2_with_crc(no_auth) + v2_with_crc(too_long)]) == []
    assert (parser.stats().bad_header, parser.stats().bad_length) == (1, 1)
    with pytest.raises(ProtocolError, match="at most 1412"):
        sealed(audio_frame(1, 0, 0, 0, 8000, np.zeros(MAX_PAYLOAD_V2_BYTES // 2 + 1, np.int16)))
    with pytest.raises(ProtocolError, match="device key"):
        encode_frame(a_frame(1)._replace(session=1), b"short")
