"""MQTT as every side uses it: broker settings (:class:`MqttConfig`), the paho client (imported
lazily: a config needs no paho), its :class:`Session`, the command topic, broker errors."""

from __future__ import annotations

import dataclasses
import hmac
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt

from lungwatch.config import Settings, check, read_secret_line
from lungwatch.errors import LungwatchError
from lungwatch.events import TOPIC_ROOT, check_segment, is_segment
from lungwatch.hosts import is_loopback

log = logging.getLogger("lungwatch.mqtt")

DEFAULT_MAX_EVENTS = 100_000  # a device's spool: events kept while the broker is away


@dataclass(frozen=True)
class MqttConfig(Settings):
    """How the device reaches its broker, and the spool that stands in while it cannot."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 1883
    site: str = "site"  # topic segment: the ward / site
    device_id: str = "device-1"  # topic segment: this device
    eui64: str = ""  # this device's EUI-64 in its status ("" unknown; lungwatch.equipment)
    client_id: str | None = None  # None: lungwatch-<site>-<device_id>-<secret> (stable)
    username: str | None = None  # this client's own user (``lungwatch access`` makes one each)
    password: str | None = field(default=None, repr=False)  # needs username
    password_file: str | None = None  # or: a file (mode 0600) whose first line is the password
    tls: bool = False  # TLS with the system CAs; implied by ca_file / cert_file
    ca_file: str | None = None  # PEM CA bundle that signed the broker's certificate
    cert_file: str | None = None  # client certificate (PEM), with key_file
    key_file: str | None = None
    keepalive_s: Annotated[int, Field(ge=5)] = 30
    backoff_min_s: PositiveInt = 1  # first reconnect delay; doubles per failed attempt
    backoff_max_s: int = 30
    max_inflight: PositiveInt = 20  # QoS 1 messages on the wire without PUBACK
    max_queued: PositiveInt = 1000  # events handed to paho and not yet acknowledged
    connect_timeout_s: PositiveFloat = 10.0  # how long connect() waits for the first CONNACK
    fail_fast: bool = True  # connect(): a refused CONNACK or a TLS failure raises
    require_broker_at_start: bool = False  # connect(): an unreachable broker raises too
    flush_timeout_s: PositiveFloat = 10.0  # close() waits this long for outstanding PUBACKs
    spool_path: str = "out/spool/events.sqlite"
    spool_max_events: PositiveInt = DEFAULT_MAX_EVENTS
    spool_full_priority: Literal["high", "medium", "low"] = "medium"
    allow_insecure: bool = False  # true: a broker beyond loopback may lack TLS or a username

    def __post_init__(self) -> None:
        check(isinstance(self.host, str) and bool(self.host), "host", self.host, "a host name")
        for name, value in (("site", self.site), ("device_id", self.device_id)):
            check(is_segment(value), name, value, "a topic segment (1..64 chars, no / + # $)")
        check(self.client_id is None or self.client_id != "", "client_id", "", "non-empty")
        with_user = self.password is None or self.username is not None
        check(with_user, "password", "***", "set together with username")
        with_user = self.password_file is None or self.username is not None
        check(with_user, "password_file", self.password_file, "set together with username")
        one = self.password is None or self.password_file is None
        check(one, "password_file", self.password_file, "left out when password is given")
        found = self.password_file is None or Path(self.password_file).is_file()
        check(found, "password_file", self.password_file, "an existing file")
        secured = self.uses_tls and self.username is not None
        check(
            secured or self.allow_insecure or is_loopback(self.host),
            "host",
            self.host,
            "a loopback address, or a broker reached with TLS (tls or ca_file) and a username "
            "(set allow_insecure: true to send patient events in clear)",
        )
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            check(path is None or Path(path).is_file(), name, path, "an existing file")
        paired = (self.cert_file is None) == (self.key_file is None)
        check(paired, "key_file", self.key_file, "set together with cert_file")
        ok = self.backoff_max_s >= self.backoff_min_s
        check(ok, "backoff_max_s", self.backoff_max_s, f">= backoff_min_s ({self.backoff_min_s})")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def at(self, address: str | None) -> MqttConfig:
        """These settings with the broker at ``address`` (``host:port``; None: as they are)."""
        if address is None:
            return self
        host, port = address.rsplit(":", 1)
        return dataclasses.replace(self, host=host, port=int(port))

    def login(self) -> tuple[str | None, str | None]:
        """(username, password), the password read from ``password_file`` when that is set."""
        if self.password_file is None:
            return self.username, self.password
        return self.username, read_secret_line(self.password_file, "password file")

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca_file is not None or self.cert_file is not None

    @property
    def effective_client_id(self) -> str:
        """``client_id``, else one a stolen login of another device cannot guess."""
        return self.client_id or f"lungwatch-{self.site}-{self.device_id}{self.private_suffix()}"

    def private_suffix(self) -> str:
        """``-<16 hex>`` derived from this client's password; empty without one."""
        username, password = self.login()
        if not password:
            return ""
        mac = hmac.new(password.encode(), f"lungwatch-client-id\0{username}".encode(), "sha256")
        return "-" + mac.hexdigest()[:16]


