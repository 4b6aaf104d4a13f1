"""The IHE PCD rules the gateway's messages are checked against in the tests, read with
python-hl7 (a parser independent of the gateway's own code): what an IHE PCD integration team
checks first (docs/gateway.md's conformance statement says the same, segment by segment).

    problems(text)       # [] for a conformant PCD-01 or PCD-04 message, else what is wrong
    parsed(text)         # the python-hl7 message, after asserting there are no problems
"""

from __future__ import annotations

import re

import hl7

PROFILES = {
    "ORU^R01^ORU_R01": "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO",
    "ORU^R40^ORU_R40": "IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.4.1^ISO",
}
DEVICE_ROWS = [("69837", "1.0.0.0"), ("69722", "1.1.0.0"), ("69723", "1.1.1.0")]
FACETS = ["", "", "68481", "68482", "68483"]  # facet 1 and 2: the event and its source
PHASES = {"start", "update", "escalate", "de-escalate", "end", "continue", "tpoint"}
ALARM_STATES = {"active", "latched", "inactive"}
INACTIVATION = {"enabled", "alert-acknowledged", "audio-paused", "alarm-paused"}
EUI64 = re.compile(r"[0-9A-F]{16}")
DTM = re.compile(r"\d{14}(\.\d{1,4})?[+-]\d{4}")


def _f(segment: hl7.Segment, n: int) -> str:
    """Field ``n`` of a segment as ER7 text ("" where absent)."""
    return str(segment[n]) if len(segment) > n else ""


def _msh(segment: hl7.Segment, n: int) -> str:
    """MSH-n (python-hl7 counts MSH-1, the field separator, as field 1 too)."""
    return _f(segment, n)


def problems(text: str, equipment: bool = True) -> list[str]:
    """What in ``text`` breaks the rules (``equipment``: the gateway's and the device's EUI-64
    are known and must be in MSH-3 and OBX-18)."""
    found: list[str] = []
    if not text.endswith("\r"):
        found.append("the last segment is not ended by a carriage return")
    try:
        msg = hl7.parse(text)
    except Exception as exc:  # python-hl7 refused it outright
        return [f"python-hl7 cannot parse it: {exc}"]
    msh = msg.segment("MSH")
    kind = _msh(msh, 9)
    if kind not in PROFILES:
        return [f"MSH-9 {kind!r} is neither PCD-01 nor PCD-04"]
    expect = {12: "2.6", 15: "AL", 16: "NE", 18: "UNICODE UTF-8", 21: PROFILES[kind]}
    for n, value in expect.items():
        if _msh(msh, n) != value:
            found.append(f"MSH-{n} is {_msh(msh, n)!r}, not {value!r}")
    app = _msh(msh, 3).split("^")
    if equipment and (len(app) != 3 or not EUI64.fullmatch(app[1]) or app[2] != "EUI-64"):
        found.append(f"MSH-3 {_msh(msh, 3)!r} is not application^EUI-64^EUI-64")
    if not DTM.fullmatch(_msh(msh, 7)):
        found.append(f"MSH-7 {_msh(msh, 7)!r} is not a time with its zone")
    if not _msh(msh, 10):
        found.append("MSH-10 is empty")
    if not _f(msg.segment("PID"), 3):
        found.append("PID-3 is empty")
    obr = msg.segment("OBR")
    obxs = list(msg.segments("OBX"))
    subs = [_f(o, 4) for o in obxs]
    if len(set(subs)) != len(subs):
        found.append(f"OBX-4 sub-ids repeat: {subs}")
    for o in obxs:
        when = _f(o, 14)
        if when and not DTM.fullmatch(when):
            found.append(f"OBX-14 {when!r} is not a time with its zone")
    if kind.startswith("ORU^R01"):
        found += _pcd01(obr, obxs, equipment)
    else:
        found += _pcd04(obr, obxs, equipment)
    return found


