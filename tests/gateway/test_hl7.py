"""PCD-01 messages (gateway.hl7): each validates against HL7 v2.6's ORU_R01 with hl7apy
(strict) and carries the codes, units, reference range and times of what it reports."""

from __future__ import annotations

import datetime as dt

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from gateway.hl7 import (
    Bed,
    Hl7Error,
    Sender,
    control_id_of,
    finding_message,
    hl7_time,
    parse_ack,
    rate_message,
)

BED = Bed("edge-1", "bed-2", location="ICU^1^3^HOSP", patient_id="12345^^^HOSP^MR")
SENDER = Sender(facility="WARD-1", receiving_application="HIS", receiving_facility="HOSP")
NOW = dt.datetime(2026, 11, 27, 3, 15, tzinfo=dt.timezone.utc)
READING = {"schema_version": 1, "site": "ward-1", "device_id": "edge-1", "stream_id": "bed-2",
           "snomed_ct": "86290005", "state": "ok", "rate_bpm": 18.44, "confidence": 0.62,
           "breaths": 9, "window_s": 30.0, "age_band": "adult", "reason": "",
           "utc": "2026-11-25T21:52:18.040Z", "low_bpm": 9.0, "high_bpm": 24.0}  # fmt: skip


def strict(text: str):  # type: ignore[no-untyped-def]
    msg = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
    assert msg.validate()
    return msg


def obx_fields(text: str) -> list[list[str]]:
    return [seg.split("|") for seg in text.split("\r") if seg.startswith("OBX|")]


def test_a_rate_is_an_mdc_respiratory_rate_with_its_age_bands_range() -> None:
    text = rate_message(READING, BED, SENDER, "C0FFEE0000000000AB12", NOW)
    msg = strict(text)
    assert msg.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert msg.msh.msh_12.to_er7() == "2.6"
    assert control_id_of(text) == "C0FFEE0000000000AB12"
    assert msg.msh.msh_7.to_er7() == "20261127031500.000+0000"
    [obx] = obx_fields(text)
    assert obx[2:8] == ["NM", "151562^MDC_RESP_RATE^MDC", "", "18.4",
                        "264928^MDC_DIM_RESP_PER_MIN^MDC", "9-24"]  # fmt: skip
    assert obx[14] == "20261125215218.040+0000"
    assert obx[18] == "edge-1.bed-2^LUNGWATCH"
    assert "PV1||I|ICU^1^3^HOSP" in text.split("\r")
    assert "PID|||12345^^^HOSP^MR||^^^^^^U" in text.split("\r")


def test_a_readings_finding_rates_follow_its_rate_in_percent_where_the_bed_has_them() -> None:
    text = rate_message({**READING, "wheeze_rate_pct": 12.34, "crackle_rate_pct": None}, BED,
                        SENDER, "X5", NOW)  # fmt: skip
    strict(text)
    rate, wheeze = obx_fields(text)
    assert rate[1:4] == ["1", "NM", "151562^MDC_RESP_RATE^MDC"]
    assert wheeze[1:7] == ["2", "NM", "LW-WHEEZE-RATE^wheeze rate^99LW", "", "12.3",
                           "%^percent^UCUM"]  # fmt: skip
    assert wheeze[11] == "R"
    both = rate_message({**READING, "wheeze_rate_pct": 0.0, "crackle_rate_pct": 4.0}, BED,
                        SENDER, "X6", NOW)  # fmt: skip
    assert [f[3].split("^")[0] for f in obx_fields(both)] == [
        "151562", "LW-WHEEZE-RATE", "LW-CRACKLE-RATE"]  # fmt: skip


def test_a_reading_without_a_rate_says_its_state_and_reason() -> None:
    text = rate_message({**READING, "state": "not_assessable", "rate_bpm": None,
                         "reason": "breathing not periodic"}, Bed("edge-1", "bed-2"), SENDER,
                        "X1", NOW)  # fmt: skip
    strict(text)
    [obx] = obx_fields(text)
    assert obx[2] == "CWE"
    assert obx[5] == "not_assessable^breathing not periodic^99LW"
    assert not any(seg.startswith("PV1") for seg in text.split("\r"))  # no location known
    assert "PID|||edge-1.bed-2^^^LUNGWATCH^ANON||^^^^^^U" in text.split("\r")


