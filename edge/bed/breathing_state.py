"""What a bed's breathing tracker and its alarms share: the ``respiration`` config section, the
reading an analysis gives, and what the alarms read of the tracker (:class:`TrackerView`). The
rules: docs/respiration.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Protocol

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt

from edge.bed.agebands import DEFAULT_AGE_BAND, age_band
from lungwatch.config import Settings, check
from lungwatch.events import RESPIRATION_STATES

STATES = RESPIRATION_STATES  # the respiration topic's states


@dataclass(frozen=True)
class RespirationConfig(Settings):
    enabled: bool = True
    age_band: str = DEFAULT_AGE_BAND  # a stream's own age_band / age_years wins
    window_s: Annotated[float, Field(ge=5.0)] = 30.0  # the stretch a rate is computed over
    # breathing slower than SLOW_CYCLES cycles in window_s is read over this longer stretch
    # (no longer than window_s: off)
    slow_window_s: float = 60.0
    analyse_every_s: float = 5.0  # a new rate (and reading) this often
    min_window_s: float = 10.0  # "assessing" until the window holds this much good audio
    min_confidence: Annotated[float, Field(ge=0, lt=1)] = 0.3  # below it the rate is not assessable
    min_breaths: Annotated[int, Field(ge=2)] = 3  # breaths a rate needs (fewer in slow breathing)
    apnoea_s: Annotated[float, Field(ge=5.0)] | None = None  # None: the age band's (20 s)
    arm_breaths: PositiveInt = 4  # apnoea is judged once this many breaths were heard
    contact_drop_db: PositiveFloat = 20.0  # the body band this far under its breathing level: lost
    rate_alert_s: NonNegativeFloat = 60.0  # a rate out of range this long: tachypnoea / bradypnoea
    breath_band_hz: tuple[float, float] = (150.0, 1000.0)
    body_band_hz: tuple[float, float] = (50.0, 150.0)
    # a second breath band, tracked beside the first: its rate is the bed's where the first
    # band's is not assessable (None: off); pauses and apnoea stay the first band's
    fallback_band_hz: tuple[float, float] | None = (80.0, 800.0)

    def __post_init__(self) -> None:
        age_band(self.age_band)  # a ConfigError naming the choices
        every = self.analyse_every_s
        check(0.0 < every <= self.window_s, "analyse_every_s", every, "in (0, window_s]")
        check(0 < self.min_window_s <= self.window_s, "min_window_s", self.min_window_s,
              "in (0, window_s]")  # fmt: skip
        check(5.0 <= self.slow_window_s <= 600.0, "slow_window_s", self.slow_window_s,
              "in [5, 600] (no longer than window_s: off)")  # fmt: skip
        bands = {"breath_band_hz": self.breath_band_hz, "body_band_hz": self.body_band_hz}
        if self.fallback_band_hz is not None:
            bands["fallback_band_hz"] = self.fallback_band_hz
        for key, value in bands.items():
            pair = isinstance(value, tuple | list) and len(value) == 2
            numbers = pair and all(isinstance(v, int | float) for v in value)
            check(numbers and 0 <= value[0] < value[1], key, value,
                  "[low, high] with 0 <= low < high")  # fmt: skip


@dataclass(frozen=True)
class Respiration:
    """A bed's breathing at the end of its last analysed window."""

    state: str  # one of STATES
    rate_bpm: float | None  # breaths per minute (None unless state is "ok")
    confidence: float  # periodicity of the breath activity over the window, 0..1
    breaths: int  # breaths heard in the window
    window_s: float  # seconds of audio the window held
    sample: int  # the window's end on the bed's timeline
    last_breath_sample: int | None  # the last breath's peak, if any was heard
    age_band: str
    reason: str = ""  # what kept the rate from being assessed

    def to_dict(self) -> dict[str, object]:
        rate = None if self.rate_bpm is None else round(self.rate_bpm, 1)
        return {
            "state": self.state,
            "rate_bpm": rate,
            "confidence": round(self.confidence, 3),
            "breaths": self.breaths,
            "window_s": round(self.window_s, 2),
            "age_band": self.age_band,
            "reason": self.reason,
        }


class TrackerView(Protocol):
    """What :class:`edge.bed.breathing_alarms.BreathAlarms` reads of its tracker (breath
    samples of the bed's timeline; -1 where nothing happened yet)."""

    assessable_at: int  # the last analysis that gave a rate
    last_breath_end: int  # where the last breath heard had fallen by half
    last_lost: int  # the last sample under a lost signal
    breathing_now: bool  # a breath is under way at the newest sample analysed
    rising_peak: int  # that breath's highest sample so far
    strong_now: bool  # ... and it is at least a share of the typical breath
    strong_breath: int  # the end of the last such breath

    @property
    def samples(self) -> int:
        """Breath samples taken so far (the next one's index on the output-frame grid)."""
        ...

    @property
    def heard(self) -> int:
        """Breaths heard so far."""
        ...

    @property
    def last_breath(self) -> int:
        """The last breath's peak."""
        ...

    def contact(self) -> tuple[bool, float]:
        """(whether the stethoscope hears the body as while breathing, the body band's drop under
        that level in dB; 0 before any breath taught it)."""
        ...
