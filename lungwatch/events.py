"""The event schema and the MQTT topics it travels on (docs/events.md: fields, topics, QoS). An
:class:`Event` is one message about one episode: ``onset``, optional ``ongoing``, then ``ended``,
sharing ``episode_id``; a retried message keeps its ``id``. Times are UTC ISO-8601 with ``Z``
and milliseconds; samples index the stream's timeline."""

from __future__ import annotations

import copy
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from typing import Any, Literal, NoReturn, TypeGuard

from lungwatch.equipment import eui64
from lungwatch.errors import LungwatchError
from lungwatch.labels import FINDING_FAMILIES, SOUND_CLASSES, family_snomed_ct, sound_class

SCHEMA_VERSION = 1
TOPIC_ROOT = "lungwatch/v1"
DEVICE_STREAM = "device"  #: device-wide technical events' stream (``spool_full``); never a bed's
MAX_SEGMENT_CHARS = 64

SOUND_TYPES: tuple[str, ...] = tuple(c.name for c in SOUND_CLASSES if c.families)
RESPIRATION_TYPES: tuple[str, ...] = ("apnoea", "tachypnoea", "bradypnoea")
# a bed's breathing on the respiration topic: its ``state`` (docs/events.md)
RESPIRATION_STATES = ("assessing", "ok", "not_assessable", "apnoea", "signal_lost")
PHYSIOLOGICAL_TYPES: tuple[str, ...] = SOUND_TYPES + RESPIRATION_TYPES
#: Finding episodes (kind ``finding``): recurring events of one family (edge.bed.findings).
FINDING_TYPES: tuple[str, ...] = FINDING_FAMILIES
#: The respiration message's finding rates (percent of breathing time, or null), per family.
FINDING_RATE_KEYS: tuple[str, ...] = ("wheeze_rate_pct", "crackle_rate_pct")
FINDING_RATE_FAMILY: dict[str, str] = dict(zip(FINDING_RATE_KEYS, FINDING_FAMILIES, strict=True))


#: SNOMED CT findings of the breathing alarms and of the rate (observable entity).
RESPIRATION_SNOMED_CT: dict[str, str] = {
    "apnoea": "1023001",  # Apnea
    "tachypnoea": "271823003",  # Tachypnea
    "bradypnoea": "86684002",  # Bradypnea
}
RESPIRATORY_RATE_SNOMED_CT = "86290005"  # Respiratory rate
TECHNICAL_TYPES: tuple[str, ...] = (
    "poor_signal",  # quality score below the gate: physiological events suppressed
    "off_body",  # stethoscope off the chest (quiet input or the device says so)
    "clipping",  # input overdriven
    "silence",  # digital silence
    "invalid_samples",  # NaN / Inf in the audio
    "source_stalled",  # no audio for longer than the configured limit
    "signal_gap",  # samples lost on the way (detail.missing_samples)
    "overflow",  # the capture buffer overran
    "source_disconnected",  # the source went away (reconnects are tried)
    "device_status",  # a wearable reports a problem (battery, gain; detail says which)
    "spool_full",  # the store-and-forward spool hit its bound (see edge.sinks.spool)
    "breath_signal_lost",  # no breath heard for the apnoea time, and no contact with the body
)
KINDS = ("physiological", "technical", "finding")
PRIORITIES = ("high", "medium", "low")
STATES = ("onset", "ongoing", "ended")

#: Default priority per event type (read by the detector and the gate; a runtime config may
#: override any). A technical condition that stops monitoring outranks one that degrades it.
Priority = Literal["high", "medium", "low"]
DEFAULT_PRIORITIES: dict[str, Priority] = {
    **{c.name: c.priority for c in SOUND_CLASSES if c.priority},  # the label table's
    "CAS": "medium",  # a wheeze finding: as its loudest member type (Wheeze)
    "DAS": "low",  # a crackle finding
    "poor_signal": "low",
    "off_body": "medium",
    "clipping": "low",
    "silence": "low",
    "signal_gap": "low",
    "overflow": "low",
    "invalid_samples": "medium",
    "source_stalled": "medium",
    "source_disconnected": "medium",
    "device_status": "low",
    "spool_full": "medium",
    "apnoea": "high",
    "tachypnoea": "low",
    "bradypnoea": "low",
    "breath_signal_lost": "medium",
}

