"""Numba kernels behind :class:`edge.bed.breathing.BreathTracker`: :func:`levels` per window,
:func:`activity` per sample, :func:`humps` per analysis (docs/respiration.md, "The estimator, chosen
by measurement"). Samples flagged ``lost`` hold the activity and restart the slow levels at the next
good sample, so a returning signal is not a breath. State lives in arrays the tracker allocates
once; ``tests/edge/test_breathing_kernels.py`` holds the kernels to NumPy / SciPy references."""

from __future__ import annotations

import numpy as np
from numba import njit

# indices: P_ into params (float64), I_ iparams (int64), S_ istate (int64), F_ fstate (float64)
P_ALPHA_DETREND = 0  # 1 - exp(-1 / (detrend_s * rate))
P_ALPHA_BODY = 1  # body level, short mean
P_ALPHA_BASE = 2  # body level while breathing (baseline)
N_PARAMS = 3
I_SMOOTH = 0  # samples of the activity's moving mean
I_LEARN_UNTIL = 1  # the body baseline learns from samples up to this one
N_IPARAMS = 2
S_COUNT = 0  # samples taken so far (lost ones included): the next sample's index
S_SEG_START = 1  # first sample of the current run of good samples
S_REINIT = 2  # 1: the next good sample restarts the slow levels
S_BASE_SET = 3  # 1: the body baseline has a value
N_ISTATE = 4
F_BODY = 0  # body level, short mean
F_BASE = 1  # body level while breathing
N_FSTATE = 2


@njit(cache=True)
def levels(
    features: np.ndarray,  # (n_bands, n_frames) the front end's values of one kind
    n_frames: int,  # the first n_frames are audio (the rest: end-of-stream padding)
    breath: np.ndarray,  # (nb,) int64 the breath band's bands
    sub: np.ndarray,  # (nb,) int64 the sub-band of each
    body: np.ndarray,  # (nk,) int64 the body band's bands
    scale: float,  # dB per front-end unit (``log`` frames); 0: frames are power
    offset: float,  # power frames: the floor before the logarithm
    floor_db: float,  # a sample whose sub-bands all lie at or under this holds digital zeros
    stride: int,  # front-end frames per sample
    lost: bool,  # the window was lost signal
    out: np.ndarray,  # (G + 1, >= n_frames // stride) out: sub-band and body levels, dB
    flags: np.ndarray,  # (>= n_frames // stride,) uint8 out: 1 where lost
) -> int:
    """The number of samples written (a last part of fewer than ``stride`` frames is left out)."""
    n_groups = out.shape[0] - 1
    n = n_frames // stride
    counts = np.zeros(n_groups)
    for b in range(breath.shape[0]):
        counts[sub[b]] += stride
    for j in range(n):
        for g in range(n_groups + 1):
            out[g, j] = 0.0
        for f in range(j * stride, (j + 1) * stride):
            for b in range(breath.shape[0]):
                out[sub[b], j] += _db(features[breath[b], f], scale, offset)
            for b in range(body.shape[0]):
                out[n_groups, j] += _db(features[body[b], f], scale, offset)
        loudest = -np.inf
        for g in range(n_groups):
            out[g, j] /= counts[g]
            loudest = max(loudest, out[g, j])
        out[n_groups, j] /= body.shape[0] * stride
        flags[j] = 1 if lost or loudest <= floor_db else 0
    return n


@njit(cache=True)
def _db(value: float, scale: float, offset: float) -> float:
    if scale > 0.0:
        return value * scale
    return 10.0 * np.log10(max(value, offset))


@njit(cache=True)
def _insert_sorted(values: np.ndarray, n: int, value: float) -> None:
    i = n
    while i > 0 and values[i - 1] > value:
        values[i] = values[i - 1]
        i -= 1
    values[i] = value


@njit(cache=True)
def _median_of_sorted(values: np.ndarray, n: int) -> float:
    mid = n // 2
    return values[mid] if n % 2 else 0.5 * (values[mid - 1] + values[mid])


