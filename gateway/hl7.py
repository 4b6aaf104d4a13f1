"""HL7 v2.6 messages of IHE PCD-01 (ORU^R01) and PCD-04 (ORU^R40), built and checked with
hl7apy.

    sender = Sender(application="LUNGWATCH", facility="WARD-1", receiver="HIS", ...)
    text = rate_message(reading, bed, sender, control_id)      # a respiration reading
    text = finding_message(event, bed, sender, control_id)     # an event's onset or end
    text = alert_message(report, bed, sender, control_id)      # an alarm condition's change
    ack = parse_ack(text)                                       # what the receiver said

Every message is validated against HL7 v2.6's ORU_R01 structure (hl7apy, strict) as it is
built; a message the library refuses is an error here, never sent. An alert report is
``ORU^R40^ORU_R01``: the trigger event of PCD-04 on the ORU_R01 structure, as HL7 v2.8 and
IHE PCD TF-2 define it (its acknowledgement is a plain ACK here, as for PCD-01).

Codes (docs/gateway.md): the respiratory rate is IEEE 11073-10101 ``MDC_RESP_RATE`` (151562) in
``MDC_DIM_RESP_PER_MIN`` (264928) with the bed's age band's normal range as the reference
range; findings carry the SNOMED CT code of the event (crackles, wheeze, stridor, apnoea,
tachypnoea, bradypnoea) or, without one, the event type in the local table ``99LW``; signal
problems are observations of the local code ``signal-quality``.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message

from lungwatch.alarms import condition_type
from lungwatch.errors import LungwatchError
from lungwatch.events import FINDING_RATE_FAMILY, snomed_ct
from lungwatch.labels import FINDING_RATE_CODE, FINDING_RATE_TEXT, display_name

VERSION = "2.6"
MDC_RESP_RATE = "151562^MDC_RESP_RATE^MDC"
MDC_RESP_PER_MIN = "264928^MDC_DIM_RESP_PER_MIN^MDC"
MONITORING = "182777000^Monitoring of patient^SCT"  # the order every observation answers
PERCENT = "%^percent^UCUM"  # the finding rates' unit
LOCAL_TABLE = "99LW"  # lungwatch's own codes (event types without a SNOMED CT code)
PRESENT, ABSENT = "52101004^Present^SCT", "2667000^Absent^SCT"
RESPIRATION_STATE = f"respiration-state^Respiratory rate assessment^{LOCAL_TABLE}"
SIGNAL_QUALITY = f"signal-quality^Signal quality^{LOCAL_TABLE}"
ALERT = "196616^MDC_EVT_ALARM^MDC"  # OBR-4 and the first facet of every alert report
EVENT_PHASE = "68481^MDC_ATTR_EVENT_PHASE^MDC"
ALARM_STATE = "68482^MDC_ATTR_ALARM_STATE^MDC"
INACTIVATION_STATE = "68483^MDC_ATTR_ALARM_INACTIVATION_STATE^MDC"
ALERT_PRIORITY = {"high": "PH", "medium": "PM", "low": "PL"}  # OBX-8, with the source
ALERT_SOURCE = {"physiological": "SP", "technical": "ST"}
PHASES = ("start", "update", "escalate", "de-escalate", "reactivate", "end")
ALARM_STATES = ("active", "latched", "inactive")
ACCEPTED = ("AA", "CA")  # original / enhanced mode: accepted
# HL7's delimiters, line breaks and every other control character (MLLP's 0x0B and 0x1C among
# them) become spaces in free text
_ESCAPES = str.maketrans(
    {**{chr(c): " " for c in range(32)}, "\x7f": " ", "|": " ", "^": " ", "~": " ", "\\": " ",
     "&": " "}
)  # fmt: skip


MIN_YEAR = 1900  # a device time before it is a clock never set, not a measurement's time
P = ParamSpec("P")


class Hl7Error(LungwatchError):
    """A message could not be built, or a reply is not an acknowledgement of it."""


@dataclass(frozen=True)
class Sender:
    """MSH's sending and receiving application and facility."""

    application: str = "LUNGWATCH"
    facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    processing_id: str = "P"  # P production, T training, D debugging


@dataclass(frozen=True)
class Bed:
    """Where a reading comes from: the device's stream, the hospital's location for it
    (PV1-3, ``point of care^room^bed^facility``) and, when known, the patient's id (PID-3,
    ``id^^^authority^MR``; unknown: the bed's own, ``<device>.<stream>^^^LUNGWATCH^ANON``)."""

    device_id: str
    stream_id: str
    location: str = ""
    patient_id: str = ""


@dataclass(frozen=True)
class Ack:
    """MSA-1 and MSA-2 of a reply: the code and the control id it acknowledges."""

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


