"""The in-kernel FFT against NumPy, for every size the front end may use."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

from edge.features.fft import FramesFft, frames_power, make_plan, rfft_power


@pytest.mark.parametrize("n_fft", [4, 8, 64, 256, 512, 2048])
def test_builtin_rfft_power_matches_numpy(n_fft: int) -> None:
    rng = np.random.default_rng(n_fft)
    x = rng.standard_normal(n_fft)
    plan = make_plan(n_fft)
    power = np.zeros(n_fft // 2 + 1)
    rfft_power(x, *plan, np.zeros(n_fft // 2), np.zeros(n_fft // 2), power)
    expected = np.abs(np.fft.rfft(x)) ** 2
    np.testing.assert_allclose(power, expected, rtol=1e-10, atol=1e-10 * expected.max())


@njit(cache=True)
def _call_frames_power(frames, n, fft_args, power):
    frames_power(frames, n, fft_args, power)


@pytest.mark.parametrize("n_fft", [16, 512, 1024])
@pytest.mark.parametrize("n", [1, 3, 5])
def test_frames_power_backend_matches_numpy(n_fft: int, n: int) -> None:
    capacity = 5
    frames = np.random.default_rng(n).standard_normal((capacity, n_fft))
    power = np.full((capacity, n_fft // 2 + 1), -1.0)
    _call_frames_power(frames, n, FramesFft(n_fft, capacity).as_args(), power)
    expected = np.abs(np.fft.rfft(frames[:n], axis=1)) ** 2
    np.testing.assert_allclose(power[:n], expected, rtol=1e-10, atol=1e-9)
    assert (power[n:] == -1.0).all()  # rows past n are left alone


@pytest.mark.parametrize("n_fft", [0, 3, 6, 100])
def test_plan_rejects_non_power_of_two(n_fft: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        make_plan(n_fft)


def test_fallback_backend_gives_the_same_logmel(tmp_path: object) -> None:
    """Where rocket-fft's low-level API is missing (e.g. Jetson, Python 3.10), the built-in
    FFT takes over and the streaming log-mel still equals the batch one."""
    code = (
        "import sys; sys.modules['rocket_fft.lowlevel'] = None\n"
        "import numpy as np\n"
        "from edge.features import FeatureSpec, extract, make_stream\n"
        "from edge.features.fft import FFT_BACKEND\n"
        "assert FFT_BACKEND == 'built-in radix-2', FFT_BACKEND\n"
        "x = np.random.default_rng(0).standard_normal(4000) * 0.1\n"
        "spec = FeatureSpec(n_bands=32)\n"
        "diff = np.abs(make_stream(spec).push(x) - extract(x, spec)).max()\n"
        "print(diff)\n"
        "sys.exit(0 if diff <= 1e-5 else 1)\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}  # keep its kernels out of ours
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
