"""The one label table: vocabularies, the cross-dataset map and SNOMED codes."""

from __future__ import annotations

import pytest

from lungwatch.labels import (
    EVENT_LABELS,
    ICBHI_LABELS,
    RECORD_LABELS,
    icbhi_label,
    record_label_2_1,
    record_label_from_families,
    sound_class,
    to_binary,
    to_icbhi,
)


def test_event_classes_map_to_icbhi_by_family() -> None:
    assert [to_icbhi(name) for name in EVENT_LABELS] == [
        "normal",
        "wheeze",
        "wheeze",
        "wheeze",
        "crackle",
        "crackle",
        "both",
    ]
    assert {to_binary(name) for name in EVENT_LABELS[1:]} == {"Adventitious"}
    assert to_binary("Normal") == "Normal"


def test_snomed_codes_from_the_design() -> None:
    assert sound_class("Fine Crackle").snomed_ct == "48409008"
    assert sound_class("Coarse Crackle").snomed_ct == "48409008"
    assert sound_class("Wheeze").snomed_ct == "56018004"


@pytest.mark.parametrize(
    ("crackles", "wheezes", "label"),
    [
        (False, False, "normal"),
        (True, False, "crackle"),
        (False, True, "wheeze"),
        (True, True, "both"),
    ],
)
def test_icbhi_label(crackles: bool, wheezes: bool, label: str) -> None:
    assert icbhi_label(crackles, wheezes) == label
    assert label in ICBHI_LABELS


def test_record_labels() -> None:
    assert [record_label_2_1(r) for r in RECORD_LABELS] == [
        "Normal",
        "Adventitious",
        "Adventitious",
        "Adventitious",
        "Poor Quality",
    ]
    assert record_label_from_families(has_cas=True, has_das=True) == "CAS & DAS"
    assert record_label_from_families(has_cas=False, has_das=True) == "DAS"
    assert record_label_from_families(has_cas=True, has_das=False) == "CAS"
    assert record_label_from_families(has_cas=False, has_das=False) == "Normal"


def test_unknown_labels_name_the_choices() -> None:
    with pytest.raises(KeyError, match="known: Normal, Rhonchi"):
        sound_class("Squawk")
    with pytest.raises(KeyError, match="unknown record label"):
        record_label_2_1("CAS+DAS")