def _built(build: Callable[P, str]) -> Callable[P, str]:
    """A message builder whose fields the library refuses as they are set (a component over
    its length, a value of the wrong form) raises :class:`Hl7Error` naming it, as a message
    that fails validation does: one message is refused, never the caller's loop."""

    @functools.wraps(build)
    def built(*args: P.args, **kwargs: P.kwargs) -> str:
        try:
            return build(*args, **kwargs)
        except HL7apyException as exc:
            raise Hl7Error(f"HL7 v{VERSION} ORU_R01: {exc}") from None

    return built


@_built
def rate_message(
    reading: Mapping[str, Any], bed: Bed, sender: Sender, control_id: str, now: dt.datetime
) -> str:
    """PCD-01 of one respiration reading (the respiration topic's message): the rate with
    its reference range when the state is ``ok``, else the assessment's state and reason."""
    utc = str(reading.get("utc", ""))
    msg, order = _observation_message(bed, sender, control_id, now, utc)
    if reading.get("state") == "ok" and isinstance(reading.get("rate_bpm"), int | float):
        low, high = reading.get("low_bpm"), reading.get("high_bpm")
        limits = f"{low:g}-{high:g}" if isinstance(low, int | float) and isinstance(
            high, int | float) else ""  # fmt: skip
        _obx(order, 1, "NM", MDC_RESP_RATE, f"{float(reading['rate_bpm']):.1f}", utc, bed,
             units=MDC_RESP_PER_MIN, limits=limits, status="R")  # fmt: skip
    else:
        state = plain(reading.get("state", "unknown"))
        reason = plain(reading.get("reason", ""))
        value = f"{state}^{reason or state}^{LOCAL_TABLE}"
        _obx(order, 1, "CWE", RESPIRATION_STATE, value, utc, bed, status="R")
    set_id = 1
    for key, family in FINDING_RATE_FAMILY.items():  # the finding rates, where the bed has one
        share = reading.get(key)
        if isinstance(share, int | float):
            set_id += 1
            code = f"{FINDING_RATE_CODE[family]}^{FINDING_RATE_TEXT[family]}^{LOCAL_TABLE}"
            _obx(order, set_id, "NM", code, f"{float(share):.1f}", utc, bed, units=PERCENT,
                 status="R")  # fmt: skip
    return _checked(msg)


@_built
def finding_message(
    event: Mapping[str, Any], bed: Bed, sender: Sender, control_id: str, now: dt.datetime
) -> str:
    """PCD-01 of one event's onset or end: the finding present (onset, preliminary) or over
    (ended, final); a technical event is an observation of the signal's quality."""
    start, end = str(event.get("start_utc", "")), event.get("end_utc")
    ended = event.get("state") == "ended"
    msg, order = _observation_message(bed, sender, control_id, now, start, end if ended else None)
    kind = event.get("type", "")
    if event.get("kind") == "technical":
        value = f"{plain(kind)}^{plain(kind)}^{LOCAL_TABLE}"
        _obx(order, 1, "CWE", SIGNAL_QUALITY, value, start, bed, status="F" if ended else "P")
    else:
        code, text = event.get("snomed_ct"), display_name(str(kind))
        what = f"{plain(code)}^{plain(text)}^SCT" if code else f"{plain(kind)}^{plain(text)}^" \
            f"{LOCAL_TABLE}"  # fmt: skip
        _obx(order, 1, "CWE", what, PRESENT, start, bed, status="F" if ended else "P")
    return _checked(msg)


@dataclass(frozen=True)
class AlertReport:
    """One change of a bed's alarm condition (:mod:`gateway.alarms`): which alert (its id is
    the same in every report of it), what changed (``phase``), and the condition as it is
    now."""

    alert_id: str
    condition: str  # CAS, DAS, apnoea, ... or a technical type (lungwatch.alarms)
    text: str
    kind: str  # physiological | technical
    priority: str  # high | medium | low, escalation included
    phase: str  # PHASES
    alarm_state: str  # ALARM_STATES: active, latched (its episodes over, not acknowledged)
    acknowledged_by: str | None  # None: not acknowledged; "" acknowledged, nobody named
    first_onset_utc: str
    utc: str  # when the gateway saw the change


def condition_code(condition: str, text: str) -> str:
    """What the alarm is about: the SNOMED CT finding of a physiological condition (the
    family's: wheezing, crackles; the breathing findings'), else the condition in the local
    table."""
    code = snomed_ct(condition_type(condition))
    if code:
        return f"{code}^{plain(text)}^SCT"
    return f"{plain(condition)}^{plain(text)}^{LOCAL_TABLE}"


