"""The alarms of a bed's breathing: apnoea or lost breath signal, and rates out of range.

:class:`BreathAlarms` belongs to a :class:`edge.bed.breathing.BreathTracker`, which calls ``check``
after every piece of audio and ``rate`` after every analysis; the rules: docs/respiration.md,
"Apnoea or lost signal" and "Age bands". Times are samples of the bed's timeline."""

from __future__ import annotations

from edge.bed.agebands import AgeBand
from edge.bed.breathing_state import Respiration, RespirationConfig, TrackerView
from edge.bed.detector import EventTracker, FrameGrid, Lifecycle, Transition
from lungwatch.events import DEFAULT_PRIORITIES

APNOEA = "apnoea"
TACHYPNOEA = "tachypnoea"
BRADYPNOEA = "bradypnoea"
BREATH_SIGNAL_LOST = "breath_signal_lost"
RATE_ALERT_GAP_S = 10.0  # a rate alert survives this long without an assessable rate
ARM_HOLD_S = 30.0  # a pause is judged if the rate was assessable this recently before it


def _priority(type_: str) -> str:
    return DEFAULT_PRIORITIES.get(type_, "low")


class BreathAlarms:
    def __init__(self, config: RespirationConfig, band: AgeBand, grid: FrameGrid) -> None:
        self.config, self.band, self.grid = config, band, grid
        rate_hz = grid.sample_rate_hz / grid.frame_samples
        self.apnoea_s = config.apnoea_s if config.apnoea_s is not None else band.apnoea_s
        self.apnoea_samples = round(self.apnoea_s * rate_hz)
        self._arm_hold = round(ARM_HOLD_S * rate_hz)
        self.physiological = Lifecycle("physiological", _priority, ("high",))
        self.technical = Lifecycle("technical", _priority, ("high",))
        self._open: tuple[str, str] | None = None  # (type, key) of the open pause alarm
        self._unheard = -1  # the last check without contact or with a lost signal
        self._open_from = -1  # the sample the open alarm was raised at
        lasting = round(config.rate_alert_s * grid.sample_rate_hz)  # samples: the tracker's unit
        gap = round(RATE_ALERT_GAP_S * grid.sample_rate_hz)
        self._rate_trackers = {
            name: EventTracker(name, self.physiological, lasting, gap)
            for name in (TACHYPNOEA, BRADYPNOEA)
        }
        self._rate_end = 0  # end of the span the rate alerts last judged
        self.confidence = 0.0  # the last assessed rate's confidence (an apnoea's)

    @property
    def state(self) -> str | None:
        if self._open is None:
            return None
        return APNOEA if self._open[0] == APNOEA else "signal_lost"

    def armed(self, tracker: TrackerView) -> bool:
        """Whether pauses are judged (a pause in breath sounds too faint to count says nothing)."""
        ok_at = tracker.assessable_at
        return (
            tracker.heard >= self.config.arm_breaths
            and tracker.last_breath_end >= 0
            and ok_at >= 0
            and tracker.last_breath_end - ok_at <= self._arm_hold
        )

    def check(self, tracker: TrackerView, lost_now: bool) -> list[Transition]:
        """The pause since the last breath, judged at the tracker's newest sample."""
        if not self.armed(tracker):
            return []
        now, last_end = tracker.samples, tracker.last_breath_end
        contact, drop = tracker.contact()
        if not contact or lost_now:
            self._unheard = now
        # a pause is apnoea only for the time the stethoscope heard the patient: it starts
        # again when a lost signal or the contact returns
        heard_since = max(last_end, tracker.last_lost + 1, self._unheard)
        if self._open is not None:  # only a breath of a typical breath's strength ends it
            again = tracker.strong_now or tracker.strong_breath > self._open_from
        else:
            again = tracker.breathing_now or now - last_end < self.apnoea_samples
        if again:
            if self._open is not None:  # breathing again: the alarm ends at the breath's peak
                breath = tracker.rising_peak if tracker.breathing_now else tracker.last_breath
                self._close(self.grid.start_sample(max(breath, 0)))
            return self._take()
        if contact and not lost_now:
            # the signal has just come back, or a breath was heard since the alarm began; not a
            # breath a later analysis found before the alarm began (the pause began later than
            # thought and is still a pause: the alarm goes on rather than ending and coming again)
            revised = self._open is not None and self._open[0] == APNOEA and \
                heard_since == last_end <= self._open_from  # fmt: skip
            if now - heard_since < self.apnoea_samples and not revised:
                self._close(self.grid.end_sample(now - 1))
                return self._take()
            wanted = APNOEA
        else:
            wanted = BREATH_SIGNAL_LOST
        pause_s = (now - last_end) / (self.grid.sample_rate_hz / self.grid.frame_samples)
        end = self.grid.end_sample(now - 1)
        # the pause began with the last breath's fall (an apnoea: or when the signal came back)
        start = self.grid.start_sample(heard_since if wanted == APNOEA else last_end)
        if self._open is not None and self._open[0] != wanted:
            self._close(end)
            start = end  # the pause goes on as the other alarm
        if self._open is None:
            reason = self._reason(wanted, pause_s, drop, lost_now, contact)
            life = self.physiological if wanted == APNOEA else self.technical
            severity = self.confidence if wanted == APNOEA else 1.0
            key = life.onset(wanted, min(start, end), end, severity, reason)
            self._open = (wanted, key)
            self._open_from = now
        else:
            life = self.physiological if self._open[0] == APNOEA else self.technical
            life.extend(self._open[1], end, 0.0)
        return self._take()

    def _reason(
        self, wanted: str, pause_s: float, drop: float, lost_now: bool, contact: bool
    ) -> str:
        head = f"no breath for {pause_s:.0f} s"
        if wanted == APNOEA:
            return f"{head}; body sounds {drop:+.0f} dB from their level while breathing"
        if lost_now:
            return f"{head}; the signal is lost (see the bed's technical events)"
        if not contact and drop > 0:
            return f"{head}; body sounds {drop:.0f} dB under their level while breathing"
        return f"{head}; contact with the body unknown"

    def _close(self, at_sample: int) -> None:
        """End the open pause alarm at ``at_sample`` (an apnoea not acknowledged latches)."""
        if self._open is not None:
            kind, key = self._open
            life = self.physiological if kind == APNOEA else self.technical
            life.close(key, at_sample)
            self._open = None

    def rate(self, reading: Respiration, own_confidence: float | None) -> list[Transition]:
        """A new reading: the rate alerts step over the span since the last one. ``own_confidence``:
        the breath band's own (None: it gave no rate), a later apnoea's severity."""
        start, end = self._rate_end, reading.sample
        if end <= start:
            return []
        self._rate_end = end
        rate = reading.rate_bpm
        if own_confidence is not None:
            self.confidence = own_confidence
        for name, tracker in self._rate_trackers.items():
            out_of_range = rate is not None and (
                rate > self.band.high_bpm if name == TACHYPNOEA else rate < self.band.low_bpm
            )
            reason = "" if rate is None else f"{rate:.0f} breaths/min ({self.band.describe})"
            tracker.step(start, end, out_of_range, reading.confidence, reason)
        return self._take()

    def acknowledge(self, what: str) -> list[Transition]:
        self.physiological.acknowledge(what)
        self.technical.acknowledge(what)
        return self._take()

    def finish(self, at_sample: int) -> list[Transition]:
        """The stream ended at ``at_sample``: every alarm ends (latched ones too)."""
        self._close(at_sample)
        for tracker in self._rate_trackers.values():
            tracker.stop()
        self.physiological.release_latched()
        self.technical.release_latched()
        return self._take()

    @property
    def active_keys(self) -> tuple[str, ...]:
        return (*self.physiological.active_keys, *self.technical.active_keys)

    def _take(self) -> list[Transition]:
        return self.physiological.take() + self.technical.take()
