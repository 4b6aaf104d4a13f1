"""The one label table: model classes, data-set vocabularies, SNOMED CT codes. Every fact about
a sound class is a field of its row in :data:`SOUND_CLASSES` (about a finding family, of
:data:`FAMILY`): a new class is one new row (docs/labels.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class SoundClass:
    name: str  # SPRSound event vocabulary (the model's fine-grained classes)
    family: str  # "normal", "CAS" (continuous) or "DAS" (discontinuous) or "CAS & DAS"
    icbhi: str  # ICBHI 2017 cycle label it maps to
    snomed_ct: str | None = None  # SNOMED CT concept id of the finding (gateway coding)
    snomed_term: str | None = None
    output: int | None = None  # its place among the detector's outputs; None: not detected
    priority: Literal["high", "medium", "low"] | None = None  # its events' default alarm priority
    held: bool = False  # its events wait for recurrence in a finding episode (edge.bed.findings)
    card: str | None = None  # a bed card's state for it (wardview.beds)
    scored_as: str | None = None  # its class in the 4-class scoring view (default: its name)
    parts: tuple[str, ...] = ()  # a composite's detected classes (raised as these)
    colour: str | None = None  # its line on the ward page's live strip

    @property
    def families(self) -> tuple[str, ...]:
        """Its finding families: ``()`` for Normal, ``("CAS", "DAS")`` for Wheeze+Crackle."""
        return () if self.family == "normal" else tuple(self.family.split(" & "))

    @property
    def raised_as(self) -> tuple[str, ...]:
        """The detected classes it is raised (and scored) as."""
        return self.parts or ((self.name,) if self.output is not None else ())


@dataclass(frozen=True)
class Family:
    name: str
    finding_class: str  # the class whose SNOMED CT concept names its finding
    text: str  # its alarm condition as a ward reads it
    card: str  # a bed card's state for it
    rate_code: str  # its finding rate (share of breathing time with its sound, unit %,
    rate_text: str  # UCUM %): no SNOMED CT or MDC term is known, a local code


SOUND_CLASSES: tuple[SoundClass, ...] = (
    SoundClass("Normal", "normal", "normal"),
    SoundClass("Rhonchi", "CAS", "wheeze", None, None, 3, "low", True, "rhonchi",
               colour="#00796b"),
    SoundClass("Wheeze", "CAS", "wheeze", "56018004", "Wheezing", 2, "medium", True, "wheezes",
               colour="#1565c0"),
    SoundClass("Stridor", "CAS", "wheeze", "70407001", "Stridor", 4, "high", False, "stridor",
               colour="#6a1b9a"),
    SoundClass("Coarse Crackle", "DAS", "crackle", "48409008", "Respiratory crackles", 1, "low",
               True, "crackles", "Crackle", colour="#bf360c"),
    SoundClass("Fine Crackle", "DAS", "crackle", "48409008", "Respiratory crackles", 0, "low",
               True, "crackles", "Crackle", colour="#e65100"),
    SoundClass("Wheeze+Crackle", "CAS & DAS", "both", priority="medium", card="wheezes",
               parts=("Wheeze", "Fine Crackle"), colour="#ad1457"),
)  # fmt: skip
FAMILY: dict[str, Family] = {f.name: f for f in (
    Family("CAS", "Wheeze", "wheezes (CAS)", "wheezes", "LW-WHEEZE-RATE", "wheeze rate"),
    Family("DAS", "Fine Crackle", "crackles (DAS)", "crackles", "LW-CRACKLE-RATE", "crackle rate"),
)}  # fmt: skip
_BY_NAME = {c.name: c for c in SOUND_CLASSES}

#: SPRSound Task 1-2 classes, in this order in every 7-class model.
EVENT_LABELS: tuple[str, ...] = tuple(c.name for c in SOUND_CLASSES)
BINARY_LABELS: tuple[str, ...] = ("Normal", "Adventitious")  #: SPRSound Task 1-1.
#: SPRSound record labels (Task 2-2 order); Task 2-1 merges the three adventitious ones.
RECORD_LABELS: tuple[str, ...] = ("Normal", "CAS", "DAS", "CAS & DAS", "Poor Quality")
RECORD_LABELS_2_1: tuple[str, ...] = ("Normal", "Adventitious", "Poor Quality")
ICBHI_LABELS: tuple[str, ...] = ("normal", "crackle", "wheeze", "both")  #: ICBHI 2017 cycle labels

NORMAL = "Normal"
POOR_QUALITY = "Poor Quality"
#: The event types the frame-level detector raises, in its output order (SPRSound's
#: Wheeze+Crackle is raised as a Wheeze and a Fine Crackle over the same span).
DETECTED_CLASSES: tuple[str, ...] = tuple(
    c.name for c in sorted(SOUND_CLASSES, key=lambda c: c.output or 0) if c.output is not None
)

#: The families a finding episode is of (``edge.bed.findings``).
FINDING_FAMILIES: tuple[str, ...] = tuple(FAMILY)
#: Each family's detected classes, in output order (CAS: Wheeze, Rhonchi, Stridor).
FAMILY_CLASSES: dict[str, tuple[str, ...]] = {
    f: tuple(n for n in DETECTED_CLASSES if _BY_NAME[n].family == f) for f in FINDING_FAMILIES
}
#: Each family's classes whose events wait for recurrence (Stridor never does).
HELD_FAMILIES: dict[str, tuple[str, ...]] = {
    f: tuple(n for n in classes if _BY_NAME[n].held) for f, classes in FAMILY_CLASSES.items()
}
#: The class whose SNOMED CT concept names each family's finding (wheezing, crackles).
FINDING_CLASS: dict[str, str] = {f.name: f.finding_class for f in FAMILY.values()}


def sound_class(name: str) -> SoundClass:
    """The class called ``name`` in the SPRSound vocabulary; KeyError names the choices."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown sound class {name!r}; known: {', '.join(EVENT_LABELS)}") from None


