"""What the receiver hands out: timeline segments and reports, per (device, stream).

An assembler records *pieces* while frames arrive (cheap tuples, no NumPy): ``("audio", first,
count, sample_format, payload)``, ``("missing", first, count)``, ``("report", Report)``,
``first`` the output index. :func:`build_outputs` converts a whole drain in one NumPy call per
sample format, so draining 200 streams costs little more than one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from firmware_bridge.protocol import to_float32

# report kinds
SIGNAL_GAP = "signal_gap"  # detail: missing_samples, filled (False: the timeline jumped)
DEVICE_STATUS = "device_status"  # detail: battery_percent, gain_cdb, clipped_samples, off_body
DEVICE_INFO = "device_info"  # detail: firmware_version, hardware_revision, model
RESTART = "restart"  # the device restarted its stream; the output continues seamlessly
RATE_MISMATCH = "rate_mismatch"  # frames at another rate than the stream's (first only)
Piece = tuple[Any, ...]


class StreamKey(NamedTuple):
    device_id: int
    stream_id: int


class Segment(NamedTuple):
    """A piece of a stream's reconstructed timeline."""

    stream: StreamKey
    first_sample: int  # output index of samples[0]
    samples: np.ndarray  # float32 (n,), full scale 1.0; zeros when missing
    missing: bool
    sample_rate_hz: int


@dataclass(frozen=True)
class Report:
    """A condition on a stream's timeline (see the kinds above)."""

    stream: StreamKey
    kind: str
    sample_index: int  # output index where it applies
    detail: dict[str, Any] = field(default_factory=dict)


def build_outputs(streams: list[tuple[StreamKey, int, list[Piece]]]) -> list[Segment | Report]:
    """Segments and reports of ``(key, sample_rate_hz, pieces)`` per stream, each stream's in
    timeline order (streams one after the other)."""
    out: list[Any] = []
    runs: dict[int, list[list[Any]]] = {}  # format -> [out slot, key, rate, first, count, payloads]
    for key, rate_hz, pieces in streams:
        run: list[Any] | None = None
        for piece in pieces:
            if piece[0] == "audio":
                if run is not None and run[6] == piece[3]:
                    run[4] += piece[2]
                    run[5].append(piece[4])
                    continue
                run = [len(out), key, rate_hz, piece[1], piece[2], [piece[4]], piece[3]]
                runs.setdefault(piece[3], []).append(run)
                out.append(None)  # filled below
                continue
            run = None
            if piece[0] == "missing":
                silence = np.zeros(piece[2], dtype=np.float32)
                out.append(Segment(key, piece[1], silence, True, rate_hz))
            else:
                out.append(piece[1])
    for sample_format, fmt_runs in runs.items():
        floats = to_float32(b"".join(p for r in fmt_runs for p in r[5]), sample_format)
        at = 0
        for slot, key, rate_hz, first, count, _, _ in fmt_runs:
            out[slot] = Segment(key, first, floats[at : at + count], False, rate_hz)
            at += count
    return out