_UTC_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class EventError(LungwatchError, ValueError):
    """An event (or a topic segment) is invalid; the message names the field."""


def kind_of(event_type: str) -> str:
    """``physiological``, ``technical`` or ``finding``; EventError for an unknown type."""
    if event_type in PHYSIOLOGICAL_TYPES:
        return "physiological"
    if event_type in FINDING_TYPES:
        return "finding"
    if event_type in TECHNICAL_TYPES:
        return "technical"
    allowed = f"one of {', '.join(PHYSIOLOGICAL_TYPES + TECHNICAL_TYPES + FINDING_TYPES)}"
    raise EventError(f"event.type must be {allowed}, got {event_type!r}")


def snomed_ct(event_type: str) -> str | None:
    """SNOMED CT concept id of a physiological type, else None."""
    if event_type in RESPIRATION_SNOMED_CT:
        return RESPIRATION_SNOMED_CT[event_type]
    if event_type in SOUND_TYPES:
        return sound_class(event_type).snomed_ct
    if event_type in FINDING_TYPES:
        return family_snomed_ct(event_type)
    return None


def format_utc(when: datetime | float) -> str:
    """``2026-05-09T07:35:25.123Z`` from an aware datetime or POSIX seconds."""
    moment = when if isinstance(when, datetime) else datetime.fromtimestamp(when, timezone.utc)
    if moment.tzinfo is None:
        raise EventError(f"time must be timezone-aware, got naive {moment.isoformat()}")
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"


def utc_now() -> str:
    return format_utc(datetime.now(timezone.utc))


def parse_utc(text: str) -> datetime:
    """The aware datetime of a ``...Z`` timestamp; EventError if it is not one."""
    if not (isinstance(text, str) and _UTC_RE.match(text)):
        raise EventError(f"time must be UTC ISO-8601 ending in Z, got {text!r}")
    try:
        return datetime.fromisoformat(text[:-1]).replace(tzinfo=timezone.utc)
    except ValueError:
        raise EventError(f"time must be a valid UTC ISO-8601 time, got {text!r}") from None


def check_segment(value: object, name: str) -> str:
    """A topic segment: 1..64 printable characters, no ``/ + #``, not starting with ``$``."""
    ok = (
        isinstance(value, str)
        and 0 < len(value) <= MAX_SEGMENT_CHARS
        and value.isprintable()
        and not any(c in value for c in "/+#")
        and not value.startswith("$")
    )
    if not ok:
        raise EventError(
            f"{name} must be 1..{MAX_SEGMENT_CHARS} printable characters without "
            f"'/', '+', '#' or a leading '$', got {value!r}"
        )
    return str(value)


def is_segment(value: object) -> bool:
    try:
        check_segment(value, "segment")
    except EventError:
        return False
    return True


def event_topic(site: str, device_id: str, stream_id: str) -> str:
    parts = (check_segment(site, "site"), check_segment(device_id, "device_id"))
    return f"{TOPIC_ROOT}/{parts[0]}/{parts[1]}/{check_segment(stream_id, 'stream_id')}/event"


def status_topic(site: str, device_id: str) -> str:
    """``lungwatch/v1/<site>/<device>/status`` (retained)."""
    site, device_id = check_segment(site, "site"), check_segment(device_id, "device_id")
    return f"{TOPIC_ROOT}/{site}/{device_id}/status"


def verdict_topic(site: str, device_id: str, stream_id: str) -> str:
    """``lungwatch/v1/<site>/<device>/<stream>/verdict`` (retained)."""
    return event_topic(site, device_id, stream_id)[: -len("event")] + "verdict"


def respiration_topic(site: str, device_id: str, stream_id: str) -> str:
    """``lungwatch/v1/<site>/<device>/<stream>/respiration`` (retained)."""
    return event_topic(site, device_id, stream_id)[: -len("event")] + "respiration"