def family_of(event_type: str) -> str | None:
    """Family of a class or finding type (a composite's first: Wheeze+Crackle -> CAS), else None."""
    if event_type in FAMILY:
        return event_type
    found = _BY_NAME.get(event_type)
    return found.families[0] if found is not None and found.families else None


def family_snomed_ct(family: str) -> str | None:
    """SNOMED CT concept of a finding family (wheezing for CAS, crackles for DAS)."""
    return sound_class(FINDING_CLASS[family]).snomed_ct


def display_name(event_type: str) -> str:
    """A finding family's SNOMED CT term (``CAS`` -> Wheezing), else the type itself."""
    if event_type in FINDING_CLASS:
        return str(sound_class(FINDING_CLASS[event_type]).snomed_term or event_type)
    return event_type


def to_binary(event_label: str) -> str:
    """Task 1-1 label of a Task 1-2 label."""
    return NORMAL if sound_class(event_label).family == "normal" else "Adventitious"


def to_icbhi(event_label: str) -> str:
    """ICBHI cycle label of a SPRSound event label."""
    return sound_class(event_label).icbhi


def icbhi_label(crackles: bool, wheezes: bool) -> str:
    return ICBHI_LABELS[int(crackles) + 2 * int(wheezes)]


def record_label_2_1(record_label: str) -> str:
    """Task 2-1 label of a Task 2-2 record label."""
    if record_label not in RECORD_LABELS:
        raise KeyError(f"unknown record label {record_label!r}; known: {', '.join(RECORD_LABELS)}")
    return record_label if record_label in (NORMAL, POOR_QUALITY) else "Adventitious"


def record_label_from_families(has_cas: bool, has_das: bool) -> str:
    """Task 2-2 label of a (good-quality) record from the families found in it."""
    return ("Normal", "DAS", "CAS", "CAS & DAS")[int(has_das) + 2 * int(has_cas)]
