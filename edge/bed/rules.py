"""The detector's rules as configuration, each checked as it is made; apart from
:mod:`edge.bed.detector` so that what only reads or writes rules does not load Numba's kernels."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import NonNegativeFloat, PositiveFloat

from lungwatch.config import Settings, Share, check
from lungwatch.events import PRIORITIES, Priority

DEFAULT_ON_THRESHOLD = 0.6
DEFAULT_OFF_THRESHOLD = 0.4
DEFAULT_MIN_EVENT_MS = 250.0
DEFAULT_MERGE_GAP_MS = 250.0
#: The settings a phase rule replaces: in phase mode an event spans its breath phase.
SPAN_SETTINGS = ("off_threshold", "min_event_ms", "merge_gap_ms")


@dataclass(frozen=True)
class ClassThreshold:
    """One class's rule, overriding the detector's settings (None: the detector's)."""

    type: str
    on_threshold: float
    off_threshold: float | None = None
    min_event_ms: float | None = None
    merge_gap_ms: float | None = None

    def __post_init__(self) -> None:
        check_thresholds(self.on_threshold, self.off_threshold)
        for key in ("min_event_ms", "merge_gap_ms"):
            value = getattr(self, key)
            check(value is None or value >= 0.0, key, value, "a number >= 0")


@dataclass(frozen=True)
class ClassRule:
    on_threshold: float
    off_threshold: float
    min_event_ms: float
    merge_gap_ms: float


@dataclass(frozen=True)
class PhaseRule(Settings):
    """Phase mode of :class:`FrameDetector`: events are breath phases with an adventitious
    sound, each class on its phase, its own hysteresis (``frame_classes``) or its own
    change-point boxes (``box_classes``); docs/runtime.md, "Detector settings"."""

    on_threshold: float
    off_threshold: float
    min_phase_ms: NonNegativeFloat = 240.0
    output: str = "Breath"  # the model output that marks breath phases
    lead_ms: NonNegativeFloat = 0.0  # an event's start is reported this much before its phase's
    # for sounds annotated as their own span, shorter than the phase
    frame_classes: tuple[str, ...] = ()
    box_classes: tuple[str, ...] = ()
    box_filter_ms: PositiveFloat = 960.0
    box_merge: Share = 0.5

    def __post_init__(self) -> None:
        check_thresholds(self.on_threshold, self.off_threshold)
        both = sorted(set(self.frame_classes) & set(self.box_classes))
        check(not both, "box_classes", both, "classes not also in frame_classes")


@dataclass(frozen=True)
class TypePriority:
    type: str
    priority: Priority

    def __post_init__(self) -> None:
        check(self.priority in PRIORITIES, "priority", self.priority, f"one of {PRIORITIES}")


def check_thresholds(on: float | None, off: float | None, prefix: str = "") -> None:
    """``0 < off <= on < 1`` for the values given (None: not set)."""
    if on is not None:
        check(0.0 < on < 1.0, prefix + "on_threshold", on, "in (0, 1)")
    if off is not None:
        top = 1.0 if on is None else on
        check(0.0 < off <= top, prefix + "off_threshold", off, f"in (0, on_threshold={top}]")


def check_priorities(rules: tuple[TypePriority, ...], latching: tuple[str, ...]) -> None:
    types = [rule.type for rule in rules]
    dupes = sorted({t for t in types if types.count(t) > 1})
    check(not dupes, "priorities", dupes, "a list naming each type once")
    bad = [p for p in latching if p not in PRIORITIES]
    check(not bad, "latching", latching, f"a list of {PRIORITIES}")
