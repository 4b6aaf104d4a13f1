"""Synthetic chest audio for the runtime's breathing tests: breath sounds (noise of the airways
in 200-800 Hz rising and falling with each breath), heart sounds under 150 Hz all along, and a
pause in which only the heart is heard."""

from __future__ import annotations

import numpy as np
from scipy.signal import butter, sosfilt

RATE_HZ = 8000


def chest_audio(
    seconds: float, rate_bpm: float, pause: tuple[float, float] | None = None, seed: int = 0
) -> np.ndarray:
    """(n,) float32 at 8 kHz: a 1.3-s breath every ``60 / rate_bpm`` s from 0.5 s (none inside
    ``pause``), heart sounds every 0.8 s throughout, a faint floor."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE_HZ)
    t = np.arange(n) / RATE_HZ
    envelope = np.zeros(n)
    onset = 0.5
    while onset < seconds:
        if pause is None or not pause[0] <= onset < pause[1]:
            inside = (t >= onset) & (t < onset + 1.3)
            envelope[inside] = np.sin(np.pi * (t[inside] - onset) / 1.3) ** 2
        onset += 60.0 / rate_bpm
    breath = sosfilt(butter(4, [200, 800], "band", fs=RATE_HZ, output="sos"), rng.normal(0, 1, n))
    beats = ((t % 0.8) < 0.08) * np.sin(2 * np.pi * 60 * t)
    heart = sosfilt(butter(2, 150, "low", fs=RATE_HZ, output="sos"), beats)
    floor = sosfilt(butter(2, [100, 3000], "band", fs=RATE_HZ, output="sos"), rng.normal(0, 1, n))
    audio = 0.08 * breath * envelope + 0.05 * heart + 0.0005 * floor
    return audio.astype(np.float32)
