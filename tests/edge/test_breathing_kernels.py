"""The breath tracker's Numba kernels against plain NumPy / SciPy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import find_peaks

from edge.bed import breathing_kernels as k

RNG = np.random.default_rng(7)


def levels_reference(features, n_frames, breath, sub, body, stride, floor_db, lost):
    """Per sample: each sub-band's and the body band's mean dB over ``stride`` frames."""
    db = features.astype(np.float64) * (10.0 / math.log(10.0))
    n = n_frames // stride
    groups = sub.max() + 1
    out = np.zeros((groups + 1, n))
    for j in range(n):
        block = db[:, j * stride : (j + 1) * stride]
        for g in range(groups):
            out[g, j] = block[breath[sub == g]].mean()
        out[groups, j] = block[body].mean()
    flags = (lost | (out[:groups].max(axis=0) <= floor_db)).astype(np.uint8)
    return out, flags


@pytest.mark.parametrize(("n_frames", "stride"), [(48, 4), (47, 4), (12, 3), (3, 4)])
@pytest.mark.parametrize("lost", [False, True])
def test_levels_equal_the_reference(n_frames: int, stride: int, lost: bool) -> None:
    features = RNG.normal(-10.0, 3.0, (64, 48)).astype(np.float32)
    features[:, :stride] = math.log(1e-10)  # digital zeros in the first sample
    breath = np.arange(10, 34)
    sub = np.arange(24) * 6 // 24
    body = np.arange(2, 6)
    floor_db = 10.0 * math.log10(1e-10) + 1.0
    scale = 10.0 / math.log(10.0)
    out = np.zeros((7, 16))
    flags = np.zeros(16, np.uint8)
    n = k.levels(features, n_frames, breath, sub, body, scale, 1e-10, floor_db, stride, lost,
                 out, flags)  # fmt: skip
    want, want_flags = levels_reference(features, n_frames, breath, sub, body, stride,
                                        floor_db, lost)  # fmt: skip
    assert n == n_frames // stride
    np.testing.assert_allclose(out[:, :n], want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(flags[:n], want_flags)
    if n:
        assert flags[0] == 1  # the zeros are lost signal whatever the window says


def activity_reference(groups, body, lost, alpha, smooth, alpha_body, alpha_base, learn_until):
    """Plain Python: slow levels (restarting after lost samples, first as the running mean),
    the median over sub-bands, a running median over time, the tilt (the upper half of the
    sub-bands' mean rise less the lower half's, held over lost samples), the body levels."""
    n_groups, n = groups.shape
    means = np.zeros(n_groups)
    out = np.zeros(n)
    tilt = np.zeros(n)
    raw: list[float] = []
    seg, body_now, base = 0, None, None
    for t in range(n):
        if lost[t]:
            out[t] = out[t - 1] if t else 0.0
            tilt[t] = tilt[t - 1] if t else 0.0
            seg = None
            continue
        if seg is None or t == 0:
            seg, raw = t, []
        run = t - seg + 1
        rate = max(alpha, 1.0 / run)
        means += rate * (groups[:, t] - means)
        raw.append(float(np.median(groups[:, t] - means)))
        rise = groups[:, t] - means
        tilt[t] = rise[n_groups // 2 :].mean() - rise[: n_groups // 2].mean()
        out[t] = float(np.median(raw[-smooth:]))
        if body_now is None:
            body_now = body[t]
        body_now += alpha_body * (body[t] - body_now)
        if t <= learn_until:
            base = body_now if base is None else base
            base += alpha_base * (body_now - base)
    return out, tilt, body_now, base


@pytest.mark.parametrize("n", [1, 37, 400])
@pytest.mark.parametrize("smooth", [1, 4, 10])
@pytest.mark.parametrize("with_lost", [False, True])
def test_activity_equals_the_reference(n: int, smooth: int, with_lost: bool) -> None:
    groups = RNG.normal(-40.0, 4.0, (6, n))
    body = RNG.normal(-30.0, 2.0, n)
    lost = np.zeros(n, np.uint8)
    if with_lost and n > 10:
        lost[n // 3 : n // 3 + 7] = 1
    params = np.array([0.01, 0.05, 0.002])
    learn_until = n // 2
    iparams = np.array([0, learn_until], np.int64)
    istate = np.zeros(k.N_ISTATE, np.int64)
    fstate = np.zeros(k.N_FSTATE)
    ring = np.zeros(512)
    ring_lost = np.zeros(512, np.uint8)
    ring_tilt = np.zeros(512)
    means, raw = np.zeros(6), np.zeros(smooth)
    half = n // 2
    for lo, hi in ((0, half), (half, n)):  # fed in two pieces: the state carries over
        k.activity(groups[:, lo:hi], body[lo:hi], lost[lo:hi], params, iparams, istate, fstate,
                   means, np.zeros(6), raw, np.zeros(smooth), ring, ring_lost,
                   ring_tilt)  # fmt: skip
    want, tilt, body_now, base = activity_reference(groups, body, lost, 0.01, smooth, 0.05,
                                                    0.002, learn_until)  # fmt: skip
    np.testing.assert_allclose(ring[:n], want, atol=1e-9)
    np.testing.assert_allclose(ring_tilt[:n], tilt, atol=1e-9)
    np.testing.assert_array_equal(ring_lost[:n], lost)
    assert istate[k.S_COUNT] == n
    assert fstate[k.F_BODY] == pytest.approx(body_now)
    if base is not None:
        assert istate[k.S_BASE_SET] == 1
        assert fstate[k.F_BASE] == pytest.approx(base)


def smoothed_padded(x, cycle, pad_start, pad_end):
    """The kernel's view of the window: centred moving mean, ends padded with the lowest value
    of the three-cycle span next to them."""
    n = x.shape[0]
    half = cycle // 2
    s = np.array([x[max(0, t - half) : min(n, t - half + cycle)].mean() for t in range(n)])
    lo = s[: min(n, cycle * 3)].min() if pad_start else s[0]
    hi = s[max(0, n - cycle * 3) :].min() if pad_end else s[-1]
    return np.concatenate([[lo], s, [hi]])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(("cycle", "gap", "delta"), [(1, 1, 0.5), (7, 20, 2.0), (12, 30, 4.0)])
@pytest.mark.parametrize("pads", [(False, False), (True, True), (False, True)])
def test_humps_equal_scipy_find_peaks(
    seed: int, cycle: int, gap: int, delta: float, pads: tuple[bool, bool]
) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(600)
    x = 8.0 * np.sin(2 * np.pi * t / rng.uniform(40, 90)) + rng.normal(0, 2.0, t.size)
    cap = 400
    peaks, proms, ends = np.zeros(cap, np.int64), np.zeros(cap), np.zeros(cap, np.int64)
    max_width = 30
    n = k.humps(x, cycle, gap, delta, max_width, pads[0], pads[1], peaks, proms, ends)
    s = smoothed_padded(x, cycle, *pads)
    found, props = find_peaks(s, distance=gap, prominence=delta)
    want, want_ends, want_proms = [], [], []
    for p, prom in zip(found, props["prominences"], strict=True):
        half = s[p] - 0.5 * prom  # samples from the last one under half height on the left
        right = np.flatnonzero(s[p:] <= half)  # to the first one under it on the right
        left = np.flatnonzero(s[: p + 1] <= half)
        end = p + right[0] if right.size else len(s) - 1
        start = left[-1] if left.size else 0
        if end - start <= max_width:
            want.append(p - 1)
            want_ends.append(min(end, len(x)) - 1)
            want_proms.append(prom)
    np.testing.assert_array_equal(peaks[:n], want)
    np.testing.assert_allclose(proms[:n], want_proms, atol=1e-9)
    np.testing.assert_array_equal(ends[:n], want_ends)


def test_spread_equals_numpy_percentiles() -> None:
    x = RNG.normal(0, 5, 750)
    good = RNG.random(750) > 0.2
    want = np.subtract(*np.percentile(x[good], (95, 5)))
    assert k.spread(x, good, 0.05) == pytest.approx(want)
    assert k.spread(x, np.zeros(750, np.bool_), 0.05) == 0.0


def smoothed_reference(x: np.ndarray, good: np.ndarray, width: int) -> np.ndarray:
    """The tilt over good samples under a centred moving mean (numpy.convolve, "same")."""
    return np.convolve(np.where(good, x, 0.0), np.ones(width) / width, mode="same")


def lagged_reference(x: np.ndarray, good: np.ndarray, lag: int) -> float:
    c = np.where(good, x - x[good].mean(), 0.0)
    energy = float(np.dot(c, c))
    if energy <= 0.0 or not 0 < lag < x.size - 1:
        return 0.0
    return float(np.dot(c[:-lag], c[lag:])) / energy * x.size / (x.size - lag)


@pytest.mark.parametrize("width", [1, 4, 7, 40])
@pytest.mark.parametrize("lags", [(30, 60), (0, 749), (120, 240)])
def test_tilt_lags_equal_convolve_and_the_dot_products(width: int, lags: tuple[int, int]) -> None:
    t = np.arange(750)
    x = 3.0 * np.sin(2 * np.pi * t / 60.0) + RNG.normal(0, 1.0, t.size)
    good = RNG.random(t.size) > 0.15
    smooth = np.empty(t.size)
    t1, t2, std = k.tilt_lags(x, good, width, lags[0], lags[1], smooth)
    want = smoothed_reference(x, good, width)
    np.testing.assert_allclose(smooth, want, atol=1e-9)
    assert t1 == pytest.approx(lagged_reference(want, good, lags[0]), abs=1e-9)
    assert t2 == pytest.approx(lagged_reference(want, good, lags[1]), abs=1e-9)
    assert std == pytest.approx(float(want[good].std()), abs=1e-9)
    at = np.array([0, 3, 100, 749], np.int64)
    out = np.empty(at.size)
    k.smoothed_at(x, good, width, at, out)
    np.testing.assert_allclose(out, want[at], atol=1e-9)


def test_tilt_lags_of_a_flat_or_lost_window_are_zero() -> None:
    smooth = np.empty(100)
    assert k.tilt_lags(np.zeros(100), np.ones(100, np.bool_), 5, 10, 20, smooth) == (0.0, 0.0, 0.0)
    assert k.tilt_lags(RNG.normal(0, 1, 100), np.zeros(100, np.bool_), 5, 10, 20, smooth) == (
        0.0,
        0.0,
        0.0,
    )


def two_levels_reference(cue: np.ndarray) -> tuple[np.ndarray, float]:
    """Every split of the sorted values tried: the one with the least squares within."""
    order = np.sort(cue)
    best = min(
        range(1, cue.size), key=lambda i: order[:i].var() * i + order[i:].var() * (cue.size - i)
    )
    low, high = order[:best], order[best:]
    spread = math.sqrt(0.5 * (low.var() + high.var())) + 1e-9
    return cue >= order[best], float(high.mean() - low.mean()) / spread


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_levels_split_where_the_squares_within_are_least(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cue = np.where(np.arange(20) % 2 == 0, 3.0, -1.0) + rng.normal(0, 0.5, 20)
    upper = np.empty(20, np.bool_)
    separation = k.two_levels(cue, upper)
    want, want_separation = two_levels_reference(cue)
    np.testing.assert_array_equal(upper, want)
    np.testing.assert_array_equal(upper, np.arange(20) % 2 == 0)  # the two levels it was made of
    assert separation == pytest.approx(want_separation, rel=1e-6)
    one = np.empty(1, np.bool_)
    assert k.two_levels(np.array([2.0]), one) == 0.0
    assert one.all()
