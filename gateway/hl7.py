"""HL7 v2.6 messages of IHE PCD-01 (``ORU^R01^ORU_R01``) and PCD-04 (``ORU^R40^ORU_R40``) after
the IHE PCD Technical Framework's tables; docs/gateway.md is the conformance statement (every
segment, field and code sent, and why). A value HL7 cannot carry raises :class:`Hl7Error`: that
one message is refused, never the caller's loop."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

from lungwatch.alarms import condition_type
from lungwatch.errors import LungwatchError
from lungwatch.events import FINDING_RATE_FAMILY, snomed_ct
from lungwatch.labels import FAMILY, display_name

VERSION = "2.6"
PCD01_PROFILE = "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO"  # MSH-21
PCD04_PROFILE = "IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.4.1^ISO"  # MSH-21
CHARSET = "UNICODE UTF-8"  # MSH-18
EUI64 = "EUI-64"  # the universal id type of an equipment identifier
LOCAL_NAMESPACE = "LUNGWATCH"  # an identifier's namespace where no EUI-64 is known
# the containment (OBX-4): medical device system, respiration analyser (VMD), bed's channel
MDS = "69837^MDC_DEV_METER_PHYSIO_MULTI_PARAM_MDS^MDC"
VMD = "69722^MDC_DEV_ANALY_RESP_RATE_VMD^MDC"
CHAN = "69723^MDC_DEV_ANALY_RESP_RATE_CHAN^MDC"
MDS_ID, VMD_ID, CHAN_ID = "1.0.0.0", "1.1.0.0", "1.1.1.0"
METRIC_PREFIX = "1.1.1."  # a metric of the bed's channel: 1.1.1.<n>
MDC_RESP_RATE = "151562^MDC_RESP_RATE^MDC"
MDC_RESP_PER_MIN = "264928^MDC_DIM_RESP_PER_MIN^MDC"
AUTO_MEASUREMENT = "AMEAS^auto-measurement^MDC"  # OBX-17: a periodic measured metric
MONITORING = "182777000^Monitoring of patient^SCT"  # the order every observation answers
PERCENT = "%^percent^UCUM"  # the finding rates' unit
LOCAL_TABLE = "99LW"  # lungwatch's own codes (event types without a SNOMED CT code)
PRESENT, ABSENT = "52101004^Present^SCT", "2667000^Absent^SCT"
RESPIRATION_STATE = f"respiration-state^Respiratory rate assessment^{LOCAL_TABLE}"
SIGNAL_QUALITY = f"signal-quality^Signal quality^{LOCAL_TABLE}"
RATE_CODE = {f.name: f"{f.rate_code}^{f.rate_text}^{LOCAL_TABLE}" for f in FAMILY.values()}
ALERT = "196616^MDC_EVT_ALARM^MDC"  # OBR-4 of every alert, its kind where no event code says more
ALERT_EVENT = {  # the alert's event identification (facet 1) of the breathing conditions
    "tachypnoea": "196648^MDC_EVT_HI^MDC",
    "bradypnoea": "196670^MDC_EVT_LO^MDC",
    "apnoea": "199680^MDC_EVT_APNEA^MDC",
}
ALERT_LIMIT_FLAG = {"tachypnoea": "H", "bradypnoea": "L"}  # OBX-8's abnormality, facet 1
ALERT_SOURCE_ATTR = "68480^MDC_ATTR_ALERT_SOURCE^MDC"  # facet 2 where no metric is the source
EVENT_PHASE = "68481^MDC_ATTR_EVENT_PHASE^MDC"
ALARM_STATE = "68482^MDC_ATTR_ALARM_STATE^MDC"
INACTIVATION_STATE = "68483^MDC_ATTR_ALARM_INACTIVATION_STATE^MDC"
ALERT_PRIORITY = {"high": "PH", "medium": "PM", "low": "PL"}  # OBX-8, with the source
ALERT_SOURCE = {"physiological": "SP", "technical": "ST"}
PHASES = ("start", "update", "escalate", "de-escalate", "end")
ALARM_STATES = ("active", "latched", "inactive")
ACCEPTED = ("AA", "CA")  # original / enhanced mode: accepted
# control characters (MLLP's 0x0B and 0x1C among them) and HL7's delimiters: spaces
_ESCAPES = str.maketrans({c: " " for c in [*map(chr, range(32)), "\x7f", *"|^~\\&"]})
MIN_YEAR = 1900  # a device time before it is a clock never set, not a measurement's time


class Hl7Error(LungwatchError):
    """A message could not be built, or a reply is not an acknowledgement of it."""


@dataclass(frozen=True)
class Sender:
    application: str = "LUNGWATCH"
    facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    processing_id: str = "P"  # P production, T training, D debugging
    equipment: str = ""  # EUI-64, 16 upper-case hex digits ("": none; lungwatch.equipment)

    def identifier(self, entity: str = "") -> str:
        """An identifier this application assigns (EI): ``entity^application^EUI-64^EUI-64``;
        without ``entity``, the application itself (HD: ``application^EUI-64^EUI-64``)."""
        universal = f"^{self.equipment}^{EUI64}" if self.equipment else ""
        app = plain(self.application) + universal
        return f"{plain(entity)}^{app}" if entity else app


@dataclass(frozen=True)
class Bed:
    """Where a reading comes from: the device's stream and EUI-64 ("": not known yet), the
    hospital's location (PV1-3) and patient id (PID-3; "": the bed's own)."""

    device_id: str
    stream_id: str
    location: str = ""
    patient_id: str = ""
    equipment: str = ""
    site: str = ""

    @property
    def name(self) -> str:
        return f"{plain(self.device_id)}.{plain(self.stream_id)}"

    @property
    def equipment_id(self) -> str:
        """OBX-18 (EI)."""
        universal = f"^{self.equipment}^{EUI64}" if self.equipment else ""
        return f"{self.name}^{LOCAL_NAMESPACE}{universal}"


@dataclass(frozen=True)
class Ack:
    """MSA-1, MSA-2 and MSA-3 of a reply."""

    code: str
    control_id: str
    text: str = ""

    @property
    def accepted(self) -> bool:
        return self.code in ACCEPTED


def hl7_time(utc: str | dt.datetime) -> str:
    """An ISO 8601 UTC time (``2026-11-25T21:52:18.040Z``) as HL7 DTM with its zone."""
    when = utc if isinstance(utc, dt.datetime) else _parse_utc(utc)
    try:
        stamp = when.astimezone(dt.timezone.utc)
    except (OverflowError, ValueError):
        raise Hl7Error(f"a time HL7 cannot carry: {str(utc)[:64]!r}") from None
    if not MIN_YEAR <= stamp.year <= 9999:
        raise Hl7Error(f"a time HL7 cannot carry: {str(utc)[:64]!r} (year {stamp.year})")
    return stamp.strftime("%Y%m%d%H%M%S.") + f"{stamp.microsecond // 1000:03d}+0000"


def _parse_utc(text: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        raise Hl7Error(f"not an ISO 8601 time: {text!r}") from None


def plain(text: object) -> str:
    """Free text for a field: HL7's delimiters and line breaks become spaces."""
    return str(text).translate(_ESCAPES).strip()


