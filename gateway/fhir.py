"""FHIR R4 Observations of a bed's breathing and findings, and the courier's HTTP transport
(docs/gateway.md, "FHIR R4"). Each resource is validated with fhir.resources (R4B models, whose
Observation is R4's) as it is built, and sent as a conditional update on its one identifier,
so a retry after a lost reply never makes a second resource."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from fhir.resources.R4B.observation import Observation
from pydantic import ValidationError

from gateway.hl7 import Bed, range_flag
from gateway.outbox import REFUSED, RETRY, SENT, Queued
from lungwatch.errors import LungwatchError
from lungwatch.labels import display_name

IDENTIFIER_SYSTEM = "urn:lungwatch:observation"
LOCAL_SYSTEM = "urn:lungwatch:code"
SNOMED, LOINC, UCUM = "http://snomed.info/sct", "http://loinc.org", "http://unitsofmeasure.org"
MDC = "urn:iso:std:iso:11073:10101"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
# why a reading has no rate (FHIR's data-absent-reason codes)
ABSENT_REASON = {"assessing": "temp-unknown", "not_assessable": "unknown", "apnoea": "as-text",
                 "signal_lost": "error"}  # fmt: skip
PRESENT = {"system": SNOMED, "code": "52101004", "display": "Present"}
RESP_RATE_PROFILE = "http://hl7.org/fhir/StructureDefinition/resprate"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
INTERPRETATION_TEXT = {"H": "High", "L": "Low", "N": "Normal"}
MAX_REPLY_BYTES = 1 << 16
RETRIED_STATUS = (408, 425, 429)  # and every 5xx: the server may take it later


class FhirError(LungwatchError):
    """A resource could not be built."""


def rate_observation(
    reading: Mapping[str, Any], bed: Bed, key: str, patient_system: str = ""
) -> str:
    body = _base(bed, key, "vital-signs", "final", patient_system)
    body["meta"] = {"profile": [RESP_RATE_PROFILE]}
    body["code"] = {"coding": [{"system": LOINC, "code": "9279-1", "display": "Respiratory rate"},
                               {"system": MDC, "code": "151562", "display": "MDC_RESP_RATE"}],
                    "text": "Respiratory rate"}  # fmt: skip
    body["effectiveDateTime"] = _instant(reading.get("utc"))
    state = str(reading.get("state", ""))
    if state == "ok":
        body["valueQuantity"] = _per_min(reading.get("rate_bpm"))
        low, high = reading.get("low_bpm"), reading.get("high_bpm")
        if low is not None and high is not None:
            body["referenceRange"] = [{"low": _per_min(low), "high": _per_min(high),
                                       "text": "the age band's normal range"}]  # fmt: skip
            flag = range_flag(body["valueQuantity"]["value"], low, high)
            coding = {"system": INTERPRETATION, "code": flag, "display": INTERPRETATION_TEXT[flag]}
            body["interpretation"] = [{"coding": [coding]}]
    else:
        reason = ABSENT_REASON.get(state, "unknown")
        body["dataAbsentReason"] = {"coding": [{"system": ABSENT, "code": reason}]}
        text = str(reading.get("reason") or "")
        body["note"].append({"text": f"state {state}" + (f": {text}" if text else "")})
    return _checked(body)


def finding_observation(
    event: Mapping[str, Any], bed: Bed, key: str, patient_system: str = ""
) -> str:
    """The Observation of one episode (``key``: its own): preliminary until it ends."""
    ended = event.get("state") == "ended"
    kind = str(event.get("type", ""))
    body = _base(bed, key, "exam", "final" if ended else "preliminary", patient_system)
    code = event.get("snomed_ct")
    if event.get("kind") == "technical":
        body["code"] = {"coding": [{"system": LOCAL_SYSTEM, "code": "signal-quality",
                                    "display": "Signal quality"}]}  # fmt: skip
        body["valueCodeableConcept"] = {"coding": [{"system": LOCAL_SYSTEM, "code": kind}],
                                        "text": kind}  # fmt: skip
    else:
        text = display_name(kind)
        coding = {"system": SNOMED, "code": str(code), "display": text} if code else {
            "system": LOCAL_SYSTEM, "code": kind}  # fmt: skip
        body["code"] = {"coding": [coding], "text": text}
        body["valueCodeableConcept"] = {"coding": [PRESENT]}
    period = {"start": _instant(event.get("start_utc"))}
    if ended and event.get("end_utc"):
        period["end"] = _instant(event.get("end_utc"))
    body["effectivePeriod"] = period
    return _checked(body)


def identifier_of(resource_text: str) -> str:
    """``system|value`` of a queued resource's identifier (the conditional update's search)."""
    found = json.loads(resource_text)["identifier"][0]
    return f"{found['system']}|{found['value']}"


class FhirTransport:
    def __init__(self, base_url: str, timeout_s: float = 10.0, token: str | None = None) -> None:
        self.base_url, self.timeout_s = base_url.rstrip("/"), timeout_s
        json_type = "application/fhir+json"
        self._headers = {"Content-Type": f"{json_type}; charset=utf-8", "Accept": json_type}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    def deliver(self, row: Queued) -> tuple[str, str]:
        search = urllib.parse.urlencode({"identifier": identifier_of(row.message)})
        request = urllib.request.Request(
            f"{self.base_url}/Observation?{search}", data=row.message.encode("utf-8"),
            method="PUT", headers=self._headers,
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                status = reply.status
                reply.read(MAX_REPLY_BYTES)
        except urllib.error.HTTPError as exc:
            said = exc.read(MAX_REPLY_BYTES).decode("utf-8", "replace")[:200]
            why = f"HTTP {exc.code} {said}".strip()
            return (RETRY if exc.code in RETRIED_STATUS or exc.code >= 500 else REFUSED), why
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections
            return RETRY, f"FHIR {self.base_url}: {getattr(exc, 'reason', exc)}"
        if status in (200, 201):
            return SENT, ""
        return REFUSED, f"HTTP {status}"

    def close(self) -> None:
        pass  # urllib opens a connection per request


def _base(
    bed: Bed, key: str, category: str, status: str, patient_system: str = ""
) -> dict[str, Any]:
    device = "/".join(n for n in (bed.site, bed.device_id, bed.stream_id) if n)
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": key}],
        "status": status,
        "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
        "device": {"identifier": {"system": "urn:lungwatch:bed", "value": device}},
        "note": [],
    }
    if bed.patient_id:
        pid = bed.patient_id.split("^")
        authority = pid[3] if len(pid) > 3 else ""
        system = patient_system or f"urn:lungwatch:patient:{authority or 'local'}"
        subject: dict[str, Any] = {"system": system, "value": pid[0]}
        if authority:
            subject["assigner"] = {"display": authority}
        body["subject"] = {"identifier": subject}
    if bed.location:
        body["note"].append({"text": f"location {bed.location.replace('^', ' ').strip()}"})
    return body


def _per_min(value: object) -> dict[str, Any]:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise FhirError(f"not a rate: {value!r}")
    return {"value": round(float(value), 1), "unit": "/min", "system": UCUM, "code": "/min"}


def _instant(text: object) -> str:
    if not isinstance(text, str) or not text:
        raise FhirError(f"not a time: {text!r}")
    return text


def _checked(body: dict[str, Any]) -> str:
    if not body["note"]:
        del body["note"]
    try:
        resource = Observation.model_validate(body)
    except ValidationError as exc:
        raise FhirError(f"FHIR Observation: {exc.errors()[0]['msg']} at "
                        f"{'.'.join(map(str, exc.errors()[0]['loc']))}") from None  # fmt: skip
    return str(resource.model_dump_json(exclude_none=True))
