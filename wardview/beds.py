"""The ward's live picture of each device and bed (what :class:`wardview.ward.Ward`
keeps and :mod:`wardview.memory` restores): the :class:`Bed` and :class:`Device`
records, a bed's state, and what a bed card shows of an event, a verdict and a breathing
reading. Plain data and pure functions; the ward's lock guards them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from lungwatch.alarms import PRIORITY_RANK
from lungwatch.events import Event, is_number

# bed states, most important first; a bed shows the first that holds
STATE_TEXT = {
    "offline": "offline",
    "stale": "no data from the device",
    "apnoea": "apnoea",
    "technical": "technical condition",
    "stridor": "stridor",
    "wheezes": "wheezes",
    "rhonchi": "rhonchi",
    "crackles": "crackles",
    "tachypnoea": "breathing fast",
    "bradypnoea": "breathing slow",
    "normal": "breathing normal",
}
CONDITION_OF_TYPE = {
    "Stridor": ("stridor",),
    "Wheeze": ("wheezes",),
    "Wheeze+Crackle": ("wheezes", "crackles"),
    "Rhonchi": ("rhonchi",),
    "Fine Crackle": ("crackles",),
    "Coarse Crackle": ("crackles",),
    "tachypnoea": ("tachypnoea",),
    "bradypnoea": ("bradypnoea",),
}
RATE_TREND_POINTS = 720  # a bed's rate trend: two hours at the runtime's 10-s publishing
# a device is shown behind when a bed's audio waited longer than the device's own limit for
# its read (p99 of its last metrics report, ``read_wait_warn_ms`` beside it); this one where
# the device gives none (an older runtime, or its check turned off): the runtime's default
# read_wait_warn_ms (docs/runtime.md, "Load")
READ_WAIT_BEHIND_MS = 500.0


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
    # the open alarms its device's summary lists (episode_id -> alarm row; wardview.memory)
    summary_open: dict[str, dict[str, Any]] = field(default_factory=dict)
    # open episodes restored from the history and not heard of since: the device's next
    # summary says whether it still holds them (wardview.memory)
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
    """The device's worst bed by read wait (p99 of each bed's last report): ``read_wait_ms``
    and ``read_wait_bed`` (None when no bed measures it), ``behind`` when it is over the
    device's limit (its ``read_wait_warn_ms``, else :data:`READ_WAIT_BEHIND_MS`): the device is
    near its limit and its alarms come late."""
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
    open_events: list[Event],
    silent: bool = False,
    respiration: dict[str, Any] | None = None,
    verdict: dict[str, Any] | None = None,
) -> dict[str, str]:
    """The bed's state at a glance: ``{"key": ..., "text": ...}`` (key in :data:`STATE_TEXT`),
    derived here alone from everything the bed reports, so no label on its card contradicts
    another.

    Offline beats everything; then a silent device (no data: what the page showed may no
    longer hold); then an apnoea (an open episode, or the breathing reading's state); then a
    technical condition (an open one, or a lost breath signal: monitoring is impaired,
    findings are suppressed); then the findings, most important first; then a rate out of
    the age band's range (the reading, before its alarm's minute has passed); then the
    rolling verdict when it holds findings no episode shows now; else breathing normal.
    """
    if online is False:
        return {"key": "offline", "text": STATE_TEXT["offline"]}
    if silent:
        return {"key": "stale", "text": STATE_TEXT["stale"]}
    apnoea = [e for e in open_events if e.type == "apnoea"]
    if apnoea:
        latched = all(e.detail.get("latched") for e in apnoea)
        return {"key": "apnoea", "text": STATE_TEXT["apnoea"] + (" (latched)" if latched else "")}
    breathing = (respiration or {}).get("state")
    if breathing == "apnoea":
        return {"key": "apnoea", "text": STATE_TEXT["apnoea"]}
    technical = sorted((e for e in open_events if e.kind == "technical"),
                       key=lambda e: (PRIORITY_RANK[e.priority], e.start_utc))  # fmt: skip
    if technical:
        names = ", ".join(dict.fromkeys(e.type.replace("_", " ") for e in technical))
        return {"key": "technical", "text": f"{STATE_TEXT['technical']}: {names}"}
    if breathing == "signal_lost":
        return {"key": "technical", "text": f"{STATE_TEXT['technical']}: breath signal lost"}
    found = {c for e in open_events for c in CONDITION_OF_TYPE.get(e.type, ())}
    keys = [k for k in STATE_TEXT if k in found]
    if keys:
        latched = all(e.detail.get("latched") for e in open_events)
        text = " + ".join(STATE_TEXT[k] for k in keys) + (" (latched)" if latched else "")
        return {"key": keys[0], "text": text}
    out_of_range = _rate_out_of_range(respiration)
    if out_of_range is not None:
        return out_of_range
    label = (verdict or {}).get("label")
    if label in VERDICT_STATE:
        key = VERDICT_STATE[label]
        return {"key": key, "text": f"verdict {label} (no episode now)"}
    return {"key": "normal", "text": STATE_TEXT["normal"]}


# a rolling verdict that holds findings: the state it shows when no episode is open
VERDICT_STATE = {"CAS": "wheezes", "DAS": "crackles", "CAS & DAS": "wheezes",
                 "Poor Quality": "technical"}  # fmt: skip


def _rate_out_of_range(respiration: dict[str, Any] | None) -> dict[str, str] | None:
    """Breathing fast or slow by the last reading's rate against its age band's range."""
    if not respiration or respiration.get("state") != "ok":
        return None
    values = [respiration.get(k) for k in ("rate_bpm", "low_bpm", "high_bpm")]
    if not all(is_number(v) for v in values):
        return None
    rate, low, high = (float(v) for v in values if v is not None)
    if rate > high:
        return {"key": "tachypnoea", "text": f"{STATE_TEXT['tachypnoea']} ({rate:.0f}/min)"}
    if rate < low:
        return {"key": "bradypnoea", "text": f"{STATE_TEXT['bradypnoea']} ({rate:.0f}/min)"}
    return None


def event_row(event: Event, received_s: float) -> dict[str, Any]:
    """What the page shows of one event message."""
    detail = event.detail
    return {
        "id": event.id,
        "episode_id": event.episode_id,
        "type": event.type,
        "kind": event.kind,
        "priority": event.priority,
        "state": event.state,
        "start_utc": event.start_utc,
        "end_utc": event.end_utc,
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


def show_respiration(bed: Bed, body: dict[str, Any]) -> None:
    """A (checked) breathing message on ``bed``: its last reading and a point of its trend."""
    shown = {key: body.get(key) for key in ("state", "rate_bpm", "confidence", "breaths",
                                             "age_band", "low_bpm", "high_bpm", "reason",
                                             "utc", "last_breath_utc")}  # fmt: skip
    bed.respiration = {k: v for k, v in shown.items()
                       if isinstance(v, str | int | float) or v is None}  # fmt: skip
    bed.rate_trend.append({"utc": str(body.get("utc")), "rate_bpm": body.get("rate_bpm"),
                           "state": body.get("state")})  # fmt: skip
