"""The runtime's config: one YAML file (``lungwatch run --config FILE``), validated once, then
checked against the model's manifest; the sources, sinks and broker it names; the commands on
the command topic. Its sections and keys: docs/runtime.md's config table and
``edge/configs/ward.yaml``. Every error is one ConfigError line naming the file and the key."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, NonNegativeFloat, PositiveFloat

from edge.bed.agebands import AGE_BAND_NAMES
from edge.bed.breathing_state import RespirationConfig
from edge.bed.detector import DetectorConfig
from edge.bed.gate import GateConfig
from edge.bed.verdict import VerdictConfig
from edge.datapaths import data_root
from edge.evidence.recorder import EvidenceConfig
from edge.features import FeatureSpec
from edge.inference import BackendConfig
from edge.inference.manifest import Manifest, require_spec
from edge.sinks import MultiSink, Sink
from edge.sinks.jsonl import JsonlSink
from edge.sinks.mqtt import MqttSink
from edge.sinks.stdout import StdoutSink
from edge.sources import BRIDGE_PREFIX, MIC_PREFIX, AudioSource, SourceError, open_source
from lungwatch.commandauth import (
    SIGNATURE_KEYS,
    CommandVerifier,
    derive_device_key,
    new_key,
    read_key,
)
from lungwatch.config import Settings, check, load_config
from lungwatch.equipment import eui64, host_eui64
from lungwatch.errors import ConfigError, FeatureSpecMismatchError, LungwatchError
from lungwatch.events import DEVICE_STREAM, SOUND_TYPES, is_segment
from lungwatch.hosts import is_loopback
from lungwatch.labels import DETECTED_CLASSES
from lungwatch.mqtt import MqttConfig

log = logging.getLogger("lungwatch.runtime")
MAX_CHUNK_SAMPLES = 48_000  # samples per read: 1 s at 48 kHz (the default is 0.1 s at 8 kHz)

SEGMENT = "a topic segment (1..64 printable characters, no / + # or leading $)"
DATA_PREFIX = "data:"  # a stream source relative to edge.datapaths.data_root()
COMMAND_KEYS = ("action", "stream_id", "target")
ACKNOWLEDGE = "acknowledge"
EXCERPT_BYTES = 200  # of a bad command, in its log line
MAX_COMMAND_BYTES = 4096  # a longer command is refused unread (a signed one is ~300 bytes)
MIN_LIVE_INTERVAL_S = 0.25
LIVE_INTERVAL = f"0 (no live strip) or a number >= {MIN_LIVE_INTERVAL_S} (seconds)"
ROUND_GROUP = "an integer >= 0 (0: every stream in one group)"
UNSIGNED = "false while the broker is beyond loopback (or set mqtt.allow_insecure: true)"


@dataclass(frozen=True)
class ModelConfig:
    dir: str = "models/sed"  # holds manifest.json and the artifacts it lists (the shipped detector)
    file: str = "model.int8.onnx"  # the artifact that runs (must be listed in the manifest)
    check_sha256: bool = True  # refuse a file whose sha256 differs from the manifest's

    def __post_init__(self) -> None:
        check(bool(self.dir), "dir", self.dir, "a folder")
        check(bool(self.file) and "/" not in self.file, "file", self.file, "a file name")


@dataclass(frozen=True)
class StreamConfig(Settings):
    id: str  # the bed / stream id (an MQTT topic segment)
    source: str  # path | file:PATH | data:REL | mic:NAME_OR_INDEX | bridge://...
    realtime: bool = False  # file sources: pace chunks at the recording's rate
    loop: bool = False  # file sources: start again at the end
    chunk_samples: int = 800  # samples per read (0.1 s at 8 kHz)
    # the patient's age band (edge.bed.agebands) or age that picks it; neither: respiration.age_band
    age_band: str | None = None
    age_years: Annotated[float, Field(ge=0, lt=120)] | None = None
    name: str | None = None  # the ward view's name for this bed ("Bed 4")
    location: str | None = None  # and where it is ("Ward 3 East")

    def __post_init__(self) -> None:
        check(is_segment(self.id) and self.id != DEVICE_STREAM, "id", self.id, SEGMENT)
        check(self.age_band is None or self.age_band in AGE_BAND_NAMES, "age_band",
              self.age_band, f"one of {', '.join(AGE_BAND_NAMES)}")  # fmt: skip
        check(self.age_band is None or self.age_years is None, "age_years", self.age_years,
              "left out when age_band is set (one of the two)")  # fmt: skip
        for key in ("name", "location"):
            value = getattr(self, key)
            ok = value is None or (0 < len(value) <= 80 and value.isprintable())
            check(ok, key, value, "1..80 printable characters")
        check(bool(self.source), "source", self.source, "a path, mic:NAME or bridge://...")
        ok = 1 <= self.chunk_samples <= MAX_CHUNK_SAMPLES  # a read is a fraction of a second
        check(ok, "chunk_samples", self.chunk_samples, f"an integer in [1, {MAX_CHUNK_SAMPLES}]")
        if self.source.startswith(BRIDGE_PREFIX):  # options, key files, no keyless listener
            from edge.sources.bridge import check_url  # beyond loopback: refused at load

            try:
                check_url(self.source)
            except SourceError as exc:
                check(False, "source", self.source, f"a bridge URL that can open ({exc})")


@dataclass(frozen=True)
class SinksConfig:
    stdout: bool = True  # one readable line per event
    jsonl: str | None = None  # append every event to this JSON-lines file
    mqtt: bool = True  # publish to the broker in ``mqtt`` (store-and-forward spool)
    embedded_broker: bool = False  # start an amqtt broker on loopback (demos only)


@dataclass(frozen=True)
class CommandsConfig(Settings):
    """Which commands on the command topic the device acts on (``lungwatch.commandauth``)."""

    key_file: str | None = None  # this device's command key (``lungwatch access`` writes it)
    accept_unsigned: bool = False  # take unsigned commands too (a loopback demo; warned)
    max_age_s: PositiveFloat = 120.0  # a signed command older (or newer) than this is refused

    def __post_init__(self) -> None:
        check(self.key_file is None or bool(self.key_file), "key_file", self.key_file, "a path")


@dataclass(frozen=True)
class AlarmsConfig:
    """Latched alarms across restarts (``edge.runtime.latched``)."""

    persist: bool = True  # keep unacknowledged latched alarms in a file over restarts
    state_path: str | None = None  # that file (None: latched-alarms.json beside mqtt's spool)

    def __post_init__(self) -> None:
        check(self.state_path != "", "state_path", self.state_path, "a path or null")

    def path(self, mqtt: MqttConfig) -> Path:
        if self.state_path is not None:
            return Path(self.state_path)
        return Path(mqtt.spool_path).parent / "latched-alarms.json"


@dataclass(frozen=True)
class RuntimeConfig(Settings):
    streams: tuple[StreamConfig, ...]
    site: str = "ward-1"
    device_id: str = "edge-1"
    equipment_eui64: str | None = None  # EUI-64 or MAC; None: the host's (lungwatch.equipment)
    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeatureSpec | None = None
    backend: BackendConfig = field(default_factory=BackendConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    verdict: VerdictConfig = field(default_factory=VerdictConfig)
    respiration: RespirationConfig = field(default_factory=RespirationConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    respiration_publish_s: PositiveFloat = 10.0  # a bed's breathing: this often, and on change
    sinks: SinksConfig = field(default_factory=SinksConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    dashboard: dict[str, Any] = field(default_factory=dict)  # the ward view's (module doc)
    commands: CommandsConfig = field(default_factory=CommandsConfig)
    alarms: AlarmsConfig = field(default_factory=AlarmsConfig)
    metrics_interval_s: PositiveFloat = 10.0  # per-stream counters on the metrics topic
    live_interval_s: float = 1.0  # one live-strip point per bed this often (0: none)
    idle_sleep_s: NonNegativeFloat = 0.01  # how long the loop waits when no source had audio
    max_run_s: NonNegativeFloat = 0.0  # 0: until every source ends or a signal
    # a bed's model state restarts when a chunk misses at least this much audio (0: any;
    # docs/runtime.md, "Lost audio")
    state_reset_gap_ms: NonNegativeFloat = 100.0
    round_group: int = 125  # streams a round reads, infers and publishes together (0: all)
    read_wait_warn_ms: NonNegativeFloat = 500.0  # WARNING above this read-wait p99 (0: never)

    def __post_init__(self) -> None:
        check(len(self.streams) >= 1, "streams", self.streams, "a list of at least one stream")
        ids = [s.id for s in self.streams]
        check(len(set(ids)) == len(ids), "streams", ids, "streams with distinct ids")
        check(is_segment(self.site), "site", self.site, SEGMENT)
        check(is_segment(self.device_id), "device_id", self.device_id, SEGMENT)
        live_ok = self.live_interval_s == 0 or self.live_interval_s >= MIN_LIVE_INTERVAL_S
        check(live_ok, "live_interval_s", self.live_interval_s, LIVE_INTERVAL)
        check(isinstance(self.dashboard, dict), "dashboard", self.dashboard, "a mapping")
        needs_mqtt = not self.serves_view or self.sinks.mqtt
        check(needs_mqtt, "dashboard.enabled", True, "false while sinks.mqtt is false")
        group_ok = type(self.round_group) is int and self.round_group >= 0
        check(group_ok, "round_group", self.round_group, ROUND_GROUP)
        unsigned_ok = not (self.commands.accept_unsigned and self.sinks.mqtt) or (
            is_loopback(self.mqtt.host) or self.mqtt.allow_insecure
        )
        check(unsigned_ok, "commands.accept_unsigned", True, UNSIGNED)
        if self.equipment_eui64 is not None:
            try:
                eui64(self.equipment_eui64)
            except ValueError as exc:
                check(False, "equipment_eui64", self.equipment_eui64, str(exc))
        default = MqttConfig()
        check(self.mqtt.eui64 == "", "mqtt.eui64", self.mqtt.eui64,
              "left out (the top-level equipment_eui64 is used)")  # fmt: skip
        for key in ("site", "device_id"):
            given = getattr(self.mqtt, key)
            same = given in (getattr(default, key), getattr(self, key))
            check(same, f"mqtt.{key}", given, f"left out (the top-level {key} is used)")

    @property
    def serves_view(self) -> bool:
        """``dashboard.enabled``: ``lungwatch run`` serves the ward view beside the runtime."""
        return self.dashboard.get("enabled") is True

    @property
    def mqtt_config(self) -> MqttConfig:
        given = self.equipment_eui64
        equipment = eui64(given) if given is not None else host_eui64()
        return dataclasses.replace(
            self.mqtt, site=self.site, device_id=self.device_id, eui64=equipment
        )


def load_runtime_config(
    path: str | Path | Sequence[str | Path], overrides: list[str] | None = None
) -> RuntimeConfig:
    """Read and validate ``path`` (or several files, each merged over the ones before)."""
    return load_config(RuntimeConfig, path, overrides)


def check_against_manifest(config: RuntimeConfig, manifest: Manifest, source: str) -> None:
    if config.model.file not in manifest.runnable:
        listed = ", ".join(manifest.runnable)
        raise ConfigError(
            f"{source}: model.file must be a file listed in {manifest.path} ({listed}), "
            f"got {config.model.file!r}"
        )
    if config.features is not None:
        try:
            require_spec(manifest, config.features)
        except FeatureSpecMismatchError as exc:
            raise ConfigError(f"{source}: features must equal the model's ({exc})") from None
    events = [c for c in manifest.outputs if c in DETECTED_CLASSES]  # Breath is no event
    named = [("thresholds", r.type, events) for r in config.detector.thresholds]
    # the default priorities name types the model does not detect (Wheeze+Crackle): allowed
    allowed = [*events, *SOUND_TYPES]
    named += [("priorities", r.type, allowed) for r in config.detector.priorities]
    for key, type_, known in named:
        if type_ not in known:
            raise ConfigError(
                f"{source}: detector.{key} must name model classes ({', '.join(events)}), "
                f"got {type_!r}"
            )


def resolve_source(url: str) -> str:
    return str(data_root() / url[len(DATA_PREFIX) :]) if url.startswith(DATA_PREFIX) else url


def open_stream_source(config: StreamConfig, rate_hz: int) -> AudioSource:
    url = resolve_source(config.source)
    options: dict[str, Any] = {}
    if not url.startswith(BRIDGE_PREFIX):
        options["chunk_samples"] = config.chunk_samples
    if not url.startswith((MIC_PREFIX, BRIDGE_PREFIX)):  # live sources: neither paced nor looped
        options.update(realtime=config.realtime, loop=config.loop)
    audio = open_source(url, config.id, rate_hz, **options)
    if audio.sample_rate_hz != rate_hz:
        audio.close()
        raise SourceError(f"{url}: delivers {audio.sample_rate_hz} Hz, the model needs {rate_hz}")
    return audio


def open_sinks(
    config: RuntimeConfig, broker_address: str | None = None
) -> tuple[Sink, MqttSink | None]:
    """The configured sinks (the durable MQTT spool first) and the MQTT sink or None, not yet
    connected; ``broker_address`` (host:port) overrides the configured broker."""
    sinks: list[Sink] = []
    mqtt = None
    try:
        if config.sinks.mqtt:
            mqtt = MqttSink(config.mqtt_config.at(broker_address))
            sinks.append(mqtt)
        if config.sinks.jsonl:
            site, device_id = config.site, config.device_id
            sinks.append(JsonlSink(config.sinks.jsonl, site=site, device_id=device_id))
    except LungwatchError:
        MultiSink(sinks).close()
        raise
    if config.sinks.stdout:
        sinks.append(StdoutSink())
    return MultiSink(sinks), mqtt


def start_embedded_broker(config: RuntimeConfig, resources: contextlib.ExitStack) -> str | None:
    if not (config.sinks.mqtt and config.sinks.embedded_broker):
        return None
    from edge.sinks.broker import EmbeddedBroker

    broker = EmbeddedBroker(config.mqtt.host, config.mqtt.port).start()
    resources.callback(broker.stop)
    log.info("embedded MQTT broker on %s", broker.address)
    return broker.address


def open_command_verifier(
    config: RuntimeConfig, source: str = "<config>"
) -> tuple[CommandVerifier | None, bytes | None]:
    """The check of signed commands, and the master key a ward view served by this process
    signs with: from ``commands.key_file`` (no master key: ward views elsewhere hold it), else
    with ``dashboard.enabled`` a key made for this run, else none."""
    settings, master = config.commands, None
    if settings.accept_unsigned:
        log.warning(
            "commands.accept_unsigned is true: any client that may publish on the command "
            "topic can acknowledge alarms (a loopback demo only)"
        )
    if settings.key_file is not None:
        try:
            key = read_key(settings.key_file)
        except ConfigError as exc:
            raise ConfigError(f"{source}: commands.key_file: {exc}") from None
    elif config.serves_view:
        master = new_key()
        key = derive_device_key(master, config.site, config.device_id)
    else:
        return None, None
    return CommandVerifier(key, config.site, config.device_id, settings.max_age_s), master


class CommandError(LungwatchError, ValueError):
    """A command on the command topic is malformed or names no stream."""


@dataclass(frozen=True)
class Command:
    """``{"action": "acknowledge", "stream_id": "bed-1", "target": "Wheeze"}``, with the
    signature's keys (``lungwatch.commandauth``) when a ward view signed it."""

    action: str
    stream_id: str
    target: str  # an event type ("Wheeze", "clipping") or an episode key ("Wheeze@18088")
    body: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def signed(self) -> bool:
        return any(key in self.body for key in SIGNATURE_KEYS)


def short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def parse_command(payload: bytes) -> Command:
    excerpt = payload[:EXCERPT_BYTES]
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(
            f"command is {len(payload)} bytes (limit {MAX_COMMAND_BYTES}): {excerpt!r}..."
        )
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        reason = str(exc)[:EXCERPT_BYTES]
        raise CommandError(f"command is not JSON ({reason}): {excerpt!r}") from None
    allowed = (sorted(COMMAND_KEYS), sorted(COMMAND_KEYS + SIGNATURE_KEYS))
    if not isinstance(body, dict) or sorted(body) not in allowed:
        keys, more = ", ".join(COMMAND_KEYS), ", ".join(SIGNATURE_KEYS)
        raise CommandError(
            f"command must be a JSON object with keys {keys} (and {more} when signed): {excerpt!r}"
        )
    if body["action"] != ACKNOWLEDGE:
        got = short_repr(body["action"])
        raise CommandError(f"command.action must be {ACKNOWLEDGE!r}, got {got}")
    for key in ("stream_id", "target"):
        if not (isinstance(body[key], str) and body[key]):
            got = short_repr(body[key])
            raise CommandError(f"command.{key} must be a non-empty string, got {got}")
    return Command(body["action"], body["stream_id"], body["target"], body)
