"""Each device's and bed's records and what a bed card shows (state, events, verdict,
breathing). Plain data and pure functions; the ward's lock guards them."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from lungwatch.alarms import PRIORITY_RANK, STATE_RANK
from lungwatch.events import FINDING_RATE_KEYS, Event, is_number
from lungwatch.labels import FAMILY, SOUND_CLASSES

# the sounds' card states, their classes' most urgent first (stridor, wheezes, ...)
_BY_PRIORITY = sorted(SOUND_CLASSES, key=lambda c: PRIORITY_RANK[c.priority or "low"])
FINDING_CARDS = tuple(dict.fromkeys(c.card for c in _BY_PRIORITY if c.card))
STATE_TEXT = {  # bed states, most important first; a bed shows the first that holds
    "offline": "offline",
    "stale": "no data from the device",
    "apnoea": "apnoea",
    "technical": "technical condition",
    **{card: card for card in FINDING_CARDS},  # the sounds' (lungwatch.labels)
    "tachypnoea": "breathing fast",
    "bradypnoea": "breathing slow",
    "normal": "breathing normal",
}
# a sound's card state, and a finding episode's (edge.bed.findings): its family's
CARD_OF_TYPE = {**{c.name: c.card for c in SOUND_CLASSES if c.card},
                **{f.name: f.card for f in FAMILY.values()}}  # fmt: skip
# the page's sound classes: live-strip colour, and the name an alarm row adds (`` · stridor``)
PAGE_CLASSES = {
    c.name: {"colour": c.colour, "named": c.card if c.card != CARD_OF_TYPE[c.families[0]] else None}
    for c in SOUND_CLASSES
    if c.colour and c.families
}
RATE_TREND_POINTS = 720  # a bed's rate trend: two hours at the runtime's 10-s publishing
READ_WAIT_BEHIND_MS = 500.0  # the runtime's read_wait_warn_ms default (docs/runtime.md, "Load")
# a breathing message's fields a card shows (and the history keeps)
RESPIRATION_FIELDS = ("state", "rate_bpm", "confidence", "breaths", "age_band", "low_bpm",
                      "high_bpm", "reason", "utc", "last_breath_utc",
                      *FINDING_RATE_KEYS)  # fmt: skip


@dataclass
class Bed:
    """One stream of one device."""

    device_id: str
    stream_id: str
    events: deque[dict[str, Any]]  # newest first
    live: deque[dict[str, Any]]  # oldest first
    open: dict[str, Event] = field(default_factory=dict)  # episode_id -> last message
    read_wait_ms_p99: float | None = None  # its last metrics report's (None: not measured)
    verdict: dict[str, Any] | None = None  # its rolling verdict: label, since (utc), window_s
    respiration: dict[str, Any] | None = None  # its last breathing reading (rate, state, ...)
    # its rate over time, oldest first: {"utc", "rate_bpm" (None: not assessed), "state"}
    rate_trend: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=RATE_TREND_POINTS)
    )
    name: str | None = None  # its display name and location (its device's summary)
    location: str | None = None
    # the open alarms its device's summary lists (episode_id -> alarm row; Ward._summary)
    summary_open: dict[str, dict[str, Any]] = field(default_factory=dict)
    # open episodes restored from the history, not heard of since (Ward._summary)
    restored: set[str] = field(default_factory=set)


@dataclass
class Device:
    device_id: str
    online: bool | None = None  # None: no status seen yet
    reason: str | None = None
    status_utc: str | None = None
    commands: str | None = None  # what it takes: lungwatch.events.COMMAND_POLICIES (None: unsaid)
    spooled: int | None = None  # the MQTT spool's depth (metrics.mqtt_spooled)
    metrics_utc: str | None = None
    read_wait_limit_ms: float = READ_WAIT_BEHIND_MS  # its read_wait_warn_ms, where it says
    beds: dict[str, Bed] = field(default_factory=dict)
    seen_s: float | None = None  # the ward's monotonic clock at its last valid message
    silent: bool = False  # not offline, yet nothing valid for stale_after_s


def read_wait_view(device: Device) -> dict[str, Any]:
    """The worst bed's read wait (p99); ``behind``: over the device's limit (alarms come late)."""
    known = [
        (b.read_wait_ms_p99, b.stream_id)
        for b in device.beds.values()
        if b.read_wait_ms_p99 is not None
    ]
    if not known:
        return {"read_wait_ms": None, "read_wait_bed": None, "behind": False}
    worst_ms, worst_bed = max(known)
    return {"read_wait_ms": worst_ms, "read_wait_bed": worst_bed,
            "behind": worst_ms > device.read_wait_limit_ms}  # fmt: skip


def bed_state(
    online: bool | None,
    rows: list[dict[str, Any]],
    silent: bool = False,
    respiration: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Drawn from the bed's alarm-list rows, so the card never contradicts the list."""
    if online is False:
        return {"key": "offline", "text": STATE_TEXT["offline"]}
    if silent:
        return {"key": "stale", "text": STATE_TEXT["stale"]}
    listed = [r for r in rows if r["state"] != "ended"]
    if not listed:
        return _no_alarm(respiration)
    row = min(listed, key=_severity)  # the first of the most severe in the list's order
    key = _state_key(row)
    if row["kind"] == "technical":
        text = f"{STATE_TEXT['technical']}: {row['text']}"
    elif row["kind"] == "verdict":
        text = str(row["text"])
    else:
        text = STATE_TEXT[key] if key in CARD_FINDINGS else str(row["text"])
    if row["state"] == "alarming":
        text += f" · {row['priority']} alarm"
    elif row["state"] == "acknowledged":
        text += " · acknowledged"
    if row.get("latched"):
        text += " (latched)"
    if len(listed) > 1:
        text += f" (+{len(listed) - 1} more)"
    return {"key": key, "text": text}


