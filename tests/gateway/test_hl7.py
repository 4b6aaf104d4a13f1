"""PCD-01 and PCD-04 messages (gateway.hl7) as an IHE PCD integration team checks them: each
is read by python-hl7 and checked field by field against the rules of
tests/gateway/conformance.py (profile, character set, equipment, containment, result status,
range flags, facets); a PCD-01 also validates against HL7 v2.6's ORU_R01 with hl7apy (strict),
a second, independent library."""

from __future__ import annotations

import datetime as dt

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from gateway.hl7 import (
    AlertReport,
    Bed,
    Hl7Error,
    Sender,
    alert_message,
    control_id_of,
    finding_message,
    hl7_time,
    parse_ack,
    rate_message,
)
from tests.gateway.conformance import field, parsed, problems

BED = Bed("edge-1", "bed-2", location="ICU^1^3^HOSP", patient_id="12345^^^HOSP^MR",
          equipment="0012A3FFFE4567AB", site="ward-1")  # fmt: skip
SENDER = Sender(facility="WARD-1", receiving_application="HIS", receiving_facility="HOSP",
                equipment="00163EFFFE000001")  # fmt: skip
NOW = dt.datetime(2026, 11, 27, 3, 15, tzinfo=dt.timezone.utc)
READING = {"schema_version": 1, "site": "ward-1", "device_id": "edge-1", "stream_id": "bed-2",
           "snomed_ct": "86290005", "state": "ok", "rate_bpm": 18.44, "confidence": 0.62,
           "breaths": 9, "window_s": 30.0, "age_band": "adult", "reason": "",
           "utc": "2026-11-25T21:52:18.040Z", "low_bpm": 9.0, "high_bpm": 24.0}  # fmt: skip
EQUIPMENT = "edge-1.bed-2^LUNGWATCH^0012A3FFFE4567AB^EUI-64"


def strict(text: str):  # type: ignore[no-untyped-def]
    """The message as hl7apy reads it, validated strictly against ORU_R01 (PCD-01 only:
    hl7apy has no ORU_R40)."""
    msg = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
    assert msg.validate()
    return msg


def obx_fields(text: str) -> list[list[str]]:
    return [seg.split("|") for seg in text.split("\r") if seg.startswith("OBX|")]


def metrics(text: str) -> list[list[str]]:
    """The OBX rows after the MDS, VMD and CHAN rows."""
    return obx_fields(text)[3:]


def test_a_rate_is_an_mdc_respiratory_rate_under_its_device_with_profile_and_equipment() -> None:
    text = rate_message(READING, BED, SENDER, "C0FFEE0000000000AB12", NOW)
    msg = parsed(text)
    strict(text)
    assert field(msg, "MSH", 9) == "ORU^R01^ORU_R01"
    assert field(msg, "MSH", 21) == "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO"
    assert field(msg, "MSH", 3) == "LUNGWATCH^00163EFFFE000001^EUI-64"
    assert field(msg, "MSH", 18) == "UNICODE UTF-8"
    assert control_id_of(text) == "C0FFEE0000000000AB12"
    assert field(msg, "MSH", 7) == "20261127031500.000+0000"
    assert text.endswith("\r")
    mds, vmd, chan, rate = obx_fields(text)
    assert [mds[3].split("^")[1], vmd[3].split("^")[1], chan[3].split("^")[1]] == [
        "MDC_DEV_METER_PHYSIO_MULTI_PARAM_MDS", "MDC_DEV_ANALY_RESP_RATE_VMD",
        "MDC_DEV_ANALY_RESP_RATE_CHAN"]  # fmt: skip
    assert (mds[4], vmd[4], chan[4], mds[11], mds[18]) == (
        "1.0.0.0", "1.1.0.0", "1.1.1.0", "X", EQUIPMENT)  # fmt: skip
    assert rate[2:9] == ["NM", "151562^MDC_RESP_RATE^MDC", "1.1.1.1", "18.4",
                         "264928^MDC_DIM_RESP_PER_MIN^MDC", "9-24", "N"]  # fmt: skip
    assert (rate[11], rate[14], rate[17], rate[18]) == (
        "R", "20261125215218.040+0000", "AMEAS^auto-measurement^MDC", EQUIPMENT)  # fmt: skip
    assert "PV1||I|ICU^1^3^HOSP" in text.split("\r")
    assert "PID|||12345^^^HOSP^MR||^^^^^^U" in text.split("\r")


def test_a_rate_outside_its_range_is_flagged_high_or_low_and_the_checks_can_fail() -> None:
    fast = rate_message({**READING, "rate_bpm": 31.0}, BED, SENDER, "H1", NOW)
    slow = rate_message({**READING, "rate_bpm": 6.04}, BED, SENDER, "L1", NOW)
    assert (metrics(fast)[0][8], metrics(slow)[0][8]) == ("H", "L")
    parsed(fast), parsed(slow)
    # the rules catch what they are about: a flag, a trailing CR, a status, the profile
    assert problems(fast.replace("|H|", "||")), "an unflagged high rate passed"
    assert problems(fast[:-1]), "a message without its last CR passed"
    assert problems(fast.replace("|R|||2026", "|F|||2026")), "OBX-11 F passed"
    assert problems(fast.replace("IHE_PCD_001", "IHE_PCD_002")), "a wrong profile passed"