def range_flag(value: float, low: object, high: object) -> str:
    """OBX-8 of a numeric against its reference range ("": range not known)."""
    if not (isinstance(low, int | float) and isinstance(high, int | float)):
        return ""
    return "H" if value > high else "L" if value < low else "N"


def limits_of(low: object, high: object) -> str:
    """OBX-7 ``low-high``; "" unless both are numbers."""
    numbers = isinstance(low, int | float) and isinstance(high, int | float)
    return f"{low:g}-{high:g}" if numbers else ""


def rate_message(
    reading: Mapping[str, Any], bed: Bed, sender: Sender, control_id: str, now: dt.datetime
) -> str:
    """PCD-01 of one respiration reading (the respiration topic's message)."""
    when = hl7_time(str(reading.get("utc", "")))
    metrics: list[list[str]] = []
    if reading.get("state") == "ok" and isinstance(reading.get("rate_bpm"), int | float):
        rate = float(reading["rate_bpm"])
        low, high = reading.get("low_bpm"), reading.get("high_bpm")
        metrics.append(["NM", MDC_RESP_RATE, f"{rate:.1f}", MDC_RESP_PER_MIN, limits_of(low, high),
                        range_flag(round(rate, 1), low, high), when, AUTO_MEASUREMENT])  # fmt: skip
    else:
        state = plain(reading.get("state", "unknown"))
        reason = plain(reading.get("reason", ""))
        value = f"{state}^{reason or state}^{LOCAL_TABLE}"
        metrics.append(["CWE", RESPIRATION_STATE, value, "", "", "", when, ""])
    for key, family in FINDING_RATE_FAMILY.items():  # the finding rates, where the bed has one
        share = reading.get(key)
        if isinstance(share, int | float):
            metrics.append(["NM", RATE_CODE[family], f"{float(share):.1f}", PERCENT, "", "", when,
                            AUTO_MEASUREMENT])  # fmt: skip
    return _observation_message(bed, sender, control_id, now, when, "", metrics)


