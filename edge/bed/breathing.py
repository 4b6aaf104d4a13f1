"""A bed's breathing: respiratory rate, breaths, apnoea and rates out of the age band's range.

The estimator is model-free and reads log-mel levels (:func:`tracker_spec`); the bed computes them
beside the model's front end unless that is exactly this one (``StreamPipeline``'s ``level_spec``).
Per 40-ms sample the activity is the median over ``N_SUB_BANDS`` sub-bands of ``breath_band_hz`` of
each one's level over its slow level (:func:`edge.bed.breathing_kernels.activity`); each analysis
reads the last ``window_s`` of it, or of ``slow_window_s`` where the breathing is too slow for
``window_s`` to hold :data:`SLOW_CYCLES` cycles. The fallback band, apnoea against
``breath_signal_lost``, arming and the rate alerts: docs/respiration.md ("The estimator, chosen
by measurement", "Apnoea or lost signal"), which also has the measurements behind each constant
below."""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from scipy.special import stdtr

from edge.bed import breathing_kernels as k
from edge.bed.agebands import AgeBand
from edge.bed.breathing_alarms import BreathAlarms
from edge.bed.breathing_state import Respiration, RespirationConfig
from edge.bed.detector import FrameGrid, Transition
from edge.features import FeatureSpec, band_centres_hz

N_SUB_BANDS = 6  # the breath band split log-evenly; a breath lifts most of them at once
DETREND_S = 8.0  # a sub-band's slow level: longer than the slowest breath the bands allow
SMOOTH_S = 0.4  # running median of the activity (heart sounds, crackles)
CYCLE_FRACTION = 0.3  # second moving mean: this share of the period (merges a breath's phases)
MIN_GAP_FRACTION = 0.5  # two humps closer than this share of the period are one breath
MIN_DELTA_DB = 1.5  # a breath rises at least this over its trough
DELTA_OF_RANGE = 0.1  # ... and this share of the window's 5-95 % range of the activity
DELTA_OF_BREATHS = 0.25  # ... and this share of the window's median breath prominence
RESUME_FRACTION = 0.5  # a breath that ends an apnoea is at least this share of the typical one
MAX_BREATH_S = 4.0  # a breath stands over half its height for at most this long ...
BREATH_WIDTH_FRACTION = 0.8  # ... or this share of the cycle where longer (slow breathing)
WIDE_CONFIDENCE = 0.7  # ... where the window is this periodic (else a step of the floor)
CUT_GAP_FRACTION = 0.55  # a hump the stream's end cuts this near the breath before: that one's
START_CUT_MAX = 1.6  # cycles from the stream's start to its first breath that one cut cycle spans
START_HEAD_S = 0.2  # the start's level: the highest activity of its first this many seconds
PAIRED_GAP = 0.75  # where a cycle is two humps: a lone one this share of it from any breath counts
SAME_HUMP_FRACTION = 0.125  # humps of two windows this share of a cycle apart are one
RUN_MEMORY = 16  # run starts remembered (the runs of good signal a window can hold)
FAST_SOUNDS = 3  # breath sounds to each of the window's cycles: more than a cycle's two phases
MIN_PHASE_HUMPS = 6  # humps that can show phases alternating (fewer alternate by chance)
PHASE_SEPARATION = 3.0  # their tilt in two levels this far apart (in their spread) ...
PHASE_TURNS = 0.85  # ... turning from one to the other at this share of the humps
MIN_TILT_DB = 0.5  # phases that differ in tilt differ by at least this (dB)
MIN_LOUDNESS_DB = 1.0  # phases alike in tilt that alternate in loudness: this far apart (dB)
ALTERNATION_P = 0.001  # ... or every other hump louder: no likelier by chance than this
CARRIED_P = 0.05  # ... or this, within a window of a cycle heard twice the period
CARRIED_PERIOD = 0.1  # ... within this share
CARRIED_HUMPS = 4  # ... judged there from this many humps (fewer than MIN_PHASE_HUMPS)
OCTAVE_MARGIN = 0.15  # the activity this much more alike two periods on: one cycle is two
TILT_ALTERNATION = -0.2  # the tilt this much against itself one period on: phases alternate
AGREEMENT = 0.25  # the breaths' rate and the period's may differ by this share, no more
BODY_SHORT_S = 2.0  # the body band's current level
BODY_BASE_S = 30.0  # its level while breathing
RECENT_BREATH_FRACTION = 2.0  # the body baseline learns up to this many periods after a breath
FAST_PROMINENCE = 0.4  # a period faster than the band's fast_bpm stands this far over its troughs
UNSURE_HOLD = 2  # a window with no rate counts breaths this many analyse_every_s from its start
CHECK_EVERY = 12  # samples (0.48 s, a window of the shipped model) between pause checks
SILENT_MARGIN_DB = 1.0  # a sub-band this close to the front end's floor holds digital zeros
BREATH_MEMORY = 32  # breaths counted for good that the tracker keeps
SLOW_CYCLES = 3  # a window reads a rate of at least this many cycles; slower: the slow window
SLOW_LOOK_FRACTION = 0.2  # a window giving no rate or a period this share of it looks slower


# a window of the rings (activity, tilt, good, its first stream sample); its periodicity
# (period in s or None, confidence, cycle in s, the phases' cue, the autocorrelation); its
# humps (peaks, prominences, ends, the cycle they give in s, the humps paired out by loudness)
Window = tuple[np.ndarray, np.ndarray, np.ndarray, int]
Periodicity = tuple[float | None, float, float, np.ndarray | None, np.ndarray]
Humps = tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray]


