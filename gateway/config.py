"""The gateway's configuration file (YAML; every key in docs/gateway.md, "Configuration"):
``hl7``, ``fhir`` or both, each with its own queue. Errors name the file and the key."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import Field, NonNegativeFloat

from gateway.hl7 import Bed, Sender, plain
from gateway.outbox import CourierConfig
from lungwatch.alarms import AlarmSettings
from lungwatch.config import Settings, check, read_secret_line
from lungwatch.equipment import eui64, host_eui64
from lungwatch.events import is_segment
from lungwatch.hosts import is_loopback
from lungwatch.mqtt import MqttConfig

PROCESSING_IDS = ("P", "T", "D")


@dataclass(frozen=True)
class Hl7Config(Settings):
    host: str
    port: Annotated[int, Field(gt=0, lt=65536)] = 2575
    sending_application: str = "LUNGWATCH"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    processing_id: str = "P"
    # the gateway's IEEE EUI-64 (or its MAC) in MSH-3; left out: its host's, from its MAC
    sending_eui64: str | None = None
    ack_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    max_refusals: int = 5

    def __post_init__(self) -> None:
        check(bool(self.host), "host", self.host, "the receiver's host name")
        for name in ("sending_application", "sending_facility", "receiving_application",
                     "receiving_facility"):  # fmt: skip
            value = getattr(self, name)
            check(plain(value) == value, name, value, "text without HL7 delimiters |^~\\&")
        check(bool(self.sending_application), "sending_application", "", "non-empty")
        check(self.processing_id in PROCESSING_IDS, "processing_id", self.processing_id,
              "one of P (production), T (training), D (debugging)")  # fmt: skip
        if self.sending_eui64 is not None:
            try:
                eui64(self.sending_eui64)
            except ValueError as exc:
                check(False, "sending_eui64", self.sending_eui64, str(exc))
        _check_retries(self.backoff_min_s, self.backoff_max_s, self.max_refusals)

    @property
    def sender(self) -> Sender:
        given = self.sending_eui64
        return Sender(self.sending_application, self.sending_facility,
                      self.receiving_application, self.receiving_facility,
                      self.processing_id,
                      eui64(given) if given is not None else host_eui64())  # fmt: skip

    @property
    def courier(self) -> CourierConfig:
        return CourierConfig(self.backoff_min_s, self.backoff_max_s, self.max_refusals)


def _check_retries(backoff_min_s: float, backoff_max_s: float, max_refusals: int) -> None:
    check(0 < backoff_min_s <= backoff_max_s <= 3600, "backoff_min_s", backoff_min_s,
          "in (0, backoff_max_s], backoff_max_s <= 3600")  # fmt: skip
    check(max_refusals >= 1, "max_refusals", max_refusals, "at least 1")


@dataclass(frozen=True)
class FhirConfig(Settings):
    base_url: str
    token_file: str | None = None
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    max_refusals: int = 5
    queue: str = "state/gateway-fhir.sqlite"
    # the hospital's patient id system (URI); left out: urn:lungwatch:patient:<assigning authority>
    patient_system: str = ""

    def __post_init__(self) -> None:
        url = urllib.parse.urlsplit(self.base_url)
        check(url.scheme in ("http", "https") and bool(url.hostname) and not url.query,
              "base_url", self.base_url, "an http(s) URL of the FHIR server's base")  # fmt: skip
        check(url.scheme == "https" or is_loopback(url.hostname or ""), "base_url",
              self.base_url, "https (plain http only to this machine)")  # fmt: skip
        _check_retries(self.backoff_min_s, self.backoff_max_s, self.max_refusals)
        check(bool(self.queue), "queue", self.queue, "a file path")
        system = urllib.parse.urlsplit(self.patient_system)
        check(not self.patient_system or (bool(system.scheme) and " " not in self.patient_system),
              "patient_system", self.patient_system, "a URI (http://..., urn:oid:...)")  # fmt: skip

    @property
    def courier(self) -> CourierConfig:
        return CourierConfig(self.backoff_min_s, self.backoff_max_s, self.max_refusals)

    def token(self) -> str | None:
        """The bearer token (:func:`read_secret_line`'s checks); None without a token file."""
        if self.token_file is None:
            return None
        return read_secret_line(self.token_file, "fhir.token_file")


@dataclass(frozen=True)
class BedEntry:
    """A bed's place in the hospital: its location (PV1-3) and, when known, its patient."""

    device_id: str
    stream_id: str
    location: str = ""  # point of care^room^bed^facility
    patient_id: str = ""  # id^^^assigning authority^MR

    def __post_init__(self) -> None:
        for name in ("device_id", "stream_id"):
            check(is_segment(getattr(self, name)), name, getattr(self, name), "a topic segment")
        for name in ("location", "patient_id"):
            value = getattr(self, name)
            check("|" not in value and "\r" not in value and "\n" not in value, name, value,
                  "HL7 components without '|' or line breaks")  # fmt: skip


@dataclass(frozen=True)
class GatewayConfig(Settings):
    site: str
    hl7: Hl7Config | None = None  # HL7 v2.6 over MLLP (PCD-01)
    fhir: FhirConfig | None = None  # FHIR R4 Observations
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    queue: str = "state/gateway.sqlite"  # the HL7 messages' queue
    rate_every_s: NonNegativeFloat = 60.0  # a bed's rate at most this often while its state holds
    max_beds_per_device: Annotated[int, Field(ge=1, le=4096)] = 64  # per device; more are refused
    beds: tuple[BedEntry, ...] = ()
    # the rules of the alarm conditions reported as PCD-04: give the site's ward view's values
    alarms: AlarmSettings = field(default_factory=AlarmSettings)
    alarm_reports: bool = True  # false: PCD-01 observations only
    adt_file: str | None = None  # ADT messages (gateway.adt): a bed's patient, else its patient_id

    def __post_init__(self) -> None:
        check(is_segment(self.site), "site", self.site, "a topic segment (1..64 chars)")
        check(self.hl7 is not None or self.fhir is not None, "hl7", None,
              "given, or fhir given (where the gateway sends to)")  # fmt: skip
        check(bool(self.queue), "queue", self.queue, "a file path")
        seen = [(b.device_id, b.stream_id) for b in self.beds]
        twice = next((s for s in seen if seen.count(s) > 1), None)
        check(twice is None, "beds", twice, "each device_id/stream_id once")

    def bed(self, device_id: str, stream_id: str) -> Bed:
        for entry in self.beds:
            if (entry.device_id, entry.stream_id) == (device_id, stream_id):
                return Bed(device_id, stream_id, entry.location, entry.patient_id,
                           site=self.site)  # fmt: skip
        return Bed(device_id, stream_id, site=self.site)