def finding_message(
    event: Mapping[str, Any], bed: Bed, sender: Sender, control_id: str, now: dt.datetime
) -> str:
    """PCD-01 of one finding or technical episode's onset or end."""
    start, end = hl7_time(str(event.get("start_utc", ""))), ""
    if event.get("state") == "ended" and event.get("end_utc"):
        end = hl7_time(str(event["end_utc"]))
    kind = event.get("type", "")
    if event.get("kind") == "technical":
        value = f"{plain(kind)}^{plain(kind)}^{LOCAL_TABLE}"
        metric = ["CWE", SIGNAL_QUALITY, value, "", "", "", start, ""]
    else:
        code, text = event.get("snomed_ct"), display_name(str(kind))
        what = f"{plain(code)}^{plain(text)}^SCT" if code else f"{plain(kind)}^{plain(text)}^" \
            f"{LOCAL_TABLE}"  # fmt: skip
        metric = ["CWE", what, PRESENT, "", "", "", start, ""]
    return _observation_message(bed, sender, control_id, now, start, end, [metric])


@dataclass(frozen=True)
class AlertReport:
    """A change of a bed's alarm condition (:mod:`gateway.alarms`); one alert, one ``alert_id``."""

    alert_id: str
    condition: str  # lungwatch.alarms.condition_of
    text: str
    kind: str  # physiological | technical
    priority: str  # escalation included
    phase: str  # PHASES
    alarm_state: str  # ALARM_STATES
    acknowledged_by: str | None  # None: not acknowledged; "" acknowledged, nobody named
    first_onset_utc: str
    utc: str  # when the gateway saw the change
    source: tuple[float, float | None, float | None] | None = None  # value, low, high


def condition_code(condition: str, text: str) -> str:
    """What the alarm is about: its SNOMED CT finding, else the condition in the local table."""
    code = snomed_ct(condition_type(condition))
    if code:
        return f"{code}^{plain(text)}^SCT"
    return f"{plain(condition)}^{plain(text)}^{LOCAL_TABLE}"


def _source_facet(report: AlertReport, sub_id: str, when: str) -> str:
    """Facet 2 of an alert: its source metric's latest value, else the alert source attribute."""
    if report.source is not None and report.kind == "physiological":
        value, low, high = report.source
        if report.condition in ALERT_EVENT:
            return _obx(2, "NM", MDC_RESP_RATE, sub_id, f"{value:.1f}", MDC_RESP_PER_MIN,
                        limits_of(low, high), (range_flag(round(value, 1), low, high),),
                        when=when)  # fmt: skip
        if report.condition in RATE_CODE:
            return _obx(2, "NM", RATE_CODE[report.condition], sub_id, f"{value:.1f}", PERCENT,
                        when=when)  # fmt: skip
    source = CHAN if report.kind == "physiological" else MDS
    return _obx(2, "CWE", ALERT_SOURCE_ATTR, sub_id, source, when=when)


def alert_message(
    report: AlertReport, bed: Bed, sender: Sender, control_id: str, now: dt.datetime
) -> str:
    """PCD-04 of one alarm condition's change: OBR and the alert's five facets."""
    if report.phase not in PHASES or report.alarm_state not in ALARM_STATES:
        raise Hl7Error(f"alert phase {report.phase!r} / state {report.alarm_state!r} unknown")
    if report.priority not in ALERT_PRIORITY or report.kind not in ALERT_SOURCE:
        raise Hl7Error(f"alert priority {report.priority!r} / kind {report.kind!r} unknown")
    when = hl7_time(report.utc)
    base = f"{METRIC_PREFIX}1" if report.kind == "physiological" else MDS_ID
    limit = ALERT_LIMIT_FLAG.get(report.condition, "")
    priority, source = ALERT_PRIORITY[report.priority], ALERT_SOURCE[report.kind]
    flags = (limit, priority, source) if limit else (priority, source)
    event = ALERT_EVENT.get(report.condition, ALERT)
    acked = report.acknowledged_by is not None
    inactivation = "alert-acknowledged" if acked else "enabled"
    segments = _head(bed, sender, control_id, now, "R40", "ORU_R40", PCD04_PROFILE)
    segments.append(_segment("OBR", ["1", "", sender.identifier(report.alert_id), ALERT, "", "",
                                     hl7_time(report.first_onset_utc)]))  # fmt: skip
    segments += [
        _obx(1, "CWE", event, f"{base}.1", condition_code(report.condition, report.text),
             flags=flags, when=when, equipment=bed.equipment_id),
        _source_facet(report, f"{base}.2", when),
        _obx(3, "ST", EVENT_PHASE, f"{base}.3", report.phase, when=when),
        _obx(4, "ST", ALARM_STATE, f"{base}.4", report.alarm_state, when=when),
        _obx(5, "ST", INACTIVATION_STATE, f"{base}.5", inactivation, when=when,
             observer=plain(report.acknowledged_by) if acked else ""),
    ]  # fmt: skip
    return _message(segments)