def _pcd01(obr: hl7.Segment, obxs: list[hl7.Segment], equipment: bool) -> list[str]:
    found = []
    if _f(obr, 4).split("^")[0] != "182777000":
        found.append(f"OBR-4 {_f(obr, 4)!r} is not the monitoring order")
    if len(obxs) < 4:
        return [*found, f"{len(obxs)} OBX rows: the device rows and a metric at least"]
    for obx, (code, sub) in zip(obxs[:3], DEVICE_ROWS, strict=True):
        if _f(obx, 3).split("^")[0] != code or _f(obx, 4) != sub or _f(obx, 11) != "X":
            found.append(f"device row {str(obx)!r} is not {code} at {sub} with status X")
        if _f(obx, 2) or _f(obx, 5):
            found.append(f"device row {str(obx)!r} carries a value")
    mds_equipment = _f(obxs[0], 18).split("^")
    if equipment and (len(mds_equipment) != 4 or not EUI64.fullmatch(mds_equipment[2])
                      or mds_equipment[3] != "EUI-64"):  # fmt: skip
        found.append(f"MDS OBX-18 {_f(obxs[0], 18)!r} has no EUI-64")
    for obx in obxs[3:]:
        sub = _f(obx, 4)
        if not re.fullmatch(r"1\.1\.1\.[1-9]\d*", sub):
            found.append(f"metric OBX-4 {sub!r} is not under the channel 1.1.1")
        if _f(obx, 11) != "R":
            found.append(f"metric {_f(obx, 3)!r}: OBX-11 {_f(obx, 11)!r}, device data is R")
        found += _range_flag(obx)
    return found


def _range_flag(obx: hl7.Segment) -> list[str]:
    """OBX-8 of a numeric with a range: H above, L below, N within."""
    limits = _f(obx, 7)
    if _f(obx, 2) != "NM" or not re.fullmatch(r"[\d.]+-[\d.]+", limits):
        return []
    low, high = (float(x) for x in limits.split("-"))
    value = float(_f(obx, 5))
    flag = "H" if value > high else "L" if value < low else "N"
    if _f(obx, 8).split("~")[0] != flag:
        return [f"{_f(obx, 3)!r} {value} against {limits}: OBX-8 {_f(obx, 8)!r}, not {flag}"]
    return []


def _pcd04(obr: hl7.Segment, obxs: list[hl7.Segment], equipment: bool) -> list[str]:
    found = []
    if _f(obr, 4).split("^")[0] != "196616":
        found.append(f"OBR-4 {_f(obr, 4)!r} is not MDC_EVT_ALARM")
    if not _f(obr, 3):
        found.append("OBR-3 (the alert's id) is empty")
    if len(obxs) != 5:
        return [*found, f"{len(obxs)} facets, not 5"]
    base = _f(obxs[0], 4).rsplit(".", 1)[0]
    for n, (obx, code) in enumerate(zip(obxs, FACETS, strict=True), 1):
        if _f(obx, 4) != f"{base}.{n}":
            found.append(f"facet {n}: OBX-4 {_f(obx, 4)!r}, not {base}.{n}")
        if code and _f(obx, 3).split("^")[0] != code:
            found.append(f"facet {n}: OBX-3 {_f(obx, 3)!r}, not {code}")
        if _f(obx, 11) != "R":
            found.append(f"facet {n}: OBX-11 {_f(obx, 11)!r}, device data is R")
    flags = set(_f(obxs[0], 8).split("~"))
    if len(flags & {"PH", "PM", "PL"}) != 1 or len(flags & {"SP", "ST"}) != 1:
        found.append(f"facet 1: OBX-8 {_f(obxs[0], 8)!r} lacks one priority and one source")
    for obx in obxs[1:]:
        if set(_f(obx, 8).split("~")) & {"PH", "PM", "PL", "SP", "ST"}:
            found.append(f"OBX-8 {_f(obx, 8)!r} repeats the priority or source after facet 1")
    found += _range_flag(obxs[1])
    for obx, allowed in zip(obxs[2:], (PHASES, ALARM_STATES, INACTIVATION), strict=True):
        if _f(obx, 5) not in allowed:
            found.append(f"{_f(obx, 3)!r} value {_f(obx, 5)!r} is not one of {sorted(allowed)}")
    where = _f(obxs[0], 18).split("^")
    if equipment and (len(where) != 4 or where[3] != "EUI-64"):
        found.append(f"facet 1 OBX-18 {_f(obxs[0], 18)!r} has no EUI-64")
    return found


def parsed(text: str, equipment: bool = True) -> hl7.Message:
    """``text`` read by python-hl7, asserting it breaks no rule."""
    wrong = problems(text, equipment)
    assert not wrong, "\n".join(wrong) + "\n" + text.replace("\r", "\n")
    return hl7.parse(text)


def field(msg: hl7.Message, segment: str, n: int, which: int = 0) -> str:
    """Field ``n`` of the ``which``-th segment named ``segment``, as ER7 text."""
    return _f(list(msg.segments(segment))[which], n)