@njit(cache=True)
def _running_median(raw: np.ndarray, t: int, count: int, scratch: np.ndarray) -> float:
    """Median of the ``count`` values of ``raw`` (a ring) up to sample ``t``."""
    size = raw.shape[0]
    for j in range(count):
        _insert_sorted(scratch, j, raw[(t - j) % size])
    return _median_of_sorted(scratch, count)


@njit(cache=True)
def activity(
    groups: np.ndarray,  # (G, n) sub-band levels, dB
    body: np.ndarray,  # (n,) body-band level, dB
    lost: np.ndarray,  # (n,) uint8, 1: the signal was lost there
    params: np.ndarray,  # (N_PARAMS,) float64
    iparams: np.ndarray,  # (N_IPARAMS,) int64
    istate: np.ndarray,  # (N_ISTATE,) int64
    fstate: np.ndarray,  # (N_FSTATE,) float64
    means: np.ndarray,  # (G,) slow level of each sub-band
    across: np.ndarray,  # (G,) room to sort the sub-bands' values
    raw: np.ndarray,  # (S,) the last S activity values before the running median
    scratch: np.ndarray,  # (S,) room to sort them
    ring_a: np.ndarray,  # (N,) activity
    ring_lost: np.ndarray,  # (N,) uint8
    ring_tilt: np.ndarray,  # (N,) the upper sub-bands' rise less the lower ones'
) -> None:
    n_groups, n = groups.shape
    size = ring_a.shape[0]
    smooth = raw.shape[0]
    upper = n_groups // 2  # sub-bands from this one up are the upper half
    for i in range(n):
        t = istate[S_COUNT]
        pos = t % size
        istate[S_COUNT] = t + 1
        if lost[i]:
            ring_a[pos] = ring_a[(t - 1) % size] if t > 0 else 0.0
            ring_tilt[pos] = ring_tilt[(t - 1) % size] if t > 0 else 0.0
            ring_lost[pos] = 1
            istate[S_REINIT] = 1
            continue
        ring_lost[pos] = 0
        if istate[S_REINIT] == 1 or t == 0:
            istate[S_SEG_START] = t
            istate[S_REINIT] = 0
        seg = istate[S_SEG_START]
        run = t - seg + 1  # good samples in this run, this one included
        alpha = max(params[P_ALPHA_DETREND], 1.0 / run)
        tilt = 0.0
        for g in range(n_groups):  # each sub-band over its slow level, sorted into `across`
            means[g] += alpha * (groups[g, i] - means[g])
            rise = groups[g, i] - means[g]
            _insert_sorted(across, g, rise)
            tilt += rise / (n_groups - upper) if g >= upper else -rise / upper
        ring_tilt[pos] = tilt
        raw[t % smooth] = _median_of_sorted(across, n_groups)
        ring_a[pos] = _running_median(raw, t, min(smooth, run), scratch)
        # contact: the body band now, and while breathing was heard
        if istate[S_BASE_SET] == 0 and t == seg:
            fstate[F_BODY] = body[i]
        fstate[F_BODY] += params[P_ALPHA_BODY] * (body[i] - fstate[F_BODY])
        if t <= iparams[I_LEARN_UNTIL]:
            if istate[S_BASE_SET] == 0:
                fstate[F_BASE] = fstate[F_BODY]
                istate[S_BASE_SET] = 1
            fstate[F_BASE] += params[P_ALPHA_BASE] * (fstate[F_BODY] - fstate[F_BASE])


