"""Drift estimate: exact on clean arrivals, within a few ppm under jitter and loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from firmware_bridge import emulator
from firmware_bridge.devicemodel import DeviceConfig, device_frames
from firmware_bridge.drift import DriftEstimator
from firmware_bridge.emulator import Channel, Impairments
from firmware_bridge.errors import SettingError
from firmware_bridge.link import Bridge
from firmware_bridge.protocol import encode_frame
from firmware_bridge.receiver import Receiver
from firmware_bridge.transport import UdpTransport
from tests.firmware_bridge.helpers import (
    RATE_HZ,
    Background,
    Timeline,
    collect_until,
    device_key,
    write_recording,
)

FRAME = 256


def arrivals(ppm: float, seconds: float, jitter_s: float, seed: int = 0) -> list[tuple[int, float]]:
    """(first_sample, arrival_s) of a device whose clock is ``ppm`` fast, with network delay
    uniform in [0, jitter_s)."""
    rng = np.random.default_rng(seed)
    firsts = np.arange(0, int(seconds * RATE_HZ), FRAME)
    sent = (firsts + FRAME) / (RATE_HZ * (1 + ppm * 1e-6))
    return list(
        zip(
            firsts.tolist(),
            (100.0 + sent + rng.uniform(0, jitter_s, sent.size)).tolist(),
            strict=True,
        )
    )


@pytest.mark.parametrize("ppm", [-150.0, 0.0, 200.0, 1000.0])
def test_exact_without_jitter(ppm: float) -> None:
    estimator = DriftEstimator()
    for first, arrival_s in arrivals(ppm, 30, 0.0):
        estimator.add(first, arrival_s)
    assert estimator.drift_ppm(RATE_HZ) == pytest.approx(ppm, abs=0.01)


def test_within_a_few_ppm_under_jitter() -> None:
    estimator = DriftEstimator()
    for first, arrival_s in arrivals(200.0, 60, 0.002, seed=3):
        estimator.add(first, arrival_s)
    assert estimator.drift_ppm(RATE_HZ) == pytest.approx(200.0, abs=3.0)


def test_no_estimate_before_the_window_spans_min_span() -> None:
    estimator = DriftEstimator(min_span_s=2.0)
    for first, arrival_s in arrivals(200.0, 1.5, 0.0):
        estimator.add(first, arrival_s)
    assert estimator.drift_ppm(RATE_HZ) is None


def test_sliding_window_follows_a_change() -> None:
    estimator = DriftEstimator(window_points=200)
    points = arrivals(0.0, 20, 0.0) + [
        (f + 20 * RATE_HZ, t + 20.0) for f, t in arrivals(500.0, 20, 0.0)
    ]
    for first, arrival_s in points:
        estimator.add(first, arrival_s)
    assert estimator.drift_ppm(RATE_HZ) == pytest.approx(500.0, abs=1.0)


def test_window_must_hold_three_points() -> None:
    with pytest.raises(SettingError, match="window_points"):
        DriftEstimator(window_points=2)


def test_receiver_estimates_the_emulated_drift_through_a_lossy_channel() -> None:
    """The emulator's device clock runs 200 ppm fast; 5 % loss, reordering, duplicates and
    up to 2 ms of arrival jitter (protocol v2: the duplicates are dropped as replayed): the
    receiver's estimate is within 3 ppm."""
    x = np.random.default_rng(1).integers(-3000, 3000, 90 * RATE_HZ).astype(np.int16)
    key = bytes(range(32))
    config = DeviceConfig(drift_ppm=200.0, key=key, session=1)
    channel = Channel(Impairments(loss=0.05, reorder=0.01, corrupt=0.01, duplicate=0.01, seed=7))
    timed = ((t, encode_frame(f, key)) for t, f in device_frames(x, RATE_HZ, config))
    jitter = np.random.default_rng(2)
    receiver = Receiver(keys={1: key})
    for t_s, data in channel.run(timed):
        receiver.push_datagram(data, 50.0 + t_s + jitter.uniform(0.0, 0.002))
    (stream,) = receiver.stats().streams
    assert stream.drift_ppm == pytest.approx(200.0, abs=3.0)
    assert 0 < receiver.stats().link.replayed <= channel.counts["duplicated"]  # not corrupted


@pytest.mark.slow
def test_realtime_udp_from_the_emulator(tmp_path: Path) -> None:
    """Real time over a real socket (8 s), scheduler and socket jitter included: the estimate
    is within 100 ppm of the emulator's --drift-ppm (measured: 996 to 1001 for 1000 on an idle
    machine; one run on a machine loaded with a training job missed 25 ppm, so the bound leaves
    room for scheduler jitter while still telling 1000 ppm from none)."""
    path = tmp_path / "rec.wav"
    source = write_recording(path, 8.0)
    key_file, key = device_key(tmp_path)
    bridge = Bridge(UdpTransport("127.0.0.1", 0), Receiver(keys={1: key}))
    port = bridge.transport.address[1]  # type: ignore[attr-defined]
    argv = ["--audio", str(path), "--to", f"udp://127.0.0.1:{port}", "--realtime"]
    argv += ["--key-file", str(key_file)]
    device = Background(lambda: emulator.main([*argv, "--drift-ppm", "1000"]))
    timeline = Timeline()
    collect_until(bridge.poll, timeline, lambda: timeline.end >= source.size, timeout_s=30)
    bridge.close()
    assert device.join() == 0
    (stream,) = bridge.receiver.stats().streams
    assert stream.drift_ppm == pytest.approx(1000.0, abs=100.0)