def _band_layout(
    spec: FeatureSpec, config: RespirationConfig, key: str = "breath_band_hz"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(breath bands, the sub-band of each, body bands); ``key``: the setting an error names."""
    centres = band_centres_hz(spec)
    lo, hi = config.breath_band_hz
    breath = np.flatnonzero((centres >= lo) & (centres <= hi))
    body = np.flatnonzero((centres >= config.body_band_hz[0]) & (centres <= config.body_band_hz[1]))
    if breath.size < N_SUB_BANDS or body.size == 0:
        raise ValueError(
            f"respiration: the feature spec's bands ({spec.kind}, {spec.fmin_hz:g}-"
            f"{spec.fmax_hz:g} Hz) hold {breath.size} bands in {key} {lo:g}-{hi:g} "
            f"and {body.size} in body_band_hz; it needs {N_SUB_BANDS} and 1"
        )
    edges = np.geomspace(max(lo, 1.0), hi, N_SUB_BANDS + 1)
    sub = np.clip(np.searchsorted(edges, centres[breath], side="right") - 1, 0, N_SUB_BANDS - 1)
    if len(set(sub.tolist())) < N_SUB_BANDS:  # too few bands for log-even groups: even counts
        sub = np.arange(breath.size) * N_SUB_BANDS // breath.size
    return breath, sub, body


TRACKER_BANDS = 64
TRACKER_FMIN_HZ, TRACKER_FMAX_HZ = 50.0, 4000.0


def tracker_spec(spec: FeatureSpec) -> FeatureSpec:
    return FeatureSpec(
        kind="logmel",
        sample_rate_hz=spec.sample_rate_hz,
        frame_samples=spec.frame_samples,
        hop_samples=spec.hop_samples,
        n_fft=spec.n_fft,
        n_bands=TRACKER_BANDS,
        fmin_hz=TRACKER_FMIN_HZ,
        fmax_hz=min(TRACKER_FMAX_HZ, spec.sample_rate_hz / 2),
        log_offset=spec.log_offset,
    )


def bands_read(config: RespirationConfig, spec: FeatureSpec) -> int:
    """How many of ``spec``'s bands, from the lowest, a bed's trackers read (the level front
    end need compute no more); ValueError unless they hold the breath, fallback and body bands."""
    highest = 0
    other = _fallback_config(config)
    for tracker_config, key in ((config, "breath_band_hz"), (other, "fallback_band_hz")):
        if tracker_config is not None:
            breath, _, body = _band_layout(spec, tracker_config, key)
            highest = max(highest, int(breath.max()), int(body.max()))
    return highest + 1


def _fallback_config(config: RespirationConfig) -> RespirationConfig | None:
    if config.fallback_band_hz is None:
        return None
    # the fallback band reads window_s only (its rings no longer than that: beds per core)
    return replace(
        config,
        breath_band_hz=config.fallback_band_hz,
        fallback_band_hz=None,
        slow_window_s=config.window_s,
    )


def _db_per_unit(spec: FeatureSpec) -> float:
    """dB per unit of ``spec``'s frames (0 for power frames: the kernel takes their log)."""
    if spec.normalisation == "power":
        return 0.0
    return 10.0 / math.log(10.0)


def _floor_db(spec: FeatureSpec) -> float:
    if spec.normalisation == "power":
        return 10.0 * math.log10(spec.log_offset)
    return math.log(spec.log_offset) * _db_per_unit(spec)


class BreathTracker:
    def __init__(
        self,
        config: RespirationConfig,
        spec: FeatureSpec,
        grid: FrameGrid,
        band: AgeBand,
        follows: bool = False,
        stagger: int = 0,
    ) -> None:
        """``follows``: a fallback band's tracker (no alarms; its owner drives it). ``stagger``:
        analyses fall this many checks early, spreading beds started together over rounds."""
        self.config, self.spec, self.grid, self.band = config, spec, grid, band
        self.follows = follows
        self.stride = grid.frame_samples // spec.hop_samples  # front-end frames per sample
        self.rate_hz = grid.sample_rate_hz / grid.frame_samples  # breath samples per second
        key = "fallback_band_hz" if follows else "breath_band_hz"
        self._breath, self._sub, self._body = _band_layout(spec, config, key)
        other = _fallback_config(config)
        self.fallback = (
            None if other is None else BreathTracker(other, spec, grid, band, follows=True)
        )
        self._floor_db = _floor_db(spec) + SILENT_MARGIN_DB
        self._scale = _db_per_unit(spec)
        self._levels = np.zeros((N_SUB_BANDS + 1, 12))  # a window's levels (grown if needed)
        self._flags = np.zeros(12, np.uint8)
        self.window = round(config.window_s * self.rate_hz)  # an analysis' samples, or ...
        size = max(self.window, round(config.slow_window_s * self.rate_hz))  # ... the rings'
        self.slow_bpm = 60.0 * SLOW_CYCLES / config.slow_window_s  # the slow window's slowest
        self.ring_a = np.zeros(size)
        self.ring_lost = np.zeros(size, np.uint8)
        self.ring_tilt = np.zeros(size)
        self._raw = np.zeros(max(1, round(SMOOTH_S * self.rate_hz)))
        self._scratch = np.zeros_like(self._raw)
        self._across = np.zeros(N_SUB_BANDS)
        self.istate = np.zeros(k.N_ISTATE, np.int64)
        self.fstate = np.zeros(k.N_FSTATE)
        self.means = np.zeros(N_SUB_BANDS)
        self.params = np.zeros(k.N_PARAMS)
        self.iparams = np.zeros(k.N_IPARAMS, np.int64)
        self.params[k.P_ALPHA_DETREND] = self._alpha(DETREND_S)
        self.params[k.P_ALPHA_BODY] = self._alpha(BODY_SHORT_S)
        self.params[k.P_ALPHA_BASE] = self._alpha(BODY_BASE_S)
        self.iparams[k.I_LEARN_UNTIL] = -1
        # humps' scratch: as many as half a window's samples (the slow window's, at least half
        # a 10-s cycle apart, hold no more than 13)
        self._peaks = np.zeros(self.window // 2 + 1, np.int64)
        self._proms = np.zeros(self.window // 2 + 1)
        self._ends = np.zeros(self.window // 2 + 1, np.int64)
        # until the first analysis: mid-band (of the rates taken without a sharp peak)
        self.period_s = 120.0 / (band.search_bpm[0] + (band.fast_bpm or band.search_bpm[1]))
        self.delta_db = MIN_DELTA_DB
        self.typical_db = 0.0  # median prominence of the breaths of the last assessed window
        self.assessable_at = -1  # the last analysis that gave a rate (its sample)
        # the last analysis' first sample (0: it held the whole stream; before the newest
        # window_s: it read the slow window)
        self.window_first = 0
        self.breaths = 0  # breaths counted for good since the start
        # (peak, prom, the interval from the breath before where counted in the rate else 0,
        # the good samples up to the peak)
        self.final: deque[tuple[int, float, int, int]] = deque(maxlen=BREATH_MEMORY)
        # breaths withdrawn: (peak, the samples within which a hump is that one)
        self.withdrawn: deque[tuple[int, float]] = deque(maxlen=BREATH_MEMORY)
        # the cycle (samples) last heard: of the last analysis whose rate a reading took and
        # was learnt from, or of a window whose humps' loudness alternated on its own evidence;
        # and the sample up to which it is carried on (a window on)
        self.cycle_heard, self.cycle_heard_until = 0.0, -1
        self.paired_loosely = False  # the last humps found were paired on a carried rhythm
        self._run_starts: deque[int] = deque([0], maxlen=RUN_MEMORY)  # runs of good signal
        self.last_lost = -1  # the last sample under a lost signal
        self.final_end = -1  # where the last of them had fallen by half
        # the recording's rate: the intervals between consecutive breaths counted for good
        # with no sample of lost signal between them, their number and their summed samples
        self.intervals, self.interval_samples = 0, 0
        self.first_breath = -1  # the first one's peak
        self.start_cut = 0  # 1: the stream's start cut a cycle before the first breath (counted)
        self.pending: list[tuple[int, float, int]] = []  # later breaths (peak, prom, end)
        self.last_breath_end = -1  # where the last breath heard had fallen by half
        self.breathing_now = False  # a breath was under way at the newest sample analysed
        self.rising_peak = -1  # that breath's highest sample so far
        self.strong_breath = -1  # end of the last breath >= RESUME_FRACTION of the typical one
        self.strong_now = False  # one is under way now (only such a breath ends a pause alarm)
        checks = max(1, round(config.analyse_every_s * self.rate_hz / CHECK_EVERY))
        self._every = checks * CHECK_EVERY  # samples between analyses: a whole number of checks
        self._analysed_at = -(stagger % checks) * CHECK_EVERY  # the next analysis: every later
        self.alarms = BreathAlarms(config, band, grid)
        self.reading = Respiration("assessing", None, 0.0, 0, 0.0, 0, None, band.name)
        self.own_state = "assessing"  # this band's state at the last analysis
        self.readings_due = 0  # analyses since the caller last took the reading
        self.good_samples = 0  # samples not under a lost signal, since the start
        # for the summary: analyses whose window held min_window_s, those with a rate, confidences
        self.assessed = {"analyses": 0, "ok": 0, "confidence_sum": 0.0}

    def _alpha(self, seconds: float) -> float:
        return 1.0 - math.exp(-1.0 / (seconds * self.rate_hz))

    @property
    def samples(self) -> int:
        return int(self.istate[k.S_COUNT])

    def push(self, features: np.ndarray, real_frames: int, lost: bool) -> list[Transition]:
        """A window's new frames ``(n_bands, n)``, the first ``real_frames`` of them audio,
        and whether a lost-signal condition held in it; the alarms' transitions."""
        samples, flags = self._samples(features, real_frames, lost)
        fallback = self.fallback
        if fallback is not None:  # it follows: the same samples, analysed with this band's
            other, other_flags = fallback._samples(features, real_frames, lost)
        n = samples.shape[1]
        transitions: list[Transition] = []
        start = 0
        while start < n:  # checks and analyses fall on the same samples in any chunking
            stop = min(n, start + CHECK_EVERY - self.samples % CHECK_EVERY)
            self._take(samples[:, start:stop], flags[start:stop])
            if fallback is not None:
                fallback._take(other[:, start:stop], other_flags[start:stop])
            start = stop
            if self.samples % CHECK_EVERY:
                continue
            if self.samples >= self._analysed_at + self._every or self._near_apnoea():
                transitions += self._analyse()
            transitions += self.alarms.check(self, bool(flags[stop - 1]))
        return transitions

    def _near_apnoea(self) -> bool:
        """A pause nears the apnoea time (then every check analyses the window)."""
        pause = self.samples - max(self.last_breath_end, 0)
        return self.alarms.armed(self) and pause >= self.alarms.apnoea_samples - self._every

    def _samples(
        self, features: np.ndarray, real_frames: int, lost: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """(G + 1, n) sub-band and body levels in dB per breath sample, and (n,) lost flags
        (the window's, or digital zeros in a sample): views of the tracker's buffers."""
        need = real_frames // self.stride
        if need > self._levels.shape[1]:
            self._levels = np.zeros((N_SUB_BANDS + 1, need))
            self._flags = np.zeros(need, np.uint8)
        n = k.levels(features, real_frames, self._breath, self._sub, self._body, self._scale,
                     self.spec.log_offset, self._floor_db, self.stride, lost, self._levels,
                     self._flags)  # fmt: skip
        return self._levels[:, :n], self._flags[:n]

    def _take(self, samples: np.ndarray, lost: np.ndarray) -> None:
        n_lost = int(np.count_nonzero(lost))
        self.good_samples += lost.shape[0] - n_lost
        if n_lost:
            self.last_lost = self.samples + int(np.flatnonzero(lost)[-1])
        k.activity(
            samples[:N_SUB_BANDS], samples[N_SUB_BANDS], lost, self.params, self.iparams,
            self.istate, self.fstate, self.means, self._across, self._raw, self._scratch,
            self.ring_a, self.ring_lost, self.ring_tilt,
        )  # fmt: skip
        # the newest run's start, once per chunk (a run begun and ended inside one chunk, at
        # most CHECK_EVERY samples, is too short to judge and is not remembered)
        if self.istate[k.S_SEG_START] != self._run_starts[-1]:
            self._run_starts.append(int(self.istate[k.S_SEG_START]))

    def _run_start(self, sample: int) -> int:
        """Where the run of good signal that holds ``sample`` (stream) began, as far as the
        tracker remembers; ``sample`` itself where the run began before the starts it
        remembers (its levels are then judged as if they settled from there)."""
        return max((s for s in self._run_starts if s <= sample), default=sample)

    def contact(self) -> tuple[bool, float]:
        if not self.istate[k.S_BASE_SET]:
            return False, 0.0
        drop = float(self.fstate[k.F_BASE] - self.fstate[k.F_BODY])
        return drop < self.config.contact_drop_db, drop

    def _analyse(self, final: bool = False) -> list[Transition]:
        """The window's period, breaths and rate; the rate alerts' transitions. ``final``:
        the stream ended (a hump it cut is a breath)."""
        if self.fallback is not None:
            self.fallback._analyse(final)
        self._analysed_at = self.samples
        window = self._window(self.window)
        found = self._periodicity(window, self.band.search_bpm)
        period, confidence, cycle_s = found[:3]
        humps = self._breaths_of(window, found, False)
        look = period is None or confidence < self.config.min_confidence
        if (
            self.samples > self.window
            and self.ring_a.shape[0] > self.window
            and (look or cycle_s >= SLOW_LOOK_FRACTION * self.config.window_s)
        ):  # breathing too slow for the window to hold SLOW_CYCLES cycles: read over more
            slow = self._slow_window(humps[0].size)
            if slow is not None:
                window, found, humps = slow
        a, _, good, first = window
        period, confidence = found[:2]
        self.window_first = first
        if period is not None:
            self.period_s = found[2]
        peaks, proms, ends, self.period_s, paired_out = humps
        first_breath = self.first_breath
        if paired_out.size and self.final:  # the expirations an earlier window counted
            near = SAME_HUMP_FRACTION * self.period_s * self.rate_hz
            out = first + paired_out
            if peaks.size and not self.paired_loosely:  # and those before this window where
                # both phases were counted (on this window's own evidence only)
                back = self._both_phases_before(int(out[0]), first + int(peaks[0]), near)
                out = np.concatenate((np.asarray(back, np.int64), out))
            self._withdraw(out, first + peaks, near)
            if self.first_breath != first_breath and self.first_breath >= 0:
                # the start's cut cycle is judged again against the breath now first, where
                # the rings still hold the stream's start (else it stands as judged)
                rings = self._window(self.ring_a.shape[0])
                if rings[3] == 0:
                    self.start_cut = self._start_cut(rings[0], rings[2])
        confirmed = ends < a.shape[0] - 1  # fallen by half inside the window
        cut = final and peaks.size >= 2 and not confirmed[-1]
        if cut and peaks[-1] - peaks[-2] < CUT_GAP_FRACTION * self.period_s * self.rate_hz:
            # cut by the stream's end barely past the least gap from the breath before: that
            # breath's expiration, whose own peak the end hides (docs/respiration.md, step 4)
            peaks, proms, ends, confirmed = peaks[:-1], proms[:-1], ends[:-1], confirmed[:-1]
        judged = self.first_breath >= 0
        # a window that gives no rate (not periodic, or its breaths and period disagree) counts
        # for good only the breaths near its start, which later windows no longer see whole
        heard = first + peaks[confirmed]  # the breaths the reading reads too
        sure = confidence >= self.config.min_confidence and _agrees(
            heard, self.period_s * self.rate_hz
        )
        self._count(first + peaks, first + ends, proms, confirmed, final, sure, good,
                    paired_out.size > 0)  # fmt: skip
        if not judged and self.first_breath >= 0 and first == 0:
            self.start_cut = self._start_cut(a, good)
        self.breathing_now = bool(peaks.size and not confirmed[-1])
        self.rising_peak = first + int(peaks[-1]) if self.breathing_now else -1
        strong = proms >= RESUME_FRACTION * self.typical_db  # breaths that end an alarm
        if np.any(strong & confirmed):
            last = np.flatnonzero(strong & confirmed)[-1]
            self.strong_breath = max(self.strong_breath, first + int(ends[last]))
        self.strong_now = self.breathing_now and bool(strong[-1])
        learn = round(RECENT_BREATH_FRACTION * self.period_s * self.rate_hz)
        self.iparams[k.I_LEARN_UNTIL] = self.last_breath_end + learn
        own = self._reading(heard, good, confidence)
        # learn and arm only where the biased height over the whole window passes the bound too
        whole = confidence * max(0.0, 1.0 - self.period_s * self.rate_hz / max(1, a.shape[0]))
        if own.state == "ok" and whole >= self.config.min_confidence:
            self.typical_db = float(np.median(proms[confirmed]))
            self.assessable_at = self.samples
            cycle = self.period_s * self.rate_hz
            # half the cycle heard: carried on, not replaced; a pairing on the carried rhythm
            # does not carry it further
            if not self.paired_loosely and not self._carried(cycle):
                self.cycle_heard, self.cycle_heard_until = cycle, self.samples + self.window
        self.own_state = own.state
        self.reading = self._or_fallback(own)
        self.readings_due += 1
        if self.follows:  # a fallback band's tracker: its owner's alarms are the bed's
            return []
        # the rate alerts read the bed's reading; an apnoea's severity this band's own
        own_confidence = own.confidence if own.state == "ok" else None
        return self.alarms.rate(self.reading, own_confidence)

    def _window(self, size: int) -> Window:
        """The rings' newest ``size`` samples (fewer at the stream's start): activity, tilt,
        good (not under a lost signal), and the first one's stream sample."""
        first = max(0, self.samples - size)
        order = np.arange(first, self.samples) % self.ring_a.shape[0]
        return self.ring_a[order], self.ring_tilt[order], self.ring_lost[order] == 0, first

    def _periodicity(self, window: Window, search: tuple[float, float]) -> Periodicity:
        """A window's (period in s or None, its confidence, the cycle after the octave check or
        the last one where no period, the phases' cue (:func:`_cycle`), the autocorrelation)."""
        a, tilt, good, _ = window
        band, kept = self.band, list[np.ndarray]()
        period, confidence = _period(
            a, good, self.rate_hz, search, kept, band.short_lag_margin, band.fast_bpm
        )
        if period is None:
            return None, confidence, self.period_s, None, np.zeros(0)
        cycle_s, confidence, phases = _cycle(
            kept[0], tilt, good, self.rate_hz, search, period, confidence
        )
        return period, confidence, cycle_s, phases, kept[0]

    def _slow_window(self, humps: int) -> tuple[Window, Periodicity, Humps] | None:
        """The last ``slow_window_s`` (:meth:`_window`), its :meth:`_periodicity` and breaths,
        where it reads a cycle of ``window_s / SLOW_CYCLES`` or longer, its confidence is at
        least ``min_confidence``, at least two of its breaths fallen by half read that cycle (a
        faint stretch's rhythm has none) and ``window_s`` held ``humps`` humps, no more than
        two phases of each slow cycle and one more (faster breathing, which the slow window's
        smoothing blurs, has more); else None (docs/respiration.md, "Slow breathing")."""
        longer = self._window(self.ring_a.shape[0])
        found = self._periodicity(longer, (self.slow_bpm, self.band.search_bpm[1]))
        period, confidence, cycle_s = found[:3]
        if period is None or confidence < self.config.min_confidence:
            return None
        if cycle_s < self.config.window_s / SLOW_CYCLES:
            return None
        if humps > 2.0 * self.config.window_s / cycle_s + 1.0:
            return None
        delta_db = self.delta_db  # the window's own, should this one not be taken
        loosely = self.paired_loosely
        found_humps = self._breaths_of(longer, found, True)
        heard = found_humps[0][found_humps[2] < longer[0].shape[0] - 1]
        if heard.size >= 2 and _agrees(heard, found_humps[3] * self.rate_hz):
            return longer, found, found_humps
        self.delta_db, self.paired_loosely = delta_db, loosely
        return None

    def _breaths_of(self, window: Window, found: Periodicity, slow: bool) -> Humps:
        """:meth:`_humps` of a window (:meth:`_window`) for its :meth:`_periodicity`; ``slow``:
        the slow window, whose cycle is not halved again (its humps' phases are not paired)."""
        a, tilt, good, first = window
        period, confidence, cycle_s, phases, ac = found
        may_double = period is not None and not slow
        # humps alike in tilt may still be a cycle's two phases where they alternate in loudness
        # and the activity is at least as alike two periods on as one (docs/respiration.md)
        loud_phases = (
            period is not None and not slow and _alike_twice_on(ac, period * self.rate_hz, good)
        )
        periodic = period is not None and confidence >= WIDE_CONFIDENCE
        humps = self._humps(
            a, tilt, good, first, cycle_s, phases, may_double, periodic, loud_phases
        )
        # breaths too few for the window's breath sounds: fast breathing that pauses now and
        # then, whose pauses the period follows (docs/respiration.md)
        fast = self._fast_phases(a, tilt, good, first, humps[3]) if may_double else None
        return humps if fast is None else fast

    def _fast_phases(
        self, a: np.ndarray, tilt: np.ndarray, good: np.ndarray, first: int, cycle_s: float
    ) -> Humps | None:
        """Where the window's breath sounds come FAST_SOUNDS or more to each of its cycles
        (``cycle_s``: the period, doubled where :meth:`_humps` paired its humps): the humps at
        the band's fastest phase (half its fastest cycle), and where their tilt alternates as a
        cycle's two phases do, the inspirations among them, as :meth:`_humps` returns them, with
        the cycle they give (their mean interval: the rate's agreement with the period holds by
        construction here; the tilt and the count are the evidence); else None
        (docs/respiration.md, "Fast breathing with pauses")."""
        samples = 30.0 / self.band.search_bpm[1] * self.rate_hz
        peaks, proms, ends = self._humps_at(a, first, samples, round(MAX_BREATH_S * self.rate_hz))
        heard = float(np.count_nonzero(good))  # the samples the humps can lie in
        n = peaks.size
        if heard == 0.0 or n < MIN_PHASE_HUMPS or n * cycle_s * self.rate_hz < FAST_SOUNDS * heard:
            return None
        cue = _tilt_phases(tilt, good, peaks, samples)
        if cue is None:
            return None
        keep = _inspirations(peaks, cue, PAIRED_GAP * 2.0 * float(np.median(np.diff(peaks))))
        kept = peaks[keep]
        if kept.size < 2:
            return None
        interval_s = float(kept[-1] - kept[0]) / (kept.size - 1) / self.rate_hz
        return kept, proms[keep], ends[keep], interval_s, peaks[:0]

    def _humps_at(
        self, a: np.ndarray, first: int, samples: float, width: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The activity's humps (peaks, prominences, ends) for a period of ``samples``: smoothed
        over CYCLE_FRACTION of it, MIN_GAP_FRACTION of it apart, rising ``delta_db`` (set by
        :meth:`_humps` for the window) and at most ``width`` samples wide."""
        cycle = max(1, round(CYCLE_FRACTION * samples))
        gap = max(1, round(MIN_GAP_FRACTION * samples))
        n = k.humps(a, cycle, gap, self.delta_db, width, first == 0, True,
                    self._peaks, self._proms, self._ends)  # fmt: skip
        return self._peaks[:n].copy(), self._proms[:n].copy(), self._ends[:n].copy()

    def _humps(
        self,
        a: np.ndarray,
        tilt: np.ndarray,
        good: np.ndarray,
        first: int,
        period_s: float,
        phases: np.ndarray | None = None,
        may_double: bool = False,
        periodic: bool = False,
        loud_phases: bool = False,
    ) -> Humps:
        """Breaths (peaks, prominences, ends) for a period and the cycle they give: one hump per
        cycle, or the inspirations where the humps are a cycle's two phases (docs/respiration.md,
        "One breath per cycle"); and the humps paired out as the other phase by their loudness.
        ``may_double``: the period is this analysis' own, not yet doubled by :func:`_cycle`
        (not the slow window's; only then are humps nearer than PAIRED_GAP of a cycle judged
        at half the period, and the humps at half the period judged by loudness too, without
        ``loud_phases``: the period stays the cycle, and a hump with no breath kept within
        PAIRED_GAP of a cycle is kept, so no cycle is halved); ``periodic``: the window allows
        the slow breath's width; ``loud_phases``: humps a period apart may be told apart by
        loudness too, some of them out of turn (a transient sound on a phase)."""
        self.paired_loosely = False
        spread = k.spread(a, good, 0.05)
        self.delta_db = max(
            MIN_DELTA_DB, DELTA_OF_RANGE * spread, DELTA_OF_BREATHS * self.typical_db
        )
        longest = max(MAX_BREATH_S, BREATH_WIDTH_FRACTION * period_s) if periodic else MAX_BREATH_S
        width = round(longest * self.rate_hz)

        def found(samples: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return self._humps_at(a, first, samples, width)

        def phased(
            peaks: np.ndarray,
            samples: float,
            loudness: bool,
            tolerant: bool = False,
            carry: bool = False,
        ) -> tuple[np.ndarray, bool] | None:
            """The humps' smoothed tilt where it alternates between two levels, else (where
            ``loudness``) each hump's phase where their loudness does (+1 the louder, -1 the
            other; each run of good signal judged on its own, against its humps' trend, every
            judged hump turning, or where ``tolerant`` as many as :func:`_least_turns` allows,
            those out of turn mended, or every other hump louder on average by a margin
            :func:`_every_other_louder` takes), else None; and whether it was the loudness.
            ``carry``: the humps come once per period, and where the period is half the cycle
            heard within the last window (:meth:`_carried`), CARRIED_HUMPS humps are judged
            and the looser CARRIED_P taken (a rhythm heard carries on)."""
            carried = carry and self._carried(samples)
            if peaks.size < (CARRIED_HUMPS if carried else MIN_PHASE_HUMPS):
                return None
            by_tilt = _tilt_phases(tilt, good, peaks, samples)
            if by_tilt is not None:
                return by_tilt, False
            if not loudness:
                return None
            smooth = max(1, round(CYCLE_FRACTION * samples))
            cue = np.empty(peaks.size)
            k.smoothed_at(a, good, smooth, peaks, cue)
            phase = np.ones(peaks.size)  # a hump of a run too short to judge is a breath
            judged_any, loose = False, False
            settle = round(DETREND_S * self.rate_hz)
            for begin, end in _runs(good):  # each run of good signal on its own
                begun = begin if begin > 0 else self._run_start(first) - first
                start = max(begin + smooth, begun + settle)  # its levels settled
                judged = _loudness_against_trend(cue, peaks, start, end - smooth)
                n_judged = int(np.count_nonzero(judged))
                few = n_judged < MIN_PHASE_HUMPS  # judged only where a rhythm carries on
                if few and not (tolerant and carried and n_judged >= CARRIED_HUMPS):
                    continue
                least = _least_turns(n_judged) if tolerant else 1.0
                upper = None if few else _two_phases(cue[judged], least, MIN_LOUDNESS_DB)
                if upper is None and tolerant:  # every other hump louder: one fit, two bounds
                    louder = _every_other_louder(cue[judged], MIN_LOUDNESS_DB)
                    if louder is not None and not few and louder[1] <= ALTERNATION_P:
                        upper = louder[0]
                    elif louder is not None and carried and louder[1] <= CARRIED_P:
                        upper, loose = louder[0], True
                if upper is None and few:  # as too short to judge
                    continue
                if upper is None:  # a run long enough to judge whose loudness does not turn
                    return None
                if tolerant:
                    upper = _out_of_turn_mended(upper)
                inside = (peaks >= begin) & (peaks < end)
                phase[inside] = _phases_carried_on(judged[inside], upper)
                judged_any = True
            if not judged_any:
                return None
            if tolerant and not loose:  # alternating on its own evidence: carried on as heard
                self.cycle_heard, self.cycle_heard_until = 2.0 * samples, self.samples + self.window
            self.paired_loosely = loose
            return phase, True

        samples = period_s * self.rate_hz
        peaks, proms, ends = found(samples)
        none = peaks[:0]
        if peaks.size < 2:
            return peaks, proms, ends, period_s, none
        # where the octave check took the period as half the cycle (``phases``), the humps at
        # half of it are paired by phase below even if one per cycle passes the count check
        one_per_cycle = (peaks.size - 1) * samples <= (1.0 + AGREEMENT) * (peaks[-1] - peaks[0])
        if phases is None and one_per_cycle:
            judged = phased(peaks, samples, loud_phases, loud_phases, True) if may_double else None
            if judged is not None:  # a hump per period, two per cycle
                cue, by_loudness = judged
                keep = _inspirations(peaks, cue, PAIRED_GAP * 2.0 * samples)
                out = peaks[~keep] if by_loudness else none
                return peaks[keep], proms[keep], ends[keep], 2.0 * period_s, out
            if not may_double or np.min(np.diff(peaks)) >= PAIRED_GAP * samples:
                return peaks, proms, ends, period_s, none  # a hump per period
            # within the count check, but some humps nearer each other than a cycle allows:
            # where the humps at half the period alternate, the other phase shows through
        # more humps than cycles, or two too near (above): where they are the cycles' phases,
        # their inspirations
        h_peaks, h_proms, h_ends = found(samples / 2)
        by_loudness = False
        if phases is None:  # the tilt where it alternates, else (may_double) the loudness
            by_cue = phased(h_peaks, samples / 2, may_double)
            half_cue = None if by_cue is None else by_cue[0]
            by_loudness = by_cue is not None and by_cue[1]
        else:  # the octave check's cue: the tilt where it alternates, else the loudness
            half_cue = phases[h_peaks] if phases.size else h_proms
        if half_cue is None or h_peaks.size < 2:
            return peaks, proms, ends, period_s, none
        keep = _inspirations(h_peaks, half_cue, PAIRED_GAP * samples)
        out = h_peaks[~keep] if by_loudness else none
        return h_peaks[keep], h_proms[keep], h_ends[keep], period_s, out

    def _count(
        self,
        peaks: np.ndarray,
        ends: np.ndarray,
        proms: np.ndarray,
        confirmed: np.ndarray,
        final: bool,
        sure: bool,
        good: np.ndarray,
        by_loudness: bool = False,
    ) -> None:
        """Take this analysis' breaths (stream samples): those half a window back count for
        good (at the stream's end all do), the later ones are ``pending``. ``sure``: the window
        gives a rate; where it does not, only the breaths within UNSURE_HOLD analysis intervals
        of the window's start count for good: later windows see the rest (a breath that near a
        window's start is no hump there). ``good``: the window's samples not under a lost
        signal (an interval over lost signal may hold breaths unheard: no rate is read from
        it). ``by_loudness``: this window paired its humps by loudness (a breath withdrawn
        before counts again only where such a window keeps it)."""
        first = self.samples - good.shape[0]  # the window's first stream sample
        gap = MIN_GAP_FRACTION * self.period_s * self.rate_hz
        # as far back as in window_s whichever window this is (the slow window's breaths as
        # old are final; later windows of window_s see the newer ones)
        horizon = self.samples if final else self.samples - self.window // 2
        if not (sure or final):
            horizon = min(horizon, self.samples - self.window + UNSURE_HOLD * self._every)
        keep = confirmed | final
        pending = []
        for peak, end, prom in zip(peaks[keep].tolist(), ends[keep].tolist(),
                                   proms[keep].tolist(), strict=True):  # fmt: skip
            if self.final and peak - self.final[-1][0] < gap:
                continue
            if not by_loudness and any(abs(peak - out) <= near for out, near in self.withdrawn):
                continue  # withdrawn: a window that does not tell the phases apart keeps it
            if peak <= horizon:
                upto = self.good_samples - int(np.count_nonzero(good[peak - first + 1 :]))
                interval = 0
                if self.final and upto - self.final[-1][3] == peak - self.final[-1][0]:
                    interval = peak - self.final[-1][0]
                    self.intervals += 1
                    self.interval_samples += interval
                self.final.append((peak, prom, interval, upto))
                self.breaths += 1
                self.first_breath = peak if self.first_breath < 0 else self.first_breath
                self.final_end = max(self.final_end, end)
            else:
                pending.append((peak, prom, end))
        self.pending = pending
        # a breath heard stays heard (a later analysis with another period may not see it)
        ends_heard = [self.last_breath_end, self.final_end] + [end for _, _, end in pending]
        self.last_breath_end = max(ends_heard)

    def _start_cut(self, a: np.ndarray, good: np.ndarray) -> int:
        """1 where the stream started inside a breath sound a cycle before its first breath: the
        cycle the start cut, which a count of the recording's cycles holds (docs/respiration.md,
        step 4); ``a``: the activity from the stream's start."""
        heard = np.flatnonzero(good[: self.first_breath + 1])
        if heard.size == 0:
            return 0
        begin = int(heard[0])  # after the digital zeros a recorder may start with
        lead, cycle = self.first_breath - begin, self.period_s * self.rate_hz
        if not CUT_GAP_FRACTION * cycle <= lead <= START_CUT_MAX * cycle or heard.size <= lead:
            return 0  # too near, too far, or the signal lost between the start and the breath
        head = begin + max(1, round(START_HEAD_S * self.rate_hz))
        drop = float(a[begin:head].max() - a[begin : self.first_breath + 1].min())
        return int(drop >= self.delta_db)  # a sound at the start as loud as a breath must be

    @property
    def heard(self) -> int:
        return self.breaths + len(self.pending)

    @property
    def last_breath(self) -> int:
        if self.pending:
            return self.pending[-1][0]
        return self.final[-1][0] if self.final else -1

    def _carried(self, period: float) -> bool:
        """Whether a period (samples) is half (within CARRIED_PERIOD) the cycle heard within the
        last window (``cycle_heard``: a reading learnt from, or a window paired on its own
        evidence)."""
        return (
            self.samples <= self.cycle_heard_until
            and abs(2.0 * period / self.cycle_heard - 1.0) <= CARRIED_PERIOD
        )

    def _both_phases_before(self, out: int, kept: int, near: float) -> list[int]:
        """The breaths counted for good that continue a cycle's two phases back from a window
        that paired them (``out``: its first hump paired out, ``kept``: its first breath kept;
        stream samples): cycle by cycle (``period_s``) while a breath lies within ``near`` of
        the kept phase's place, the one nearest the other phase's place where one lies within
        ``near`` of it (a cycle counted once is passed over, that place kept from the last
        one heard); the walk stops where the kept phase is not heard."""
        cycle = self.period_s * self.rate_hz
        peaks = np.array([peak for peak, _, _, _ in self.final], np.int64)
        found: list[int] = []
        while True:
            from_out = np.abs(peaks - (out - cycle))
            from_kept = np.abs(peaks - (kept - cycle))
            if from_kept.min() > near:
                return found
            offset = out - kept
            kept = int(peaks[np.argmin(from_kept)])
            if from_out.min() > near:  # counted once here: on to the cycle before
                out = kept + offset
                continue
            out = int(peaks[np.argmin(from_out)])
            if out == kept:
                return found
            found.append(out)

    def _withdraw(self, paired_out: np.ndarray, kept: np.ndarray, near: float) -> None:
        """Withdraw the breaths counted for good that lie within ``near`` samples of a hump this
        window paired out by loudness as a cycle's other phase (``paired_out``, stream samples)
        and of no breath it kept (``kept``): an earlier window, before the phases' loudness
        could be judged, counted both (docs/respiration.md, "Phases alike in sound")."""
        for i in range(len(self.final) - 1, -1, -1):
            peak, _, interval, _ = self.final[i]
            if np.min(np.abs(paired_out - peak)) > near:
                continue
            if kept.size and np.min(np.abs(kept - peak)) <= near:
                continue
            if i + 1 < len(self.final):  # the next breath's interval now starts a breath earlier
                n_peak, n_prom, n_interval, n_good = self.final[i + 1]
                merged = n_interval + interval if interval and n_interval else 0
                self.intervals -= (interval > 0) + (n_interval > 0) - (merged > 0)
                self.interval_samples -= interval + n_interval - merged
                self.final[i + 1] = (n_peak, n_prom, merged, n_good)
            elif interval:
                self.intervals -= 1
                self.interval_samples -= interval
            del self.final[i]
            self.breaths -= 1
            self.withdrawn.append((peak, near))
            if peak == self.first_breath:
                self.first_breath = self.final[0][0] if self.final else -1

    def _reading(self, heard: np.ndarray, good: np.ndarray, confidence: float) -> Respiration:
        window_s = good.sum() / self.rate_hz
        rate = None
        if heard.size >= 2:
            rate = 60.0 * (heard.size - 1) * self.rate_hz / float(heard[-1] - heard[0])
        state, reason = "ok", ""
        if window_s < self.config.min_window_s:
            state, reason = "assessing", f"{window_s:.0f} s of good audio so far"
        elif good.mean() < 0.5:
            state, reason = "not_assessable", "signal lost over half the window"
        elif confidence < self.config.min_confidence:
            state, reason = "not_assessable", f"breathing not periodic ({confidence:.2f})"
        elif heard.size < self._breaths_needed():
            state, reason = "not_assessable", f"{heard.size} breaths in the window"
        elif not _agrees(heard, self.period_s * self.rate_hz):
            state = "not_assessable"
            reason = f"breaths ({rate:.0f}/min) and period ({60 / self.period_s:.0f}/min) disagree"
        state = self.alarms.state or state
        if window_s >= self.config.min_window_s:
            self.assessed["analyses"] += 1
            self.assessed["ok"] += state == "ok"
            self.assessed["confidence_sum"] += max(0.0, confidence)
        last = self.last_breath
        return Respiration(
            state=state,
            rate_bpm=rate if state == "ok" else None,
            confidence=max(0.0, confidence),
            breaths=int(heard.size),
            window_s=window_s,
            sample=self.grid.end_sample(max(0, self.samples - 1)),
            last_breath_sample=None if last < 0 else self.grid.start_sample(last),
            age_band=self.band.name,
            reason=reason,
        )

    def _breaths_needed(self) -> int:
        """``min_breaths``, or the cycles a full window holds where they are fewer (at least two:
        breathing too slow for ``min_breaths`` in a window has a rate; docs/respiration.md); in
        the slow window, whose breaths were found to read its cycle, one fewer (an end may cut
        one)."""
        span_s = max(self.config.window_s, (self.samples - self.window_first) / self.rate_hz)
        holds = math.floor(span_s / self.period_s)
        if span_s > self.config.window_s:  # the slow window
            holds -= 1
        return min(self.config.min_breaths, max(2, holds))

    def _or_fallback(self, own: Respiration) -> Respiration:
        """The bed's reading: ``own``, or the fallback band's where only that one has a rate."""
        fallback = self.fallback
        if fallback is None or own.state != "not_assessable" or fallback.reading.state != "ok":
            return own
        lo, hi = fallback.config.breath_band_hz
        return replace(fallback.reading, reason=f"the fallback band's rate ({lo:g}-{hi:g} Hz)")

    def finish(self) -> list[Transition]:
        transitions = self._analyse(final=True) if self.samples > 0 else []
        return transitions + self.alarms.finish(self.grid.end_sample(max(0, self.samples - 1)))

    def acknowledge(self, what: str) -> list[Transition]:
        return self.alarms.acknowledge(what)

    def summary(self, readings: Sequence[Respiration] = ()) -> dict[str, Any]:
        """A whole stream's breathing (``lungwatch detect --respiration``; its fields:
        docs/respiration.md, "What a bed reports"). ``readings``: every analysis'
        :attr:`reading`, in order, returned as ``series``."""
        found = self._band_summary()
        if not found["assessable"] and self.fallback is not None:
            other = self.fallback._band_summary()
            found = other if other["assessable"] else found
        return {
            **found,
            "age_band": self.band.name,
            "series": [
                {"t_s": round(r.sample / self.grid.sample_rate_hz, 2), **r.to_dict()}
                for r in readings
            ],
        }

    def _band_summary(self) -> dict[str, Any]:
        monitored_s = self.good_samples / self.rate_hz
        analyses = int(self.assessed["analyses"])
        share = self.assessed["ok"] / analyses if analyses else 0.0
        # the last window held the whole stream (so it held the most good audio of any)
        whole = self.window_first == 0
        last = whole and self.own_state == "ok"
        assessable = (share >= 0.5 or last) and monitored_s > 0
        breaths = self.breaths + self.start_cut
        rate = None
        if assessable and self.intervals:  # the live reading's 60 (n - 1) / span, over it all
            rate = round(60.0 * self.intervals * self.rate_hz / self.interval_samples, 2)
        elif assessable:  # no two breaths without lost signal between them: the count
            rate = round(60.0 * breaths / monitored_s, 2)
        return {
            "rate_bpm": rate,
            "breaths": breaths,
            "monitored_s": round(monitored_s, 2),
            "assessable": assessable,
            "assessed_share": round(share, 3),
            "confidence": round(self.assessed["confidence_sum"] / analyses, 3) if analyses else 0.0,
            "breath_band_hz": list(self.config.breath_band_hz),
        }


def _period(
    a: np.ndarray,
    good: np.ndarray,
    rate_hz: float,
    search_bpm: tuple[float, float],
    keep: list[np.ndarray] | None = None,
    short_lag_margin: float = 0.0,
    fast_bpm: float = 0.0,
) -> tuple[float | None, float]:
    """(period in s, the autocorrelation there) of the activity's good samples among the
    lags of ``search_bpm``; (None, 0) when no lag there peaks. The lag that peaks highest is
    the period, or the shortest peak whose unbiased height is within ``short_lag_margin`` of
    that one's (a multiple of the cycle can stand higher where cycles vary). A lag of a rate
    above ``fast_bpm`` (where set) is a peak only where it stands :data:`FAST_PROMINENCE` over
    its troughs (:func:`_prominence`)."""
    x = np.where(good, a - (a[good].mean() if good.any() else 0.0), 0.0)
    n = x.shape[0]
    energy = float(np.dot(x, x))
    lo = max(1, int(rate_hz * 60.0 / search_bpm[1]))
    hi = min(n // 2, math.ceil(rate_hz * 60.0 / search_bpm[0]))
    if energy <= 0.0 or hi <= lo + 1:
        return None, 0.0
    size = 1 << math.ceil(math.log2(2 * n))
    spectrum = np.fft.rfft(x, size)
    ac = np.fft.irfft(spectrum.real**2 + spectrum.imag**2, size)[: n // 2 + 2] / energy
    if keep is not None:  # the caller reads other lags too (_cycle)
        keep.append(ac)
    inner = ac[lo : hi + 1]
    peaks = np.flatnonzero((inner > ac[lo - 1 : hi]) & (inner >= ac[lo + 1 : hi + 2])) + lo
    if fast_bpm > 0.0:  # a lag of a rate above fast_bpm counts where it peaks sharply
        sharp = [p >= rate_hz * 60.0 / fast_bpm or _prominence(ac, p) >= FAST_PROMINENCE
                 for p in peaks.tolist()]  # fmt: skip
        peaks = peaks[np.asarray(sharp, dtype=bool)]
    if peaks.size == 0:
        return None, 0.0
    top = int(np.argmax(ac[peaks]))
    best = int(peaks[top])
    if short_lag_margin > 0.0:
        height = ac[peaks] * n / (n - peaks)
        best = int(peaks[np.flatnonzero(height >= height[top] - short_lag_margin)[0]])
    # the peak's lag to a fraction of a sample (a parabola through three)
    y0, y1, y2 = ac[best - 1], ac[best], ac[best + 1]
    curve = y0 - 2.0 * y1 + y2
    lag = best + (0.5 * (y0 - y2) / curve if curve < 0 else 0.0)
    # the lag is picked on the biased estimate, its height read unbiased (docs/respiration.md)
    return lag / rate_hz, min(1.0, float(ac[best]) * n / (n - best))


def _prominence(ac: np.ndarray, lag: int) -> float:
    """How far the autocorrelation at ``lag`` stands over the higher of its lowest points
    within half a lag on either side (a level that changes within the window lifts the short
    lags together; a cycle's peak stands between troughs)."""
    half = max(1, lag // 2)
    left = float(ac[max(1, lag - half) : lag + 1].min())
    right = float(ac[lag : lag + half + 1].min())
    return float(ac[lag]) - max(left, right)


def _loudness_against_trend(
    cue: np.ndarray, peaks: np.ndarray, start: int, stop: int
) -> np.ndarray:
    """Which humps (``peaks``, window samples) are judged: those from ``start`` to before
    ``stop``; their loudness (``cue``, in place) becomes its rise over the straight line through
    them in their order (a level that drifts does not alternate)."""
    judged = (peaks >= start) & (peaks < stop)
    inner = np.flatnonzero(judged)
    if inner.size >= 2:
        level = cue[inner]
        slope, offset = np.polyfit(inner.astype(np.float64), level, 1)
        cue[inner] = level - (offset + slope * inner)
    return judged


def _phases_carried_on(judged: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Each hump's phase in a run of good signal whose judged humps (``upper``: the louder)
    alternate: +1 the louder, -1 the other; the run's humps before and after the judged ones
    carry the alternation on, one hump at a time."""
    phase = np.ones(judged.size)
    inner = np.flatnonzero(judged)
    phase[inner] = np.where(upper, 1.0, -1.0)
    before = np.arange(inner[0])
    phase[before] = np.where((inner[0] - before) % 2, -1.0, 1.0) * phase[inner[0]]
    after = np.arange(inner[-1] + 1, judged.size)
    phase[after] = np.where((after - inner[-1]) % 2, -1.0, 1.0) * phase[inner[-1]]
    return phase


def _runs(good: np.ndarray) -> list[tuple[int, int]]:
    """The runs of good samples of a window: (first, past the last), in order."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], good.astype(np.int8), [0]))))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def _alike_twice_on(ac: np.ndarray, lag: float, good: np.ndarray) -> bool:
    """Whether the activity is at least as alike two periods (``lag``, samples) on as one, read
    unbiased from :func:`_period`'s autocorrelation over the window's ``good`` samples; False
    where two periods pass half the window or either height cannot be read."""
    if round(2.0 * lag) > good.shape[0] // 2:
        return False
    heights = _alike_at(ac, lag, good)
    return heights is not None and heights[1] >= heights[0]


def _alike_at(ac: np.ndarray, lag: float, good: np.ndarray) -> tuple[float, float] | None:
    """The autocorrelation (:func:`_period`'s, over the window's ``good`` samples) one period
    (``lag``, samples) and two periods on, each read unbiased: over the pairs of good samples
    that lag apart (where none is lost: ``n / (n - lag)``). None where either lag has fewer
    pairs than half the good samples (a few pairs read noise as alike)."""
    n_good = float(np.count_nonzero(good))
    heights = []
    for at in (round(lag), round(2.0 * lag)):
        pairs = float(np.count_nonzero(good[:-at] & good[at:])) if at else n_good
        if pairs == 0.0 or pairs < 0.5 * n_good:
            return None
        heights.append(float(ac[at]) * n_good / pairs)
    return heights[0], heights[1]


def _agrees(heard: np.ndarray, period: float) -> bool:
    """Whether breaths (``heard``, samples) give a rate within :data:`AGREEMENT` of a period's
    (in samples); fewer than two give none, and so agree."""
    if heard.size < 2:
        return True
    return abs((heard.size - 1) * period / float(heard[-1] - heard[0]) - 1.0) <= AGREEMENT


def _two_phases(cue: np.ndarray, least_turns: float, least_db: float) -> np.ndarray | None:
    """Which humps' ``cue`` values lie in the upper of two levels, where the levels stand
    PHASE_SEPARATION spreads and ``least_db`` apart and the humps, in time order, turn from one
    to the other at ``least_turns`` of them; else None."""
    upper = np.empty(cue.size, np.bool_)
    separation = k.two_levels(cue, upper)
    if not 0 < upper.sum() < cue.size:
        return None
    turns = float(np.mean(upper[1:] != upper[:-1]))
    apart = float(cue[upper].mean() - cue[~upper].mean())
    if separation < PHASE_SEPARATION or turns < least_turns or apart < least_db:
        return None
    return upper


@functools.lru_cache(maxsize=64)
def _alternation_along_a_line(n: int) -> tuple[np.ndarray, np.ndarray, float]:
    """For ``n`` humps in order: the projection that takes a straight line out, the
    alternation (-1, +1, ...) with its line taken out, and that one's squared length."""
    order = np.arange(n, dtype=np.float64)
    line = np.stack((np.ones(n), order), axis=1)
    off_line = np.eye(n) - line @ np.linalg.pinv(line)
    turns = off_line @ np.where(order % 2 == 1, 1.0, -1.0)
    return off_line, turns, float(turns @ turns)


def _every_other_louder(cue: np.ndarray, least_db: float) -> tuple[np.ndarray, float] | None:
    """Which humps are the louder phase where every other one (``cue``, in time order) is
    louder than the ones between: the humps' loudness fitted as a straight line (the trend
    :func:`_loudness_against_trend` takes out) plus an alternation whose two levels stand at
    least ``least_db`` apart; with the chance that loudness varying at random along a trend
    stands so far over the fit's residual spread (a two-sided t test of the alternation's
    coefficient, n - 3 degrees of freedom). None where fewer than 4 humps or levels nearer."""
    n = cue.size
    if n < 4:  # a line and an alternation leave no spread to judge them by
        return None
    off_line, turns, length = _alternation_along_a_line(n)
    rest = off_line @ cue
    beta = float(rest @ turns) / length  # the two levels: +beta and -beta about the line
    if 2.0 * abs(beta) < least_db:
        return None
    spread = max(0.0, float(rest @ rest) - beta * beta * length) / (n - 3)
    scale = math.sqrt(spread / length)
    chance = 2.0 * float(stdtr(n - 3, -abs(beta) / scale)) if scale > 0.0 else 0.0
    return (np.arange(n) % 2 == 1) == (beta > 0.0), chance


def _least_turns(n: int) -> float:
    """The share of ``n`` humps' turns that loudness varying at random reaches no more often
    than MIN_PHASE_HUMPS humps all turning (1 in 32 for 6)."""
    turns = n - 1
    if turns < 1:
        return 1.0
    bound = 0.5 ** (MIN_PHASE_HUMPS - 1)
    tail, least = 0.0, turns
    for t in range(turns, -1, -1):  # the chance of t or more turns, from the top
        tail += math.comb(turns, t) * 0.5**turns
        if tail > bound:
            break
        least = t
    return least / turns


def _out_of_turn_mended(upper: np.ndarray) -> np.ndarray:
    """A hump in the same level as both its neighbours is out of turn, and so is a first or last
    one in the level of the one beside it where that one turns: each takes the other level."""
    mended = upper.copy()
    if upper.size < 3:
        return mended
    for i in range(1, upper.size - 1):  # in order: a hump mended is the next one's neighbour
        if mended[i] == mended[i - 1] == upper[i + 1]:
            mended[i] = not mended[i]
    for end, near, next_ in ((0, 1, 2), (-1, -2, -3)):
        if upper[end] == upper[near] != upper[next_]:
            mended[end] = ~upper[end]
    return mended


def _tilt_phases(
    tilt: np.ndarray, good: np.ndarray, peaks: np.ndarray, samples: float
) -> np.ndarray | None:
    """The humps' (``peaks``) tilt, smoothed over CYCLE_FRACTION of a period of ``samples``,
    where it alternates between two levels as a cycle's phases do (:func:`_two_phases`:
    PHASE_TURNS, MIN_TILT_DB); else None."""
    cue = np.empty(peaks.size)
    k.smoothed_at(tilt, good, max(1, round(CYCLE_FRACTION * samples)), peaks, cue)
    return cue if _two_phases(cue, PHASE_TURNS, MIN_TILT_DB) is not None else None


def _inspirations(peaks: np.ndarray, cue: np.ndarray, apart: float) -> np.ndarray:
    """Which humps are breaths where each cycle is heard as two: those whose ``cue`` lies in
    the upper of two levels, and any other with no breath within ``apart`` samples."""
    upper = np.empty(cue.size, np.bool_)
    k.two_levels(cue, upper)
    keep = upper.copy()
    for i in np.flatnonzero(~upper):  # in time order: the lone ones kept count as breaths too
        kept = peaks[keep]
        if kept.size == 0 or np.min(np.abs(kept - peaks[i])) >= apart:
            keep[i] = True
    return keep


def _cycle(
    ac: np.ndarray,
    tilt: np.ndarray,
    good: np.ndarray,
    rate_hz: float,
    search_bpm: tuple[float, float],
    period: float,
    confidence: float,
) -> tuple[float, float, np.ndarray | None]:
    """The octave check: (cycle in s, its autocorrelation, the phases' cue where ``period`` was half
    a cycle, else None); ``ac``: :func:`_period`'s autocorrelation over the energy. The cue is the
    smoothed tilt where the phases alternate in it, empty where they alternate in loudness only."""
    n = tilt.shape[0]
    lag = period * rate_hz
    if 60.0 / (2.0 * period) >= search_bpm[0] / 2.0 and 2.0 * lag <= n / 2:
        lags = (round(lag), round(2.0 * lag))
        heights = _alike_at(ac, lag, good)
        if heights is None:  # too much lost signal to compare one and two periods on
            return period, confidence, None
        a1, a2 = heights
        if a2 < a1 - OCTAVE_MARGIN:  # clearly less alike two periods on: the cycle
            return period, confidence, None
        smooth = np.empty(n)
        width = max(1, round(CYCLE_FRACTION * lag))
        t1, t2, spread = k.tilt_lags(tilt, good, width, lags[0], lags[1], smooth)
        audible = bool(good.any()) and spread >= MIN_TILT_DB
        alternate = audible and t1 <= TILT_ALTERNATION and t2 - t1 >= -2.0 * TILT_ALTERNATION
        if alternate and a2 >= a1 - OCTAVE_MARGIN:
            return 2.0 * period, min(1.0, max(0.0, a2)), smooth
        if a2 >= a1 + OCTAVE_MARGIN:
            return 2.0 * period, min(1.0, max(0.0, a2)), np.zeros(0)
    return period, confidence, None