def command_topic(site: str, device_id: str) -> str:
    """``lungwatch/v1/<site>/<device>/command``: commands to the device (QoS 1)."""
    site, device_id = check_segment(site, "site"), check_segment(device_id, "device_id")
    return f"{TOPIC_ROOT}/{site}/{device_id}/command"


class BrokerError(LungwatchError):
    """The broker cannot be used; the message names host:port and the reason."""


class BrokerRefusedError(BrokerError):
    """The broker answered CONNACK with a refusal (credentials, client id, ...)."""


class BrokerTlsError(BrokerError):
    """TLS could not be set up (files, handshake, certificate verification)."""


class BrokerUnavailableError(BrokerError):
    """The broker could not be reached (only raised with ``require_broker_at_start``)."""


def new_client(
    cfg: MqttConfig, client_id: str, clean_session: bool = True, manual_ack: bool = False
) -> Any:
    """A paho 2 client (MQTT 3.1.1) with the config's back-off, login and verifying TLS;
    limits and callbacks are the caller's."""
    mqtt = import_paho()
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=clean_session,
        manual_ack=manual_ack,
    )
    client.reconnect_delay_set(cfg.backoff_min_s, cfg.backoff_max_s)
    if cfg.username is not None:
        client.username_pw_set(*cfg.login())
    if cfg.uses_tls:
        client.tls_set_context(tls_context(cfg))
    return client