def parse_ack(text: str) -> Ack:
    """The acknowledgement in ``text`` (an ACK message); Hl7Error if it is none."""
    try:
        msg = parse_message(text.replace("\n", "\r"), validation_level=VALIDATION_LEVEL.TOLERANT)
        code, control = msg.msa.msa_1.to_er7(), msg.msa.msa_2.to_er7()
        detail = msg.msa.msa_3.to_er7() if msg.msa.msa_3 else ""
    except (HL7apyException, AttributeError, IndexError) as exc:
        raise Hl7Error(f"not an HL7 acknowledgement: {exc}") from None
    if not code:
        raise Hl7Error("not an HL7 acknowledgement: MSA-1 is empty")
    return Ack(code, control, detail)


def control_id_of(text: str) -> str:
    """MSH-10 of a message in ER7."""
    fields = text.split("\r", 1)[0].split("|")
    if len(fields) < 10 or fields[0] != "MSH":
        raise Hl7Error("not an HL7 message: no MSH segment first")
    return fields[9]


def _segment(name: str, fields: Sequence[str]) -> str:
    fields = list(fields)
    while fields and not fields[-1]:
        fields.pop()
    return "|".join([name, *fields])


def _head(
    bed: Bed, sender: Sender, control_id: str, now: dt.datetime, trigger: str, structure: str,
    profile: str,
) -> list[str]:  # fmt: skip
    if plain(control_id) != control_id or not control_id:
        raise Hl7Error(f"control id {control_id!r} is not plain text")
    msh = [
        "^~\\&", sender.identifier(), plain(sender.facility), plain(sender.receiving_application),
        plain(sender.receiving_facility), hl7_time(now), "", f"ORU^{trigger}^{structure}",
        control_id, plain(sender.processing_id), VERSION, "", "", "AL", "NE", "", CHARSET, "", "",
        profile,
    ]  # fmt: skip
    # PID-3 is required: ANON (HL7 table 0203) names the monitored bed, not the person
    patient = bed.patient_id or f"{bed.name}^^^{plain(sender.application)}^ANON"
    segments = ["MSH|" + "|".join(msh), _segment("PID", ["", "", patient, "", "^^^^^^U"])]
    if bed.location:
        segments.append(_segment("PV1", ["", "I", bed.location]))  # inpatient
    return segments


def _observation_message(
    bed: Bed, sender: Sender, control_id: str, now: dt.datetime, start: str, end: str,
    metrics: list[list[str]],
) -> str:  # fmt: skip
    """PCD-01: the order observed from ``start`` (to ``end``), the device rows, the metrics."""
    segments = _head(bed, sender, control_id, now, "R01", "ORU_R01", PCD01_PROFILE)
    segments.append(_segment("OBR", ["1", "", sender.identifier(control_id), MONITORING, "", "",
                                     start, end]))  # fmt: skip
    equipment = bed.equipment_id
    segments += [
        _obx(1, "", MDS, MDS_ID, status="X", equipment=equipment),
        _obx(2, "", VMD, VMD_ID, status="X"),
        _obx(3, "", CHAN, CHAN_ID, status="X"),
    ]
    for n, (kind, code, value, units, limits, flag, when, method) in enumerate(metrics, 1):
        segments.append(_obx(3 + n, kind, code, f"{METRIC_PREFIX}{n}", value, units, limits,
                             (flag,) if flag else (), when=when, method=method,
                             equipment=equipment))  # fmt: skip
    return _message(segments)


def _obx(
    set_id: int, value_type: str, code: str, sub_id: str, value: str = "", units: str = "",
    limits: str = "", flags: tuple[str, ...] = (), *, status: str = "R", when: str = "",
    observer: str = "", method: str = "", equipment: str = "",
) -> str:  # fmt: skip
    """OBX-1 set id, 2 value type, 3 identifier, 4 sub-id (containment), 5 value, 6 units, 7 range,
    8 abnormal flags (repeated), 11 status, 14 time, 16 observer, 17 method, 18 equipment."""
    fields = [str(set_id), value_type, code, sub_id, value, units, limits, "~".join(flags), "",
              "", status, "", "", when, "", observer, method, equipment]  # fmt: skip
    return _segment("OBX", fields)


def _message(segments: list[str]) -> str:
    text = "".join(segment + "\r" for segment in segments)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Hl7Error(f"HL7 v{VERSION}: not UTF-8 text ({exc.reason})") from None
    return text