def test_a_readings_finding_rates_follow_its_rate_in_percent_where_the_bed_has_them() -> None:
    text = rate_message({**READING, "wheeze_rate_pct": 12.34, "crackle_rate_pct": None}, BED,
                        SENDER, "X5", NOW)  # fmt: skip
    parsed(text)
    strict(text)
    rate, wheeze = metrics(text)
    assert rate[3] == "151562^MDC_RESP_RATE^MDC"
    assert wheeze[2:7] == ["NM", "LW-WHEEZE-RATE^wheeze rate^99LW", "1.1.1.2", "12.3",
                           "%^percent^UCUM"]  # fmt: skip
    assert wheeze[11] == "R"
    both = rate_message({**READING, "wheeze_rate_pct": 0.0, "crackle_rate_pct": 4.0}, BED,
                        SENDER, "X6", NOW)  # fmt: skip
    assert [f[3].split("^")[0] for f in metrics(both)] == [
        "151562", "LW-WHEEZE-RATE", "LW-CRACKLE-RATE"]  # fmt: skip


def test_a_reading_without_a_rate_says_its_state_and_reason() -> None:
    bare = Bed("edge-1", "bed-2")
    text = rate_message({**READING, "state": "not_assessable", "rate_bpm": None,
                         "reason": "breathing not periodic"}, bare, SENDER, "X1", NOW)  # fmt: skip
    parsed(text, equipment=False)
    assert problems(text), "a device without its EUI-64 passed the equipment rule"
    [obx] = metrics(text)
    assert obx[2] == "CWE"
    assert obx[5] == "not_assessable^breathing not periodic^99LW"
    assert obx_fields(text)[0][18] == "edge-1.bed-2^LUNGWATCH"  # no EUI-64 known yet
    assert not any(seg.startswith("PV1") for seg in text.split("\r"))  # no location known
    assert "PID|||edge-1.bed-2^^^LUNGWATCH^ANON||^^^^^^U" in text.split("\r")


def test_a_finding_is_present_from_its_start_to_its_end_and_always_unverified() -> None:
    event = {"type": "Wheeze", "kind": "finding", "snomed_ct": "56018004",
             "state": "onset", "start_utc": "2026-11-27T03:10:00.000Z"}  # fmt: skip
    onset = finding_message(event, BED, SENDER, "F1", NOW)
    parsed(onset)
    strict(onset)
    [obx] = metrics(onset)
    assert (obx[3], obx[5], obx[11]) == ("56018004^Wheeze^SCT", "52101004^Present^SCT", "R")
    ended = finding_message({**event, "state": "ended", "end_utc": "2026-11-27T03:10:04.5Z"},
                            BED, SENDER, "F2", NOW)  # fmt: skip
    parsed(ended)
    assert metrics(ended)[0][11] == "R"  # device data: never a verified final result
    obr = next(seg.split("|") for seg in ended.split("\r") if seg.startswith("OBR"))
    assert (obr[7], obr[8]) == ("20261127031000.000+0000", "20261127031004.500+0000")
    rhonchi = finding_message({**event, "type": "Rhonchi", "snomed_ct": None}, BED, SENDER,
                              "F3", NOW)  # fmt: skip
    assert metrics(rhonchi)[0][3] == "Rhonchi^Rhonchi^99LW"
    technical = {"type": "poor_signal", "kind": "technical", "state": "onset",
                 "start_utc": "2026-11-27T03:10:00Z"}  # fmt: skip
    poor = finding_message(technical, BED, SENDER, "F4", NOW)
    parsed(poor)
    assert metrics(poor)[0][3:6] == ["signal-quality^Signal quality^99LW", "1.1.1.1",
                                     "poor_signal^poor_signal^99LW"]  # fmt: skip


def report(**changes: object) -> AlertReport:
    fields = dict(alert_id="4F2A0C11D3E5B6A7", condition="tachypnoea", text="breathing fast",
                  kind="physiological", priority="medium", phase="start", alarm_state="active",
                  acknowledged_by=None, first_onset_utc="2026-11-27T03:10:00Z",
                  utc="2026-11-27T03:10:01Z", source=(31.2, 9.0, 24.0))  # fmt: skip
    fields.update(changes)
    return AlertReport(**fields)  # type: ignore[arg-type]