def respiration_payload(site: str, device_id: str, stream_id: str, reading: dict[str, Any]) -> str:
    """The retained respiration message: identity, the rate's SNOMED CT code and ``reading``."""
    body = {"schema_version": SCHEMA_VERSION, "site": site, "device_id": device_id}
    body.update(stream_id=check_segment(stream_id, "stream_id"))
    body["snomed_ct"] = RESPIRATORY_RATE_SNOMED_CT
    body.update(reading)
    try:
        return json.dumps(body, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise EventError(
            f"respiration must be JSON numbers/strings, got {reading!r} ({exc})"
        ) from None


MAX_RATE_BPM = 200.0
MAX_REASON_CHARS = 200


@dataclass(frozen=True)
class Respiration:
    """The respiration message's fields its readers use, each checked by :meth:`from_dict`."""

    state: str
    rate_bpm: float | None
    low_bpm: float | None
    high_bpm: float | None
    utc: str
    reason: str
    wheeze_rate_pct: float | None
    crackle_rate_pct: float | None

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Respiration:
        """The checked fields; EventError names the first bad one."""
        state, rate, reason = body.get("state"), body.get("rate_bpm"), body.get("reason", "")
        of = "respiration"
        states = ", ".join(RESPIRATION_STATES)
        _check(state in RESPIRATION_STATES, "state", state, f"one of {states}", of)
        if state == "ok":
            ok = is_number(rate) and 0.0 <= rate <= MAX_RATE_BPM
            _check(ok, "rate_bpm", rate, f"a number in [0, {MAX_RATE_BPM:g}] when ok", of)
        else:
            _check(rate is None, "rate_bpm", rate, f"null while the state is {state}", of)
        for name in ("low_bpm", "high_bpm"):
            _check(body.get(name) is None or is_number(body[name]), name, body.get(name),
                   "null or a number", of)  # fmt: skip
        _parsed_time("utc", body.get("utc"), of)
        _check_reason(reason, of)
        for key in FINDING_RATE_KEYS:
            share = body.get(key)
            ok = share is None or (is_number(share) and 0.0 <= share <= 100.0)
            _check(ok, key, share, "null or in [0, 100]", of)
        values: dict[str, Any] = {f.name: body.get(f.name) for f in fields(cls)}
        return cls(**values | {"reason": reason})

    @property
    def when(self) -> datetime:
        return parse_utc(self.utc)


def summary_topic(site: str, device_id: str, stream_id: str) -> str:
    """``lungwatch/v1/<site>/<device>/<stream>/summary`` (retained)."""
    return event_topic(site, device_id, stream_id)[: -len("event")] + "summary"


def summary_payload(site: str, device_id: str, stream_id: str, summary: dict[str, Any]) -> str:
    """The retained summary message: identity and ``summary``."""
    body = {"schema_version": SCHEMA_VERSION, "site": site, "device_id": device_id}
    body.update(stream_id=check_segment(stream_id, "stream_id"), **summary)
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


verdict_payload = summary_payload  #: the retained verdict message: identity and the verdict


def ack_topic(site: str, device_id: str, stream_id: str) -> str:
    """``lungwatch/v1/<site>/<device>/<stream>/ack``: an acknowledge the device took."""
    return event_topic(site, device_id, stream_id)[: -len("event")] + "ack"


def ack_payload(
    site: str, device_id: str, stream_id: str, target: str, user: str, utc: str, ended: int
) -> str:
    """The message a device publishes for every acknowledge command it took (``user`` ``""``:
    unsigned; ``utc`` the device's clock; ``ended`` the episodes it ended)."""
    body = {"schema_version": SCHEMA_VERSION, "site": site, "device_id": device_id}
    body.update(stream_id=check_segment(stream_id, "stream_id"), target=target, user=user)
    body.update(utc=utc, ended=ended)
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def ack_of(body: dict[str, Any]) -> tuple[str, str, str]:
    """``(target, user, utc)`` of an ack message's parsed body; EventError names what is wrong."""
    target, user, utc = body.get("target"), body.get("user", ""), body.get("utc")
    if not (isinstance(target, str) and 0 < len(target) <= 128 and target.isprintable()):
        raise EventError(f"ack.target must be a condition, type or key (1..128), got {target!r}")
    if not (isinstance(user, str) and len(user) <= 64 and user.isprintable()):
        raise EventError(f"ack.user must be a user name (64 printable characters), got {user!r}")
    parse_utc(utc)  # type: ignore[arg-type]
    return target, user, str(utc)


def metrics_topic(site: str, device_id: str) -> str:
    site, device_id = check_segment(site, "site"), check_segment(device_id, "device_id")
    return f"{TOPIC_ROOT}/{site}/{device_id}/metrics"


# what a device does with acknowledge commands, as its status says (docs/events.md, "Topics")
COMMAND_POLICIES = ("signed", "signed_or_unsigned", "refused")


SHUTDOWN_REASON = "shutdown"  # an offline status's reason where the device stopped cleanly


def status_payload(
    state: str, site: str, device_id: str, reason: str, commands: str | None = None, eui64: str = ""
) -> str:
    if state not in ("online", "offline"):
        raise EventError(f"status.state must be 'online' or 'offline', got {state!r}")
    if commands is not None and commands not in COMMAND_POLICIES:
        raise EventError(f"status.commands must be one of {COMMAND_POLICIES}, got {commands!r}")
    body = {"schema_version": SCHEMA_VERSION, "state": state, "site": site}
    body.update({"device_id": device_id, "utc": utc_now(), "reason": reason})
    if commands is not None:
        body["commands"] = commands
    if eui64:
        body["eui64"] = eui64
    return json.dumps(body, separators=(",", ":"))


@dataclass(frozen=True)
class Status:
    """The status fields its readers use, checked; ``commands`` None where absent or unknown."""

    state: str
    reason: str
    utc: str
    commands: str | None
    eui64: str | None

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> Status:
        """The checked fields; EventError names the first bad one."""
        state, reason, given = body.get("state"), body.get("reason", ""), body.get("eui64")
        _check(state in ("online", "offline"), "state", state, "online or offline", "status")
        _check_reason(reason, "status")
        _parsed_time("utc", body.get("utc"), "status")
        try:
            ok = given is None or (isinstance(given, str) and eui64(given) == given)
        except ValueError:
            ok = False
        _check(ok, "eui64", given, "null or 16 upper-case hex digits", "status")
        commands = body.get("commands")
        commands = commands if commands in COMMAND_POLICIES else None
        return cls(str(state), reason, str(body["utc"]), commands, given)


def feed_health_topic(site: str, gateway: str) -> str:
    """``lungwatch/v1/<site>/gateway/<name>/health`` (retained)."""
    site, gateway = check_segment(site, "site"), check_segment(gateway, "gateway")
    return f"{TOPIC_ROOT}/{site}/gateway/{gateway}/health"


FEED_STATES = ("up", "down")


def feed_health_payload(
    site: str, gateway: str, state: str, reason: str, queues: dict[str, dict[str, Any]],
    storing: bool = True, since_utc: str = "", intake: Mapping[str, int] | None = None,
) -> str:  # fmt: skip
    """A gateway's health (docs/gateway.md, "Health"); ``storing`` False: queue takes no writes;
    ``intake``: the messages it took since it started, by outcome."""
    if state not in FEED_STATES:
        raise EventError(f"health.state must be one of {FEED_STATES}, got {state!r}")
    body = {"schema_version": SCHEMA_VERSION, "site": site, "gateway": gateway, "state": state,
            "utc": utc_now(), "since_utc": since_utc or utc_now(), "reason": reason,
            "storing": storing, "queues": queues}  # fmt: skip
    if intake is not None:
        body["intake"] = dict(sorted(intake.items()))
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def metrics_payload(site: str, device_id: str, stream_id: str, metrics: dict[str, Any]) -> str:
    body = {"schema_version": SCHEMA_VERSION, "site": site, "device_id": device_id}
    body.update({"stream_id": check_segment(stream_id, "stream_id"), "utc": utc_now()})
    body["metrics"] = metrics
    try:
        return json.dumps(body, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise EventError(f"metrics must be JSON numbers/strings, got {metrics!r} ({exc})") from None


@dataclass(frozen=True, kw_only=True)
class Event:
    """One event message (:meth:`onset`, then :meth:`ongoing`, :meth:`ended`); always validated."""

    id: str  # UUID4 of this message, unchanged when it is retried
    episode_id: str  # UUID4 shared by the onset/ongoing/ended messages of one episode
    schema_version: int = SCHEMA_VERSION
    device_id: str
    site: str
    stream_id: str
    type: str
    kind: str  # follows from type
    priority: str
    state: str
    start_utc: str
    end_utc: str | None = None  # None while the episode is open
    start_sample: int | None = None  # index on the stream's timeline
    end_sample: int | None = None  # exclusive; None while open
    confidence: float | None = None  # model probability in [0, 1]; required if physiological
    model_id: str | None = None  # required if physiological
    model_sha256: str | None = None  # 64 lowercase hex digits; required if physiological
    quality: dict[str, float] = field(default_factory=dict)  # QualityMeasures.to_dict()
    detail: dict[str, Any] = field(default_factory=dict)  # JSON-safe extras (technical)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def snomed_ct(self) -> str | None:
        return snomed_ct(self.type)

    @property
    def topic(self) -> str:
        return event_topic(self.site, self.device_id, self.stream_id)

    @classmethod
    def onset(cls, **values: Any) -> Event:
        """Onset of a new episode; unless given: fresh ids, the type's kind, DEFAULT_PRIORITIES."""
        event_type = values.get("type")
        kind = kind_of(event_type) if isinstance(event_type, str) else "technical"
        defaults = {"id": new_id(), "episode_id": new_id(), "kind": kind, "state": "onset"}
        defaults["priority"] = DEFAULT_PRIORITIES.get(str(event_type), "low")
        return cls(**{**defaults, **values})

    def ongoing(self, **changes: Any) -> Event:
        """An update of the same open episode (new id; confidence/quality may change)."""
        return replace(self, id=new_id(), state="ongoing", **changes)

    def ended(self, end_utc: str, end_sample: int | None = None, **changes: Any) -> Event:
        return replace(
            self, id=new_id(), state="ended", end_utc=end_utc, end_sample=end_sample, **changes
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object in schema order (``snomed_ct`` after ``type``), with copied mappings."""
        ordered: dict[str, Any] = {}
        for name in _FIELD_NAMES:  # field by field: dataclasses.asdict deep-copies every value
            ordered[name] = getattr(self, name)
            if name == "type":
                ordered["snomed_ct"] = self.snomed_ct
        ordered["quality"] = dict(self.quality)
        ordered["detail"] = copy.deepcopy(self.detail) if self.detail else {}
        return ordered

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        """EventError names the first bad field."""
        try:
            body = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EventError(f"event is not valid JSON ({exc})") from None
        return cls.from_dict(body)

    @classmethod
    def from_dict(cls, body: object) -> Event:
        """Validate a parsed JSON object (strict: no missing or unknown keys)."""
        if not isinstance(body, dict):
            raise EventError(f"event must be a JSON object, got {type(body).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(body) - set(names) - {"snomed_ct"})
        if unknown:
            raise EventError(f"event has unknown field {unknown[0]!r}")
        for name in [*names, "snomed_ct"]:
            if name not in body:
                raise EventError(f"event.{name} is missing")
        event = cls(**{name: body[name] for name in names})
        if body["snomed_ct"] != event.snomed_ct:
            _fail("snomed_ct", body["snomed_ct"], f"{event.snomed_ct!r} for type {event.type!r}")
        return event


# the detail fields the runtime writes and the ward view reads (indexes, compares, stores):
# each of one JSON type, so no message can hand a reader a list where it expects a name
DETAIL_FIELDS: dict[str, type] = {
    "key": str, "ended_by": str, "acknowledged_by": str,
    "acknowledged_utc": str, "condition_end_utc": str,
    "latched": bool, "restored": bool, "condition_end_sample": int,
}  # fmt: skip
DETAIL_KINDS = {str: "printable text (at most 256 characters)", bool: "true or false",
                int: "an integer"}  # fmt: skip
MAX_DETAIL_TEXT = 256


def new_id() -> str:
    return str(uuid.uuid4())


def _fail(name: str, value: object, allowed: str, of: str = "event") -> NoReturn:
    raise EventError(f"{of}.{name} must be {allowed}, got {value!r}")


def _check(ok: bool, name: str, value: object, allowed: str, of: str = "event") -> None:
    if not ok:
        _fail(name, value, allowed, of)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[int | float]:
    """A finite int or float, not a bool: what a number field of a message may hold."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_uuid4(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return str(parsed) == value and parsed.version == 4


_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Event))


def _validate(e: Event) -> None:
    _check(_is_uuid4(e.id), "id", e.id, "a UUID4 string (lowercase, hyphenated)")
    _check(_is_uuid4(e.episode_id), "episode_id", e.episode_id, "a UUID4 string")
    version = e.schema_version
    _check(is_int(version) and version == SCHEMA_VERSION, "schema_version", version, "1")
    for name in ("device_id", "site", "stream_id"):
        check_segment(getattr(e, name), f"event.{name}")
    kind = kind_of(e.type)
    _check(e.kind == kind, "kind", e.kind, f"{kind!r} for type {e.type!r}")
    _check(e.priority in PRIORITIES, "priority", e.priority, "one of high, medium, low")
    _check(e.state in STATES, "state", e.state, "one of onset, ongoing, ended")
    _validate_span(e)
    _validate_model(e)
    _validate_mappings(e)


def _validate_span(e: Event) -> None:
    start = _parsed_time("start_utc", e.start_utc)
    if e.state == "ended":
        end = _parsed_time("end_utc", e.end_utc)
        _check(end >= start, "end_utc", e.end_utc, f"at or after start_utc {e.start_utc}")
    else:
        _check(e.end_utc is None, "end_utc", e.end_utc, f"null while the state is {e.state!r}")
        _check(e.end_sample is None, "end_sample", e.end_sample, "null while the episode is open")
    start_ok = e.start_sample is None or (is_int(e.start_sample) and e.start_sample >= 0)
    _check(start_ok, "start_sample", e.start_sample, "null or an integer >= 0")
    if e.start_sample is None:
        _check(e.end_sample is None, "end_sample", e.end_sample, "null when start_sample is")
    elif e.state == "ended":
        end_ok = is_int(e.end_sample) and e.end_sample >= e.start_sample  # type: ignore[operator]
        allowed = f"an integer >= start_sample {e.start_sample}"
        _check(end_ok, "end_sample", e.end_sample, allowed)


def _check_reason(reason: object, of: str) -> None:
    ok = isinstance(reason, str) and len(reason) <= MAX_REASON_CHARS
    _check(ok, "reason", reason, f"text of at most {MAX_REASON_CHARS} characters", of)


def _parsed_time(name: str, value: object, of: str = "event") -> datetime:
    try:
        return parse_utc(value)  # type: ignore[arg-type]
    except EventError:
        _fail(name, value, "UTC ISO-8601 ending in Z (2026-05-09T07:35:25.123Z)", of)


def _validate_model(e: Event) -> None:
    needed = e.kind in ("physiological", "finding")
    or_null = "" if needed else " or null"
    conf_ok = (e.confidence is None and not needed) or (
        is_number(e.confidence) and 0.0 <= e.confidence <= 1.0
    )
    _check(conf_ok, "confidence", e.confidence, "a number in [0, 1]" + or_null)
    model_id: object = e.model_id
    named = isinstance(model_id, str) and 0 < len(model_id) <= MAX_DETAIL_TEXT
    id_ok = (model_id is None and not needed) or (named and str(model_id).isprintable())
    what = f"printable text of 1..{MAX_DETAIL_TEXT} characters{or_null}"
    _check(bool(id_ok), "model_id", e.model_id, what)
    sha = e.model_sha256
    sha_ok = (sha is None and not needed) or (isinstance(sha, str) and _SHA256_RE.match(sha))
    _check(bool(sha_ok), "model_sha256", sha, "64 lowercase hex digits" + or_null)


def _validate_mappings(e: Event) -> None:
    _check(isinstance(e.quality, dict), "quality", e.quality, "an object of numbers")
    for key, value in e.quality.items():
        named = isinstance(key, str) and key.isprintable() and len(key) <= MAX_DETAIL_TEXT
        where = f"quality.{key}" if named else f"quality.{key!r}"
        _check(named and is_number(value), where, value, "a number")
    _check(isinstance(e.detail, dict), "detail", e.detail, "an object")
    try:
        json.dumps(e.detail, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError):  # UnicodeEncodeError (a lone surrogate) is a ValueError
        _fail("detail", e.detail, "JSON-safe (strings of valid Unicode, finite numbers, ...)")
    for name, kind in DETAIL_FIELDS.items():
        given: object = e.detail.get(name)
        if given is None:
            continue
        ok = isinstance(given, kind) and (kind is not int or is_int(given))
        if isinstance(given, str):
            ok = ok and len(given) <= MAX_DETAIL_TEXT and given.isprintable()
        _check(ok, f"detail.{name}", given, DETAIL_KINDS[kind])
