"""Age bands: the respiratory rates that are normal for a bed's patient, and the apnoea time.

Defaults from the WHO's IMCI fast-breathing thresholds, NEWS2 (Royal College of Physicians, 2017),
the centile charts of Fleming et al. (Lancet 2011) and the AAP's pathological apnoea (Pediatrics
2003;111:914); the table and how each limit follows: docs/respiration.md, "Age bands"."""

from __future__ import annotations

from dataclasses import dataclass

from lungwatch.errors import ConfigError


@dataclass(frozen=True)
class AgeBand:
    name: str
    min_age_y: float  # the band holds ages in [min_age_y, max_age_y)
    max_age_y: float
    low_bpm: float  # a sustained rate below this: bradypnoea
    high_bpm: float  # a sustained rate above this: tachypnoea
    search_bpm: tuple[float, float]  # the rates the estimator looks for
    apnoea_s: float  # no breath this long: apnoea
    # the estimator takes the shortest period whose autocorrelation is this close to the best
    # one's (a child's cycle, not two of them: docs/respiration.md, "Children's fast cycles")
    short_lag_margin: float = 0.0
    # a rate above this is taken only where the autocorrelation peaks sharply at its period
    # (a fast breath's cycle, not the ripple of a loud stretch: docs/respiration.md, "Age bands")
    fast_bpm: float = 0.0

    @property
    def describe(self) -> str:
        return f"{self.name} (normal {self.low_bpm:g}-{self.high_bpm:g} breaths/min)"


CHILD_MARGIN = 0.15  # short_lag_margin in the bands under 12 years
AGE_BANDS: tuple[AgeBand, ...] = (
    AgeBand("infant-under-2m", 0.0, 2 / 12, 25.0, 59.0, (20.0, 100.0), 20.0, CHILD_MARGIN),
    AgeBand("infant-2-12m", 2 / 12, 1.0, 20.0, 49.0, (15.0, 95.0), 20.0, CHILD_MARGIN),
    AgeBand("child-1-5y", 1.0, 5.0, 15.0, 39.0, (10.0, 80.0), 20.0, CHILD_MARGIN),
    AgeBand("child-5-12y", 5.0, 12.0, 12.0, 30.0, (8.0, 60.0), 20.0, CHILD_MARGIN),
    AgeBand("adolescent-12-18y", 12.0, 18.0, 10.0, 25.0, (6.0, 50.0), 20.0),
    AgeBand("adult", 18.0, 200.0, 9.0, 24.0, (5.0, 70.0), 20.0, fast_bpm=45.0),
)
AGE_BAND_NAMES: tuple[str, ...] = tuple(b.name for b in AGE_BANDS)
DEFAULT_AGE_BAND = "adult"
_BY_NAME = {b.name: b for b in AGE_BANDS}


def age_band(name: str) -> AgeBand:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"age band {name!r} is not one of {', '.join(AGE_BAND_NAMES)}") from None


def band_for_age(age_years: float) -> AgeBand:
    if not age_years >= 0.0:
        raise ConfigError(f"age_years must be a number >= 0, got {age_years!r}")
    return next(b for b in AGE_BANDS if b.min_age_y <= age_years < b.max_age_y)


def age_from_sprsound_name(stem: str) -> float | None:
    """The age in years in a SPRSound file name (``<patient>_<age>_<sex>_...``), else None."""
    parts = stem.split("_")
    if len(parts) < 5:
        return None
    try:
        age = float(parts[1])
    except ValueError:
        return None
    return age if 0.0 <= age < 120.0 else None
