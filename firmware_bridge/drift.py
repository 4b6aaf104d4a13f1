"""Device clock drift: how fast the device's sample clock runs against the receiver's clock.

``drift_ppm = (b - 1) * 1e6``, b the least-squares slope of device time against arrival time over
a sliding window; +200: the device's crystal runs fast. Delays only ever make a frame later, so
the fit uses the least-delayed point of each block of ``block_points`` (the lower envelope, as
clock-skew estimators do): docs/firmware-protocol.md, 7."""

from __future__ import annotations

from array import array

import numpy as np

from firmware_bridge.errors import SettingError

PPM = 1e6


class DriftEstimator:
    """Sliding-window least-squares drift estimate; ``add`` is O(1), ``drift_ppm`` O(window).
    The default window, 2048 points, is about 65 s of 256-sample frames at 8 kHz."""

    def __init__(
        self, window_points: int = 2048, min_span_s: float = 2.0, block_points: int = 16
    ) -> None:
        if window_points < 3 or block_points < 1:
            raise SettingError(
                f"window_points must be >= 3 and block_points >= 1, got {window_points}, "
                f"{block_points}"
            )
        self._window, self._block = window_points, block_points
        self._min_span_s = min_span_s
        self.reset()

    def reset(self) -> None:
        """Forget every point (the device restarted its clock)."""
        # flat rings (uint64 sample indices, float64 seconds): cheap to append, 16 B a point
        self._samples = array("Q")
        self._arrival_s = array("d")
        self._count = 0

    def add(self, end_sample: int, arrival_s: float) -> None:
        """One frame: the index just past its last sample, and its arrival (receiver clock, s)."""
        if self._count < self._window:
            self._samples.append(end_sample)
            self._arrival_s.append(arrival_s)
        else:
            slot = self._count % self._window
            self._samples[slot] = end_sample
            self._arrival_s[slot] = arrival_s
        self._count += 1

    def drift_ppm(self, sample_rate_hz: int) -> float | None:
        """For nominal ``sample_rate_hz``; None until the window spans ``min_span_s``."""
        if min(self._count, self._window) < 3:
            return None
        oldest = self._count % self._window if self._count > self._window else 0
        samples = np.roll(np.frombuffer(self._samples, dtype=np.uint64), -oldest)
        x = np.roll(np.frombuffer(self._arrival_s, dtype=np.float64), -oldest)
        x = x - x.min()
        y = (samples - samples.min()).astype(np.float64) / sample_rate_hz
        if float(x.max()) < self._min_span_s:
            return None
        x, y = _lower_envelope(x, y, self._block)
        dx, dy = x - x.mean(), y - y.mean()
        denominator = float(dx @ dx)
        return (float(dx @ dy) / denominator - 1.0) * PPM if denominator > 0 else None


def _lower_envelope(x: np.ndarray, y: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per block of ``block`` consecutive points, the one that arrived earliest relative to
    its device time (all points when that leaves fewer than 3)."""
    n_blocks = x.size // block
    if n_blocks < 3:
        return x, y
    delay = (x - y)[: n_blocks * block].reshape(n_blocks, block)
    keep = np.arange(n_blocks) * block + delay.argmin(axis=1)
    return x[keep], y[keep]