@njit(cache=True)
def humps(
    x: np.ndarray,  # (n,) activity over the window, in time order
    cycle: int,  # samples of the moving mean
    min_gap: int,  # peaks closer than this: the lower goes
    delta: float,  # least prominence of a breath
    max_width: int,  # widest a breath may be where it stands over half its prominence
    pad_start: bool,  # the window's start may cut a hump (the stream's start)
    pad_end: bool,  # its end may cut one (the stream's end, or "is a breath on now?")
    peaks: np.ndarray,  # (cap,) int64 out: the breaths' peaks (indices into x)
    proms: np.ndarray,  # (cap,) float64 out: their prominence
    ends: np.ndarray,  # (cap,) int64 out: where each has fallen by half its prominence
) -> int:
    """The breaths of the window; their number (at most ``cap``). A padded end stands at the
    lowest value of the period next to it, so a hump the window cuts is a peak."""
    n = x.shape[0]
    if n < 3:
        return 0
    s = np.empty(n + 2)
    half = cycle // 2
    for t in range(n):  # centred moving mean, shorter at the ends
        lo, hi = max(0, t - half), min(n, t - half + cycle)
        total = 0.0
        for j in range(lo, hi):
            total += x[j]
        s[t + 1] = total / (hi - lo)
    # a cut hump must rise over its own trough, not over one far away
    s[0] = s[1 : min(n, cycle * 3) + 1].min() if pad_start else s[1]
    s[n + 1] = s[max(1, n + 1 - cycle * 3) : n + 1].min() if pad_end else s[n]
    # local maxima of the padded signal (a plateau's first sample)
    candidates = np.empty(n, np.int64)
    m = 0
    for t in range(1, n + 1):
        if s[t] > s[t - 1]:
            u = t
            while u < n + 1 and s[u + 1] == s[t]:
                u += 1
            if s[u + 1] < s[t]:
                candidates[m] = t
                m += 1
    # min_gap first, the higher peaks first (as scipy.signal.find_peaks does; of equal ones
    # the earlier): an insertion sort, as numpy's stable argsort takes seconds to compile
    order = np.empty(m, np.int64)
    for i in range(m):
        j = i
        while j > 0 and s[candidates[order[j - 1]]] < s[candidates[i]]:
            order[j] = order[j - 1]
            j -= 1
        order[j] = i
    keep = np.ones(m, np.bool_)
    for k in range(m):
        a = order[k]
        if not keep[a]:
            continue
        for b in range(m):
            near = b != a and keep[b] and abs(candidates[b] - candidates[a]) < min_gap
            if near and s[candidates[b]] <= s[candidates[a]]:
                keep[b] = False
    found = 0
    cap = peaks.shape[0]
    for a in range(m):
        if not keep[a] or found >= cap:
            continue
        p = candidates[a]
        left = s[p]
        j = p - 1
        while j >= 0 and s[j] <= s[p]:
            left = min(left, s[j])
            j -= 1
        right = s[p]
        j = p + 1
        while j <= n + 1 and s[j] <= s[p]:
            right = min(right, s[j])
            j += 1
        prominence = s[p] - max(left, right)
        if prominence < delta:
            continue
        half_level = s[p] - 0.5 * prominence
        end = p
        while end <= n and s[end] > half_level:
            end += 1
        start = p
        while start >= 1 and s[start] > half_level:
            start -= 1
        if end - start > max_width:  # a step of the floor, not a breath
            continue
        peaks[found] = p - 1
        proms[found] = prominence
        ends[found] = min(end, n) - 1
        found += 1
    return found


@njit(cache=True)
def spread(x: np.ndarray, good: np.ndarray, tail: float) -> float:
    """The range of ``x`` over its ``good`` samples from the ``tail`` to the ``1 - tail``
    quantile (linear interpolation, as numpy.percentile); 0 when none is good."""
    values = np.sort(x[good])
    n = values.shape[0]
    if n == 0:
        return 0.0
    return _quantile(values, 1.0 - tail) - _quantile(values, tail)


@njit(cache=True)
def _quantile(values: np.ndarray, q: float) -> float:
    pos = q * (values.shape[0] - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, values.shape[0] - 1)
    return values[lo] + (pos - lo) * (values[hi] - values[lo])