def _severity(row: dict[str, Any]) -> tuple[int, bool, int]:
    """Most severe first: an acknowledged apnoea that goes on outranks an alarming crackle."""
    return (PRIORITY_RANK[row["priority"]], not row.get("life_threatening"),
            STATE_RANK[row["state"]])  # fmt: skip


def _no_alarm(respiration: dict[str, Any] | None) -> dict[str, str]:
    reading = respiration or {}
    if reading.get("state") == "apnoea":  # the reading before (or without) its alarm
        return {"key": "apnoea", "text": "apnoea (breathing reading; no alarm listed)"}
    if reading.get("state") == "signal_lost":
        return {"key": "technical", "text": "breath signal lost (breathing reading)"}
    if reading.get("state") in ("assessing", "not_assessable"):
        return {"key": "normal", "text": "no alarm · rate not assessed"}
    values = [reading.get(k) for k in ("rate_bpm", "low_bpm", "high_bpm")]
    if reading.get("state") == "ok" and all(is_number(v) for v in values):
        rate, low, high = (float(v) for v in values if v is not None)
        if not low <= rate <= high:
            name = STATE_TEXT["tachypnoea" if rate > high else "bradypnoea"]
            return {"key": "normal", "text": f"no alarm · {name} ({rate:.0f}/min)"}
    return {"key": "normal", "text": STATE_TEXT["normal"]}


# what a card shows of a finding's condition by the type of its newest episode
CARD_FINDINGS = ("apnoea", *FINDING_CARDS, "tachypnoea", "bradypnoea")


def _state_key(row: dict[str, Any]) -> str:
    """The card's colour for a condition row (a :data:`STATE_TEXT` key)."""
    if row["kind"] == "technical":
        return "technical"
    if row["kind"] == "verdict":
        return VERDICT_STATE.get(str(row["text"]).removeprefix("verdict "), "technical")
    condition = row["condition"]
    if condition in STATE_TEXT:
        return str(condition)
    return CARD_OF_TYPE.get(row.get("last_type") or "", CARD_OF_TYPE.get(condition, "wheezes"))


# a rolling verdict listed as an alarm (dashboard.alarm_verdicts): the colour of its row's card
VERDICT_STATE = {**{f.name: f.card for f in FAMILY.values()}, "CAS & DAS": FAMILY["CAS"].card,
                 "Poor Quality": "technical"}  # fmt: skip


def event_row(event: Event, received_s: float) -> dict[str, Any]:
    detail = event.detail
    shown = ("id", "episode_id", "type", "kind", "priority", "state", "start_utc", "end_utc")
    return {
        **{name: getattr(event, name) for name in shown},
        "confidence": event.confidence,
        "key": detail.get("key", event.type),
        "latched": bool(detail.get("latched")),
        "ended_by": detail.get("ended_by"),
        "acknowledged_utc": detail.get("acknowledged_utc"),
        "received_s": round(received_s, 3),
    }


def verdict_view(body: dict[str, Any]) -> dict[str, Any]:
    """What a bed card shows of a (checked) verdict message."""
    window = body.get("window_s")
    return {"label": body["verdict"], "since_utc": str(body.get("utc")),
            "window_s": float(window) if is_number(window) else None}  # fmt: skip


def show_respiration(bed: Bed, body: dict[str, Any]) -> bool:
    """A checked breathing message; whether the trend got a point (not for a retained repeat)."""
    shown = {key: body.get(key) for key in RESPIRATION_FIELDS}
    bed.respiration = {k: v for k, v in shown.items()
                       if isinstance(v, str | int | float) or v is None}  # fmt: skip
    utc = str(body.get("utc"))
    if bed.rate_trend and bed.rate_trend[-1]["utc"] == utc:
        return False
    bed.rate_trend.append({"utc": utc, "rate_bpm": body.get("rate_bpm"),
                           "state": body.get("state"),
                           **{k: bed.respiration.get(k) for k in FINDING_RATE_KEYS}})  # fmt: skip
    return True