class Session:
    """A paho client of ``cfg``: its connection state, topics subscribed at QoS 1, a retained will
    made anew at each connect; ``on_connected``/``on_lost`` run on paho's thread."""

    def __init__(
        self,
        cfg: MqttConfig,
        client_id: str,
        name: str,
        *,
        clean_session: bool = True,
        manual_ack: bool = False,
        topics: list[str] | None = None,
        will: tuple[str, Callable[[], str]] | None = None,
        max_inflight: int | None = None,
        on_connected: Callable[[Any], None] | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.cfg, self.client_id, self.name = cfg, client_id, name
        self.topics = list(topics or [])
        self.client = new_client(cfg, client_id, clean_session, manual_ack)
        # paho sends a publish as soon as a socket exists, even before its CONNECT: a PUBLISH from
        # another thread can reach the broker first, which drops the connection (protocol error)
        self._connecting, reconnect = threading.RLock(), self.client.reconnect
        self.client.reconnect = lambda: self._locked(reconnect)
        if max_inflight is not None:
            self.client.max_inflight_messages_set(max_inflight)
        self.connected, self.connack = threading.Event(), threading.Event()
        self.refusal: str | None = None
        self.subscribe_mid: int | None = None
        self.connects = 0  # accepted connects, counted before ``connected`` is set
        self.stopping = False  # our own disconnect: no "lost broker" warning
        self._first_told = False  # start() tells the first CONNACK's refusal itself
        self._will, self._on_connected, self._on_lost = will, on_connected, on_lost
        self.client.on_pre_connect = self._on_pre_connect
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def start(
        self, wait: bool = True, fail_fast: bool = True, require_broker: bool = False
    ) -> None:
        """Connect and start the network thread. ``wait``: connect here and wait for the
        CONNACK; a TLS failure or a refusal raises with ``fail_fast``, an unreachable broker
        with ``require_broker``; the rest is retried in the background."""
        cfg, reached, self._first_told = self.cfg, False, wait
        if wait:
            try:
                self.client.connect(cfg.host, cfg.port, cfg.keepalive_s)
                reached = True
            except ssl.SSLError as exc:
                why = getattr(exc, "verify_message", None) or exc.reason or exc
                self._fail_or_warn(BrokerTlsError, f"TLS failed: {why}", fail_fast)
            except OSError as exc:
                reset = cfg.uses_tls and isinstance(exc, ConnectionResetError)
                hint = " (TLS to a plain listener?)" if reset else ""
                reason = f"is unreachable: {exc.strerror or exc}{hint}"
                self._fail_or_warn(BrokerUnavailableError, reason, require_broker)
        if not reached:
            self.client.connect_async(cfg.host, cfg.port, cfg.keepalive_s)
        self.client.loop_start()
        if not reached:
            return
        if not self.connack.wait(cfg.connect_timeout_s):
            reason = f"sent no CONNACK within {cfg.connect_timeout_s:g} s"
            self._fail_or_warn(BrokerUnavailableError, reason, require_broker)
        elif self.refusal is not None:
            self._fail_or_warn(BrokerRefusedError, self.refusal, fail_fast)

    def _locked(self, call: Callable[[], Any]) -> Any:
        with self._connecting:
            return call()

    def publish(self, topic: str, payload: str | bytes, qos: int = 0, retain: bool = False) -> Any:
        """paho's publish, never between a (re)connect's socket and its CONNECT."""
        return self._locked(lambda: self.client.publish(topic, payload, qos=qos, retain=retain))

    def stop(self) -> None:
        self.stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    def subscribe(self, topic: str) -> None:
        """Subscribe ``topic`` too: now when connected, and on every connect."""
        if topic not in self.topics:
            self.topics.append(topic)
        if self.connected.is_set():
            self._locked(lambda: self.client.subscribe(topic, qos=1))

    def _fail_or_warn(self, error: type[BrokerError], reason: str, must_raise: bool) -> None:
        message = f"broker {self.cfg.address} {reason}"
        if must_raise:
            self.stop()
            raise error(message)
        log.warning("%s: %s; retrying", self.name, message)

    def _on_pre_connect(self, client: Any, userdata: Any) -> None:
        if self._will is not None:
            client.will_set(self._will[0], self._will[1](), qos=1, retain=True)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.refusal = f"refused the connection: {reason}"
            if self.connack.is_set() or not self._first_told:
                log.error("%s: broker %s %s", self.name, self.cfg.address, self.refusal)
        else:
            self.refusal = None
            self.connects += 1
            if self.topics:
                _, self.subscribe_mid = client.subscribe([(topic, 1) for topic in self.topics])
            self.connected.set()
            log.info("%s connected to broker %s", self.name, self.cfg.address)
            if self._on_connected is not None:
                self._on_connected(client)
        self.connack.set()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if not self.connack.is_set():
            tls = "" if self.cfg.uses_tls else "; a TLS listener needs ca_file or tls: true"
            self.refusal = f"closed the connection before CONNACK{tls}"
            self.connack.set()
        if self.connected.is_set() and not self.stopping:
            log.warning("%s lost broker %s (%s); reconnecting", self.name, self.cfg.address,
                        reason)  # fmt: skip
        self.connected.clear()
        if self._on_lost is not None:
            self._on_lost()


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """Verifying client context: the broker's certificate and host name are checked."""
    try:
        context = ssl.create_default_context(cafile=cfg.ca_file)
        if cfg.cert_file is not None:
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
    except (OSError, ValueError) as exc:
        raise BrokerTlsError(f"broker {cfg.address}: cannot load TLS files ({exc})") from None
    return context


def import_paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise BrokerError("MQTT needs paho-mqtt 2: pip install 'lungwatch[edge]'") from None
    return mqtt
