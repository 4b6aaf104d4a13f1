"""The in-kernel FFT against NumPy, for every size the front end may use."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from edge.features.fft import FrameFft, frame_power, make_plan, rfft_power


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
def _call_frame_power(frame, fft_args, power):
    frame_power(frame, fft_args, power)


@pytest.mark.parametrize("n_fft", [16, 512, 1024])
def test_frame_power_backend_matches_numpy(n_fft: int) -> None:
    x = np.random.default_rng(1).standard_normal(n_fft)
    power = np.zeros(n_fft // 2 + 1)
    _call_frame_power(x, FrameFft(n_fft).as_args(), power)
    np.testing.assert_allclose(power, np.abs(np.fft.rfft(x)) ** 2, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("n_fft", [0, 3, 6, 100])
def test_plan_rejects_non_power_of_two(n_fft: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        make_plan(n_fft)
