"""Incremental frame parser: bytes in arbitrary chunks -> validated frames, never an exception.

Framing, resynchronisation and counters: docs/firmware-protocol.md, 5; the v2 policy is
:class:`~firmware_bridge.session.SessionGuard`. Two scanners give the same rows (tested): a numba
kernel, one call per push, when numba imports, else :func:`scan_python`. A row is ``(start, size,
type, flags, format, payload_bytes, device, stream, count, sequence, first_sample, rate, version,
session)`` (v2: ``sequence`` is the 64-bit counter; v1: ``session`` is 0), and one Python step
applies the policy to it."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np

from firmware_bridge.errors import SettingError
from firmware_bridge.protocol import (
    COUNTER,
    CRC,
    CRC_BYTES,
    FLAG_AUTH,
    HEADER,
    HEADER_BYTES,
    HEADER_V2_BYTES,
    MAGIC,
    TAG_BYTES,
    VERSION,
    VERSION_2,
    Frame,
    compute_tag,
    header_problem,
)
from firmware_bridge.session import SessionGuard, SessionStore

MAX_ATTRIBUTED_DEVICES = 256  # bad-CRC counts kept per claimed device id (bounded)
MIN_FRAME_BYTES = HEADER_BYTES + CRC_BYTES
SCAN_COUNTERS = ("skipped_bytes", "bad_crc", "bad_header", "bad_length", "truncated")
# what the policy rejects (whole frames with a good CRC)
POLICY_COUNTERS = ("bad_tag", "v1_rejected", "no_key", "auth_failed", "stale_session", "replayed")
# kept by the parser itself (the scanner keeps SCAN_COUNTERS)
COUNTERS = (
    *("bytes_received", "frames_ok", "frame_bytes", "unverified", "rejected_bytes"),
    *POLICY_COUNTERS,
)
Row = tuple[int, ...]
ScanResult = tuple[list[Row], list[int], int]  # rows, bad-CRC device ids, bytes consumed


@dataclass(frozen=True)
class ParserStats:
    """Counters since the parser was made (or reset)."""

    bytes_received: int
    frames_ok: int
    frame_bytes: int  # bytes of accepted frames
    skipped_bytes: int  # garbage, rejected and truncated frames
    bad_crc: int
    bad_header: int  # magic found but version/type/flags/format/rate invalid
    bad_length: int  # payload size too large or inconsistent with the type and format
    truncated: int  # incomplete frames dropped at a datagram end or a disconnect
    bad_tag: int  # v1: tag wrong, or missing for a device that has a key
    unverified: int  # v1: tagged frames accepted without a key to check the tag
    v1_rejected: int  # v1 frames refused (allow_v1 off)
    no_key: int  # v2 frames of a device without a key
    auth_failed: int  # v2 frames whose AEAD tag is wrong (tampered, forged, another key)
    stale_session: int  # v2 frames of a session older than the device's latest
    replayed: int  # v2 frames whose counter was seen already or is older than the window
    pending_bytes: int  # waiting for the rest of a frame


def scan_python(buf: bytearray, final: bool, counts: dict[str, int]) -> ScanResult:
    view = np.frombuffer(buf, dtype=np.uint8)
    rows: list[Row] = []
    bad_ids: list[int] = []
    pos, end = 0, len(buf)
    while True:
        start = buf.find(MAGIC, pos)
        if start < 0:  # keep a trailing first magic byte unless final
            keep = 1 if not final and pos < end and buf[end - 1] == MAGIC[0] else 0
            counts["skipped_bytes"] += end - keep - pos
            return rows, bad_ids, end - keep
        counts["skipped_bytes"] += start - pos
        size, fields = _candidate(buf, view, start, final, counts)
        if size == 0:
            return rows, bad_ids, start
        if size < 0:
            bad_ids.append(fields[6])
            size = 1
        if size == 1:
            counts["skipped_bytes"] += 1
        elif fields[1] == VERSION:
            rows.append((start, size, *fields[2:], VERSION, 0))
        else:  # v2: the header's sequence slot holds the session, the counter follows
            counter = COUNTER.unpack_from(buf, start + HEADER_BYTES)[0]
            rows.append((start, size, *fields[2:9], counter, *fields[10:], VERSION_2, fields[9]))
        pos = start + size


def _candidate(
    buf: bytearray, view: np.ndarray, start: int, final: bool, counts: dict[str, int]
) -> tuple[int, tuple[int, ...]]:
    """(size, header fields) at a magic: size 0 wait, 1 not a frame, -1 bad CRC."""
    end = len(buf)
    if end - start < HEADER_BYTES:
        return _incomplete(final, counts), ()
    fields = HEADER.unpack_from(buf, start)
    problem = header_problem(fields)
    if problem is not None:
        counts[problem] += 1
        return 1, ()
    header_bytes = HEADER_BYTES if fields[1] == VERSION else HEADER_V2_BYTES
    crc_at = start + header_bytes + fields[5] + (TAG_BYTES if fields[3] & FLAG_AUTH else 0)
    if end - crc_at < CRC_BYTES:
        return _incomplete(final, counts), ()
    if google_crc32c.value(view[start:crc_at]) != CRC.unpack_from(buf, crc_at)[0]:
        counts["bad_crc"] += 1
        return -1, fields
    return crc_at + CRC_BYTES - start, fields


def _incomplete(final: bool, counts: dict[str, int]) -> int:
    if not final:
        return 0
    counts["truncated"] += 1
    return 1


def _frame(r: Row, payload: bytes, verified: bool, session: int | None = None) -> Frame:
    return Frame(r[2], r[6], r[7], r[9], r[10], r[11], r[4], r[8], payload, r[3], verified, session)


class PythonScanner:
    """:func:`scan_python`, keeping its counters in a dict."""

    name = "numpy"

    def __init__(self) -> None:
        self.counts = dict.fromkeys(SCAN_COUNTERS, 0)

    def scan(self, buf: bytearray, final: bool) -> ScanResult:
        return scan_python(buf, final, self.counts)

    def counters(self) -> dict[str, int]:
        return dict(self.counts)

    def reset(self) -> None:
        self.counts = dict.fromkeys(SCAN_COUNTERS, 0)


class NumbaScanner:
    """The compiled kernel, one call per push; counters in an int64 array. ImportError: no numba."""

    name = "numba"

    def __init__(self) -> None:
        try:
            from firmware_bridge._scan_numba import N_COUNTS, ROW_FIELDS, scan_numba
        except ImportError as error:
            raise ImportError("the numba scanner needs numba: pip install numba") from error

        self._kernel = scan_numba
        self._totals = np.zeros(N_COUNTS, dtype=np.int64)
        self._rows = np.zeros((64, ROW_FIELDS), dtype=np.uint64)
        self._bad_ids = np.zeros(1024, dtype=np.uint64)
        self.scan(bytearray(), False)  # load the compiled kernel now, not on the first packet

    def scan(self, buf: bytearray, final: bool) -> ScanResult:
        if self._rows.shape[0] < len(buf) // MIN_FRAME_BYTES + 1:
            self._rows = np.zeros(
                (2 * len(buf) // MIN_FRAME_BYTES + 1, self._rows.shape[1]), np.uint64
            )
        view = np.frombuffer(buf, dtype=np.uint8)
        n_rows, n_bad, pos = self._kernel(view, final, self._rows, self._bad_ids, self._totals)
        del view  # release the buffer export before the caller resizes it
        return self._rows[:n_rows].tolist(), self._bad_ids[:n_bad].tolist(), pos

    def counters(self) -> dict[str, int]:
        return dict(zip(SCAN_COUNTERS, self._totals.tolist(), strict=True))

    def reset(self) -> None:
        self._totals[:] = 0


def _make_scanner(name: str) -> PythonScanner | NumbaScanner:
    if name not in ("auto", "numba", "numpy"):
        raise SettingError(f"scanner must be auto, numba or numpy, got {name!r}")
    if name == "numpy":
        return PythonScanner()
    try:
        return NumbaScanner()
    except ImportError:
        if name == "numba":
            raise
        return PythonScanner()


class FrameParser:
    """``keys``: v2's device keys and v1's HMAC keys (a v1 device with a key must tag its
    frames); ``default_key``: the key of devices not in ``keys``; without ``state_path`` v2
    sessions live in memory only."""

    def __init__(
        self,
        keys: Mapping[int, bytes] | None = None,
        default_key: bytes | None = None,
        scanner: str = "auto",
        allow_v1: bool = False,
        state_path: str | Path | None = None,
    ) -> None:
        self._keys, self._default_key = dict(keys or {}), default_key
        self.allow_v1 = allow_v1
        self.guard = SessionGuard(self._keys, default_key, SessionStore(state_path))
        self._scanner = _make_scanner(scanner)
        self.scanner = self._scanner.name
        self._buf = bytearray()
        self.bad_crc_by_device: dict[int, int] = {}
        self._counts = dict.fromkeys(COUNTERS, 0)

    def reset(self) -> None:
        self._buf.clear()
        self.bad_crc_by_device.clear()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._scanner.reset()

    def push(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Frames completed by ``data`` (possibly none), in stream order."""
        self._counts["bytes_received"] += len(data)
        self._buf += data
        return self._run(final=False)

    def flush(self) -> list[Frame]:
        """No more bytes (a datagram ended, a link dropped): incomplete frames are ``truncated``."""
        return self._run(final=True) if self._buf else []

    def stats(self) -> ParserStats:
        counts = self._counts | self._scanner.counters()
        counts["skipped_bytes"] += counts.pop("rejected_bytes")  # whole frames the policy drops
        return ParserStats(**counts, pending_bytes=len(self._buf))

    def close(self) -> None:
        """Save the v2 session state (every stream's counter)."""
        self.guard.close()

    def _run(self, final: bool) -> list[Frame]:
        buf = self._buf
        rows, bad_ids, pos = self._scanner.scan(buf, final)
        for device_id in bad_ids:
            table = self.bad_crc_by_device
            if device_id in table or len(table) < MAX_ATTRIBUTED_DEVICES:
                table[device_id] = table.get(device_id, 0) + 1
        with memoryview(buf) as view:
            frames = self._frames(bytes(view[:pos]), rows) if rows else []
        del buf[:pos]
        return frames

    def _frames(self, buf: bytes, rows: list[Row]) -> list[Frame]:
        counts = self._counts
        all_v1 = all(r[12] == VERSION for r in rows)
        if self.allow_v1 and all_v1 and not self._keys and self._default_key is None:
            h = HEADER_BYTES  # the v1 hot path (no keys at all): _frame() inlined
            frames = [
                Frame(r[2], r[6], r[7], r[9], r[10], r[11], r[4], r[8],
                      buf[r[0] + h : r[0] + h + r[5]], r[3], False)
                for r in rows
            ]  # fmt: skip
            counts["unverified"] += sum(1 for r in rows if r[3] & FLAG_AUTH)
            counts["frames_ok"] += len(frames)
            counts["frame_bytes"] += sum(r[1] for r in rows)
            return frames
        frames = []
        guard_open = self.guard.open
        for r in rows:
            if r[12] == VERSION_2:
                opened = guard_open(buf, r[0], r[5], (r[6], r[7], r[13], r[9]))
                if isinstance(opened, str):
                    counts[opened] += 1
                    counts["rejected_bytes"] += r[1]
                    continue
                frames.append(_frame(r, opened, True, r[13]))
            else:
                verified = self._tag_ok(buf, r) if self.allow_v1 else None
                if verified is None:
                    counts["v1_rejected" if not self.allow_v1 else "bad_tag"] += 1
                    counts["rejected_bytes"] += r[1]
                    continue
                at = r[0] + HEADER_BYTES
                frames.append(_frame(r, buf[at : at + r[5]], verified))
            counts["frames_ok"] += 1
            counts["frame_bytes"] += r[1]
        return frames

    def _tag_ok(self, buf: bytes, row: Row) -> bool | None:
        """True: tag verified; False: no tag needed (or no key to check it); None: rejected."""
        start, flags, device, payload_end = row[0], row[3], row[6], row[0] + HEADER_BYTES + row[5]
        key = self._keys.get(device, self._default_key)
        if not flags & FLAG_AUTH:
            return False if key is None else None
        if key is None:
            self._counts["unverified"] += 1
            return False
        tag = compute_tag(key, buf[start:payload_end])
        if hmac.compare_digest(tag, bytes(buf[payload_end : payload_end + TAG_BYTES])):
            return True
        return None