def test_an_alert_is_an_oru_r40_with_its_five_facets_and_its_source() -> None:
    text = alert_message(report(), BED, SENDER, "A1", NOW)
    msg = parsed(text)
    assert field(msg, "MSH", 9) == "ORU^R40^ORU_R40"
    assert field(msg, "MSH", 21) == "IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.4.1^ISO"
    assert field(msg, "OBR", 3) == "4F2A0C11D3E5B6A7^LUNGWATCH^00163EFFFE000001^EUI-64"
    assert field(msg, "OBR", 4) == "196616^MDC_EVT_ALARM^MDC"
    event, source, phase, state, inactivation = obx_fields(text)
    assert (event[3], event[4], event[8]) == ("196648^MDC_EVT_HI^MDC", "1.1.1.1.1", "H~PM~SP")
    assert event[5].startswith("271823003^")  # tachypnoea, SNOMED CT
    assert source[2:9] == ["NM", "151562^MDC_RESP_RATE^MDC", "1.1.1.1.2", "31.2",
                           "264928^MDC_DIM_RESP_PER_MIN^MDC", "9-24", "H"]  # fmt: skip
    assert (phase[5], state[5], inactivation[5]) == ("start", "active", "enabled")
    assert {row[11] for row in obx_fields(text)} == {"R"}
    slow = alert_message(report(condition="bradypnoea", text="breathing slow",
                                source=(5.0, 9.0, 24.0)), BED, SENDER, "A2", NOW)  # fmt: skip
    assert obx_fields(parsed(slow) and slow)[0][8] == "L~PM~SP"
    apnoea = alert_message(report(condition="apnoea", text="apnoea", priority="high",
                                  source=None), BED, SENDER, "A3", NOW)  # fmt: skip
    parsed(apnoea)
    first, second = obx_fields(apnoea)[:2]
    assert (first[3], first[8]) == ("199680^MDC_EVT_APNEA^MDC", "PH~SP")
    assert second[3:6] == ["68480^MDC_ATTR_ALERT_SOURCE^MDC", "1.1.1.1.2",
                           "69723^MDC_DEV_ANALY_RESP_RATE_CHAN^MDC"]  # fmt: skip
    crackles = alert_message(report(condition="DAS", text="crackles (DAS)", priority="low",
                                    source=(22.5, None, None)), BED, SENDER, "A4", NOW)  # fmt: skip
    parsed(crackles)
    assert obx_fields(crackles)[1][3:7] == ["LW-CRACKLE-RATE^crackle rate^99LW", "1.1.1.1.2",
                                            "22.5", "%^percent^UCUM"]  # fmt: skip


def test_who_acknowledged_is_the_inactivation_facets_responsible_observer() -> None:
    text = alert_message(report(phase="update", acknowledged_by="nurse.kim"), BED, SENDER,
                         "A5", NOW)  # fmt: skip
    parsed(text)
    inactivation = obx_fields(text)[4]
    assert (inactivation[5], inactivation[16]) == ("alert-acknowledged", "nurse.kim")
    nobody = alert_message(report(phase="update", acknowledged_by=""), BED, SENDER, "A6", NOW)
    assert obx_fields(nobody)[4][5] == "alert-acknowledged"
    with pytest.raises(Hl7Error, match="phase"):
        alert_message(report(phase="reactivate"), BED, SENDER, "A7", NOW)


def test_free_text_cannot_break_the_message_and_a_bad_time_is_refused() -> None:
    text = rate_message({**READING, "state": "not_assessable", "rate_bpm": None,
                         "reason": "a|b^c~d\\e&f\rMSH|forged"}, BED, SENDER, "X2", NOW)  # fmt: skip
    parsed(text)
    strict(text)
    assert len(text.split("\r")) == 9  # MSH PID PV1 OBR, 3 device rows, the metric, and ""
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


def test_long_ids_are_delivered_whole_and_what_hl7_cannot_carry_is_refused_as_hl7() -> None:
    """A configured 24-character stream id and a long location go out whole (no library's
    component length cuts them); a time out of HL7's range or a lone surrogate in a text is
    an Hl7Error (the caller sets that one message aside), never another exception."""
    bed = Bed("edge-1", "cardiology-bed-14-stetho", equipment="0012A3FFFE4567AB",
              location="cardiothoracic-intensive-care^1^3^HOSP")  # fmt: skip
    text = rate_message({**READING, "stream_id": bed.stream_id}, bed, SENDER, "X6", NOW)
    parsed(text)
    assert obx_fields(text)[0][18] == \
        "edge-1.cardiology-bed-14-stetho^LUNGWATCH^0012A3FFFE4567AB^EUI-64"  # fmt: skip
    assert "PID|||edge-1.cardiology-bed-14-stetho^^^LUNGWATCH^ANON||^^^^^^U" in text.split("\r")
    assert "PV1||I|cardiothoracic-intensive-care^1^3^HOSP" in text.split("\r")
    for utc in ("0001-01-01T00:00:00+01:00", "1066-10-14T09:00:00Z"):
        with pytest.raises(Hl7Error, match="a time HL7 cannot carry"):
            rate_message({**READING, "utc": utc}, BED, SENDER, "X7", NOW)
    with pytest.raises(Hl7Error, match="not UTF-8"):
        rate_message({**READING, "state": "not_assessable", "rate_bpm": None,
                      "reason": "lost \ud800 here"}, BED, SENDER, "X8", NOW)  # fmt: skip
    with pytest.raises(Hl7Error, match="control id"):
        rate_message(READING, BED, SENDER, "X|9", NOW)