def test_a_finding_carries_its_snomed_code_present_then_final() -> None:
    event = {"type": "Wheeze", "kind": "physiological", "snomed_ct": "56018004",
             "state": "onset", "start_utc": "2026-11-27T03:10:00.000Z"}  # fmt: skip
    onset = finding_message(event, BED, SENDER, "F1", NOW)
    strict(onset)
    [obx] = obx_fields(onset)
    assert (obx[3], obx[5], obx[11]) == ("56018004^Wheeze^SCT", "52101004^Present^SCT", "P")
    ended = finding_message({**event, "state": "ended", "end_utc": "2026-11-27T03:10:04.5Z"},
                            BED, SENDER, "F2", NOW)  # fmt: skip
    strict(ended)
    assert obx_fields(ended)[0][11] == "F"
    obr = next(seg.split("|") for seg in ended.split("\r") if seg.startswith("OBR"))
    assert (obr[7], obr[8]) == ("20261127031000.000+0000", "20261127031004.500+0000")
    rhonchi = finding_message({**event, "type": "Rhonchi", "snomed_ct": None}, BED, SENDER,
                              "F3", NOW)  # fmt: skip
    assert obx_fields(rhonchi)[0][3] == "Rhonchi^Rhonchi^99LW"
    technical = {"type": "poor_signal", "kind": "technical", "state": "onset",
                 "start_utc": "2026-11-27T03:10:00Z"}  # fmt: skip
    poor = finding_message(technical, BED, SENDER, "F4", NOW)
    strict(poor)
    assert obx_fields(poor)[0][3:6] == ["signal-quality^Signal quality^99LW", "",
                                        "poor_signal^poor_signal^99LW"]  # fmt: skip


def test_free_text_cannot_break_the_message_and_a_bad_time_is_refused() -> None:
    text = rate_message({**READING, "state": "not_assessable", "rate_bpm": None,
                         "reason": "a|b^c~d\\e&f\rMSH|forged"}, BED, SENDER, "X2", NOW)  # fmt: skip
    strict(text)
    assert len(text.split("\r")) == 5  # MSH PID PV1 OBR OBX: no forged segment
    framed = rate_message({**READING, "state": "not_assessable", "rate_bpm": None,
                           "reason": "x\x0by\x1cz\x00"}, BED, SENDER, "X4", NOW)  # fmt: skip
    assert not {"\x0b", "\x1c", "\x00"} & set(framed)  # MLLP's frame bytes never in a field
    with pytest.raises(Hl7Error, match="not an ISO 8601 time"):
        rate_message({**READING, "utc": "yesterday"}, BED, SENDER, "X3", NOW)
    assert hl7_time("2026-11-27T03:10:00+01:00") == "20261127021000.000+0000"


def test_an_acknowledgement_is_read_and_anything_else_refused() -> None:
    ack = parse_ack("MSH|^~\\&|HIS||||20261127||ACK^R01^ACK|A1|P|2.6\rMSA|AE|X1|no bed")
    assert (ack.code, ack.control_id, ack.text, ack.accepted) == ("AE", "X1", "no bed", False)
    assert parse_ack("MSH|^~\\&|HIS||||20261127||ACK|A1|P|2.6\rMSA|AA|X1").accepted
    with pytest.raises(Hl7Error, match="not an HL7 acknowledgement"):
        parse_ack("hello")


def test_a_long_stream_id_is_delivered_and_what_hl7_cannot_carry_is_refused_as_hl7() -> None:
    """A configured 24-character stream id goes out whole (the library's 20-character limit
    is a component's, not the field's); a time out of HL7's range or a lone surrogate in a
    text is an Hl7Error (the caller sets that one message aside), never another exception."""
    bed = Bed("edge-1", "cardiology-bed-14-stetho")
    text = rate_message({**READING, "stream_id": bed.stream_id}, bed, SENDER, "X6", NOW)
    strict(text)
    assert obx_fields(text)[0][18] == "edge-1.cardiology-bed-14-stetho^LUNGWATCH"
    assert "PID|||edge-1.cardiology-bed-14-stetho^^^LUNGWATCH^ANON||^^^^^^U" in text.split("\r")
    for utc in ("0001-01-01T00:00:00+01:00", "1066-10-14T09:00:00Z"):
        with pytest.raises(Hl7Error, match="a time HL7 cannot carry"):
            rate_message({**READING, "utc": utc}, BED, SENDER, "X7", NOW)
    with pytest.raises(Hl7Error, match="not UTF-8"):
        rate_message({**READING, "state": "not_assessable", "rate_bpm": None,
                      "reason": "lost \ud800 here"}, BED, SENDER, "X8", NOW)  # fmt: skip
    long_ward = Bed("edge-1", "bed-2", location="cardiothoracic-intensive-care^1^3^HOSP")
    with pytest.raises(Hl7Error, match="max length"):  # a component the library bounds
        rate_message(READING, long_ward, SENDER, "X9", NOW)