@njit(cache=True)
def tilt_lags(
    tilt: np.ndarray, good: np.ndarray, width: int, lag1: int, lag2: int, smooth: np.ndarray
) -> tuple[float, float, float]:
    """The octave check's tilt: ``smooth`` gets the good samples' tilt under a centred moving
    mean of ``width`` (numpy.convolve's "same"); returns its autocorrelation per product at
    ``lag1`` and ``lag2`` (0 where a lag does not fit) and its standard deviation."""
    n = tilt.shape[0]
    half = width // 2
    total = 0.0
    lo_at = 0
    hi_at = 0
    for m in range(n):
        hi = min(m - half + width, n)
        lo = max(m - half, 0)
        while hi_at < hi:
            if good[hi_at]:
                total += tilt[hi_at]
            hi_at += 1
        while lo_at < lo:
            if good[lo_at]:
                total -= tilt[lo_at]
            lo_at += 1
        smooth[m] = total / width
    count = 0
    mean = 0.0
    for i in range(n):
        if good[i]:
            count += 1
            mean += smooth[i]
    if count == 0:
        return 0.0, 0.0, 0.0
    mean /= count
    energy = 0.0
    for i in range(n):
        if good[i]:
            energy += (smooth[i] - mean) ** 2
    std = np.sqrt(energy / count)
    return _lagged(smooth, good, mean, energy, lag1), _lagged(smooth, good, mean, energy, lag2), std


@njit(cache=True)
def _lagged(x: np.ndarray, good: np.ndarray, mean: float, energy: float, lag: int) -> float:
    """:func:`tilt_lags`' autocorrelation at ``lag`` (0 if it does not fit or ``energy`` is 0)."""
    n = x.shape[0]
    if not (energy > 0.0 and 0 < lag < n - 1):
        return 0.0
    total = 0.0
    for i in range(n - lag):
        if good[i] and good[i + lag]:
            total += (x[i] - mean) * (x[i + lag] - mean)
    return total / energy * n / (n - lag)


@njit(cache=True)
def smoothed_at(
    tilt: np.ndarray, good: np.ndarray, width: int, at: np.ndarray, out: np.ndarray
) -> None:
    """``out[i]``: :func:`tilt_lags`' ``smooth`` read at sample ``at[i]`` alone."""
    n = tilt.shape[0]
    for i in range(at.shape[0]):
        lo = max(at[i] - width // 2, 0)
        hi = min(at[i] - width // 2 + width, n)
        total = 0.0
        for j in range(lo, hi):
            if good[j]:
                total += tilt[j]
        out[i] = total / width


@njit(cache=True)
def two_levels(cue: np.ndarray, upper: np.ndarray) -> float:
    """``cue``'s two levels (two means in one dimension): ``upper[i]`` where ``cue[i]`` lies
    in the upper one; returns their separation in their spread (the difference of the means
    over the root mean of the two variances; 0 with fewer than two values)."""
    n = cue.shape[0]
    if n < 2:
        upper[:n] = True
        return 0.0
    order = np.sort(cue)
    total = 0.0
    total_sq = 0.0
    for i in range(n):
        total += order[i]
        total_sq += order[i] * order[i]
    best = -1
    best_ss = np.inf
    best_low = 0.0
    best_high = 0.0
    best_low_ss = 0.0
    best_high_ss = 0.0
    low = 0.0
    low_sq = 0.0
    for k in range(1, n):  # the lower level's size
        low += order[k - 1]
        low_sq += order[k - 1] * order[k - 1]
        low_mean = low / k
        high_mean = (total - low) / (n - k)
        low_ss = low_sq - k * low_mean * low_mean
        high_ss = (total_sq - low_sq) - (n - k) * high_mean * high_mean
        if low_ss + high_ss < best_ss:
            best_ss = low_ss + high_ss
            best = k
            best_low, best_high = low_mean, high_mean
            best_low_ss, best_high_ss = low_ss, high_ss
    spread = np.sqrt(0.5 * (max(best_low_ss, 0.0) / best + max(best_high_ss, 0.0) / (n - best)))
    threshold = order[best]
    for i in range(n):
        upper[i] = cue[i] >= threshold
    return (best_high - best_low) / (spread + 1e-9)