@_built
def alert_message(
    report: AlertReport, bed: Bed, sender: Sender, control_id: str, now: dt.datetime
) -> str:
    """PCD-04 of one alarm condition's change: the alert (OBR-3 its id, OBR-4 MDC_EVT_ALARM)
    and its facets, one OBX each (OBX-4 ``1.0.0.0.N``): what it is with its priority and
    source (OBX-8), the event phase, the alarm state, and whether a person acknowledged it
    (``alert-acknowledged``, OBX-16 who)."""
    if report.phase not in PHASES or report.alarm_state not in ALARM_STATES:
        raise Hl7Error(f"alert phase {report.phase!r} / state {report.alarm_state!r} unknown")
    if report.priority not in ALERT_PRIORITY or report.kind not in ALERT_SOURCE:
        raise Hl7Error(f"alert priority {report.priority!r} / kind {report.kind!r} unknown")
    msg, order = _observation_message(
        bed, sender, control_id, now, report.first_onset_utc, trigger="R40"
    )
    order.obr.obr_3 = f"{plain(report.alert_id)}^{plain(sender.application)}"
    order.obr.obr_4 = ALERT
    utc = report.utc
    flags = (ALERT_PRIORITY[report.priority], ALERT_SOURCE[report.kind])
    what = condition_code(report.condition, report.text)
    _obx(order, 1, "CWE", ALERT, what, utc, bed, status="R", sub_id="1.0.0.0.1", flags=flags)
    _obx(order, 2, "ST", EVENT_PHASE, report.phase, utc, bed, status="R", sub_id="1.0.0.0.2")
    _obx(order, 3, "ST", ALARM_STATE, report.alarm_state, utc, bed, status="R",
         sub_id="1.0.0.0.3")  # fmt: skip
    acked = report.acknowledged_by is not None
    _obx(order, 4, "ST", INACTIVATION_STATE, "alert-acknowledged" if acked else "enabled",
         utc, bed, status="R", sub_id="1.0.0.0.4",
         observer=plain(report.acknowledged_by) if acked else "")  # fmt: skip
    return _checked(msg)


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


def _observation_message(
    bed: Bed,
    sender: Sender,
    control_id: str,
    now: dt.datetime,
    start: str,
    end: Any = None,
    trigger: str = "R01",
) -> tuple[Message, Any]:
    msg = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    msh = msg.msh
    msh.msh_3 = plain(sender.application)
    msh.msh_4 = plain(sender.facility)
    msh.msh_5 = plain(sender.receiving_application)
    msh.msh_6 = plain(sender.receiving_facility)
    msh.msh_7 = hl7_time(now)
    msh.msh_9 = f"ORU^{trigger}^ORU_R01"
    msh.msh_10 = control_id
    msh.msh_11 = sender.processing_id
    msh.msh_12 = VERSION
    msh.msh_15 = "AL"  # accept acknowledgement: always
    msh.msh_16 = "NE"  # application acknowledgement: never
    result = msg.add_group("ORU_R01_PATIENT_RESULT")
    patient = result.add_group("ORU_R01_PATIENT")
    # PID-3 is required: without the hospital's patient id, the bed's own (identifier type
    # ANON, HL7 table 0203: it names the monitored bed, not the person)
    patient.pid.pid_3 = bed.patient_id or f"{plain(bed.device_id)}.{plain(bed.stream_id)}" \
        f"^^^{plain(sender.application)}^ANON"  # fmt: skip
    patient.pid.pid_5 = "^^^^^^U"  # the name is the hospital's to know (U: unspecified)
    if bed.location:
        visit = patient.add_group("ORU_R01_VISIT")
        visit.pv1.pv1_2 = "I"  # inpatient
        visit.pv1.pv1_3 = bed.location
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.obr.obr_1 = "1"
    order.obr.obr_3 = f"{control_id}^{plain(sender.application)}"
    order.obr.obr_4 = MONITORING
    order.obr.obr_7 = hl7_time(start)
    if end:
        order.obr.obr_8 = hl7_time(str(end))
    return msg, order


def _obx(
    order: Any, set_id: int, value_type: str, code: str, value: str, utc: str, bed: Bed, *,
    units: str = "", limits: str = "", status: str = "F", sub_id: str = "",
    flags: tuple[str, ...] = (), observer: str = "",
) -> None:  # fmt: skip
    obx = order.add_group("ORU_R01_OBSERVATION").obx
    obx.obx_1 = str(set_id)
    obx.obx_2 = value_type
    obx.obx_3 = code
    if sub_id:
        obx.obx_4 = sub_id
    obx.obx_5 = value
    if units:
        obx.obx_6 = units
    if limits:
        obx.obx_7 = limits
    for flag in flags:  # OBX-8 repeats: one abnormal flag each
        obx.add_field("obx_8").value = flag
    obx.obx_11 = status
    obx.obx_14 = hl7_time(utc)
    if observer:
        obx.obx_16 = observer  # the responsible observer: who acknowledged
    # the equipment: device and stream in the identifier (ST, room for any configured id; the
    # namespace component is 20 characters only), as PID-3 names the bed
    obx.obx_18 = f"{plain(bed.device_id)}.{plain(bed.stream_id)}^LUNGWATCH"


def _checked(msg: Message) -> str:
    """The message validated, as ER7 text (the library's refusals become :class:`Hl7Error` in
    :func:`_built`, around every builder that calls this)."""
    msg.validate()
    text = str(msg.to_er7())
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate in some text
        raise Hl7Error(f"HL7 v{VERSION} ORU_R01: not UTF-8 text ({exc.reason})") from None
    return text
