"""The pause alarms of :class:`edge.bed.breathing_alarms.BreathAlarms` on a tracker's state
set by hand (the protocol it reads, ``edge.bed.breathing_state.TrackerView``): what a later
analysis may revise about breaths already heard."""

from __future__ import annotations

from dataclasses import dataclass

from edge.bed.agebands import age_band
from edge.bed.breathing_alarms import BreathAlarms
from edge.bed.breathing_state import RespirationConfig
from edge.bed.detector import Transition
from tests.edge.test_breathing import GRID

RATE_HZ = GRID.sample_rate_hz / GRID.frame_samples  # breath samples per second


def at(seconds: float) -> int:
    return round(seconds * RATE_HZ)


@dataclass
class Tracker:
    """A tracker's state as BreathAlarms reads it: a bed that breathed until ``last_breath_end``
    and was assessable then, heard with contact."""

    samples: int = 0
    assessable_at: int = at(58.0)
    last_breath_end: int = at(59.0)
    last_lost: int = -1
    breathing_now: bool = False
    rising_peak: int = -1
    strong_now: bool = False
    strong_breath: int = at(59.0)
    heard: int = 20
    last_breath: int = at(58.5)

    def contact(self) -> tuple[bool, float]:
        return True, 0.0


def follow(alarms: BreathAlarms, tracker: Tracker, until_s: float, then: dict[float, dict]) -> list:
    """Checks every 0.48 s (as the tracker's) up to ``until_s``; ``then``: at a time, what the
    tracker's state becomes (a later analysis' finding). The apnoea transitions, with their time."""
    found: list[tuple[float, Transition]] = []
    changes = sorted(then.items())
    t = 60.0
    while t <= until_s:
        while changes and changes[0][0] <= t:
            for name, value in changes.pop(0)[1].items():
                setattr(tracker, name, value)
        tracker.samples = at(t)
        found += [(t, x) for x in alarms.check(tracker, False) if x.type == "apnoea"]  # type: ignore[arg-type]
        t = round(t + 0.48, 2)
    return found


def test_a_weak_breath_found_before_the_alarm_began_does_not_end_and_raise_it_again() -> None:
    """The apnoea is raised 20 s after the breath that ended at 59 s; an analysis a moment later
    finds a faint breath that ended at 60 s (under the strength that ends an apnoea). The
    pause is still a pause: one apnoea, not one ended and another raised a second later."""
    alarms = BreathAlarms(RespirationConfig(), age_band("child-1-5y"), GRID)
    tracker = Tracker()
    found = follow(alarms, tracker, 90.0, {79.6: {"last_breath_end": at(60.0)}})
    onsets = [t for t, x in found if x.state == "onset"]
    assert len(onsets) == 1, found
    assert 79.0 <= onsets[0] <= 79.5
    assert not [t for t, x in found if x.state == "ended" or x.latched], found


def test_a_weak_breath_heard_during_the_alarm_still_ends_it() -> None:
    """A faint breath that ends after the alarm began is breathing heard again: the alarm
    ends (latched until acknowledged), as before."""
    alarms = BreathAlarms(RespirationConfig(), age_band("child-1-5y"), GRID)
    tracker = Tracker()
    found = follow(alarms, tracker, 90.0, {84.0: {"last_breath_end": at(83.5)}})
    onsets = [t for t, x in found if x.state == "onset"]
    assert len(onsets) == 1, found
    assert [t for t, x in found if x.latched][:1] == [84.0], found
