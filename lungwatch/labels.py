"""The one label table: model classes, data-set vocabularies, SNOMED CT codes.

Every place that names a respiratory sound class imports it from here: the SPRSound and
ICBHI loaders' vocabularies, the model's class lists (saved in checkpoints and manifests),
the cross-dataset mapping and the event types the device publishes.

Cross-dataset mapping (documented in ``docs/labels.md``): continuous adventitious sounds
(SPRSound Wheeze, Rhonchi, Stridor) map to ICBHI ``wheeze``; discontinuous ones (Fine and
Coarse Crackle) to ``crackle``; ``Wheeze+Crackle`` to ``both``; Normal to ``normal``.

SNOMED CT codes are given only where checked (crackles 48409008, wheezing 56018004, stridor
70407001); the others are None until verified against a SNOMED CT release, and the device
then publishes the event type alone.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SoundClass:
    """One respiratory sound class and how each vocabulary names it."""

    name: str  # SPRSound event vocabulary (the model's fine-grained classes)
    family: str  # "normal", "CAS" (continuous) or "DAS" (discontinuous) or "CAS & DAS"
    icbhi: str  # ICBHI 2017 cycle label it maps to
    snomed_ct: str | None  # SNOMED CT concept id of the finding, where one exists
    snomed_term: str | None


SOUND_CLASSES: tuple[SoundClass, ...] = (
    SoundClass("Normal", "normal", "normal", None, None),
    SoundClass("Rhonchi", "CAS", "wheeze", None, None),
    SoundClass("Wheeze", "CAS", "wheeze", "56018004", "Wheezing"),
    SoundClass("Stridor", "CAS", "wheeze", "70407001", "Stridor"),
    SoundClass("Coarse Crackle", "DAS", "crackle", "48409008", "Respiratory crackles"),
    SoundClass("Fine Crackle", "DAS", "crackle", "48409008", "Respiratory crackles"),
    SoundClass("Wheeze+Crackle", "CAS & DAS", "both", None, None),
)

#: SPRSound Task 1-2 classes, in this order in every 7-class model.
EVENT_LABELS: tuple[str, ...] = tuple(c.name for c in SOUND_CLASSES)
#: SPRSound Task 1-1.
BINARY_LABELS: tuple[str, ...] = ("Normal", "Adventitious")
#: SPRSound record labels (Task 2-2 order); Task 2-1 merges the three adventitious ones.
RECORD_LABELS: tuple[str, ...] = ("Normal", "CAS", "DAS", "CAS & DAS", "Poor Quality")
RECORD_LABELS_2_1: tuple[str, ...] = ("Normal", "Adventitious", "Poor Quality")
#: ICBHI 2017 4-class cycle labels.
ICBHI_LABELS: tuple[str, ...] = ("normal", "crackle", "wheeze", "both")

NORMAL = "Normal"
POOR_QUALITY = "Poor Quality"
#: The event types the frame-level detector raises, in its output order (SPRSound's
#: Wheeze+Crackle is raised as a Wheeze and a Fine Crackle over the same span).
DETECTED_CLASSES: tuple[str, ...] = (
    "Fine Crackle",
    "Coarse Crackle",
    "Wheeze",
    "Rhonchi",
    "Stridor",
)

#: The families a finding episode is of (``edge.bed.findings``): continuous (wheezes,
#: rhonchi, stridor) and discontinuous (crackles) adventitious sounds.
FINDING_FAMILIES: tuple[str, ...] = ("CAS", "DAS")
#: The class whose SNOMED CT concept names each family's finding (wheezing, crackles).
FINDING_CLASS: dict[str, str] = {"CAS": "Wheeze", "DAS": "Fine Crackle"}
#: A finding's rate: the share of breathing time with the family's sound (unit %, UCUM
#: ``%``). No SNOMED CT or MDC term is known for it: a local code, named here once.
FINDING_RATE_CODE = {"CAS": "LW-WHEEZE-RATE", "DAS": "LW-CRACKLE-RATE"}
FINDING_RATE_TEXT = {"CAS": "wheeze rate", "DAS": "crackle rate"}

_BY_NAME = {c.name: c for c in SOUND_CLASSES}


def sound_class(name: str) -> SoundClass:
    """The class called ``name`` in the SPRSound vocabulary; KeyError names the choices."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown sound class {name!r}; known: {', '.join(EVENT_LABELS)}") from None


def family_snomed_ct(family: str) -> str | None:
    """SNOMED CT concept of a finding family (wheezing for CAS, crackles for DAS)."""
    return sound_class(FINDING_CLASS[family]).snomed_ct


def display_name(event_type: str) -> str:
    """What a clinician reads for an event type: a finding family's SNOMED CT term
    (``CAS`` -> Wheezing), else the type itself."""
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
    """ICBHI 4-class label from a cycle's two flags."""
    return ICBHI_LABELS[int(crackles) + 2 * int(wheezes)]


def record_label_2_1(record_label: str) -> str:
    """Task 2-1 label of a Task 2-2 record label."""
    if record_label not in RECORD_LABELS:
        raise KeyError(f"unknown record label {record_label!r}; known: {', '.join(RECORD_LABELS)}")
    return record_label if record_label in (NORMAL, POOR_QUALITY) else "Adventitious"


def record_label_from_families(has_cas: bool, has_das: bool) -> str:
    """Task 2-2 label of a (good-quality) record from the families found in it."""
    return ("Normal", "DAS", "CAS", "CAS & DAS")[int(has_das) + 2 * int(has_cas)]
