"""The view's paho client: reads the site's topics into a :class:`~wardview.ward.Ward`, publishes
acknowledge commands (docs/dashboard.md, "Architecture, and why"; "Hardening": the probe, refused
subscriptions). Its own client id, so it never takes the device's session."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from lungwatch.commandauth import derive_device_key, sign_command
from lungwatch.events import TOPIC_ROOT
from lungwatch.mqtt import BrokerError, MqttConfig, Session, command_topic
from wardview.ward import Ward

log = logging.getLogger("lungwatch.dashboard")

COMMAND_WAIT_S = 5.0  # how long an acknowledge waits for the broker's PUBACK


class FeedError(BrokerError):
    """A command could not be handed to the broker."""


class WardFeed:
    def __init__(
        self,
        config: MqttConfig,
        site: str,
        ward: Ward,
        command_master: bytes | None = None,
        client_id: str | None = None,
    ) -> None:
        self.config, self.site, self.ward = config, site, ward
        self._command_master = command_master  # signs commands (lungwatch.commandauth); None: not
        per_bed = ("event", "live", "verdict", "respiration", "summary", "evidence")
        # the devices' topics, then the hospital feeds' health (retained)
        topics = ["+/status", "+/metrics", *(f"+/+/{kind}" for kind in per_bed), "gateway/+/health"]
        self.topics = [f"{TOPIC_ROOT}/{site}/{topic}" for topic in topics]
        self.persistent = client_id is not None
        self.client_id = client_id or f"lungwatch-dashboard-{site}-{secrets.token_hex(4)}"
        self.probe_topic = f"{TOPIC_ROOT}/{site}/_dashboard/{self.client_id}"
        self._refused_logged: list[str] = []  # the refused topics last logged
        self.subacks = 0  # SUBACKs of the site's subscriptions received (one per connection)
        self._session = Session(
            config, self.client_id, "dashboard", clean_session=not self.persistent,
            topics=self.topics, on_lost=lambda: ward.set_broker(config.address, False),
            on_connected=lambda client: ward.set_broker(config.address, True),
        )  # fmt: skip
        self.connected = self._session.connected
        client = self._client = self._session.client
        client.on_message = self._on_message
        client.on_unsubscribe = self._on_unsubscribe
        client.on_subscribe = self._on_subscribe

    def start(self) -> WardFeed:
        """Raises if the CONNACK is refused or TLS fails; an unreachable broker is retried later."""
        self._session.start()
        return self

    def stop(self) -> None:
        self._session.stop()

    @property
    def signs(self) -> bool:
        return self._command_master is not None

    def acknowledge(self, device_id: str, stream_id: str, target: str, user: str) -> str:
        """Publish the acknowledge and wait for its PUBACK; the topic."""
        if not self.connected.is_set():
            raise FeedError(f"broker {self.config.address} is not connected")
        topic = command_topic(self.site, device_id)
        body: dict[str, Any] = {"action": "acknowledge", "stream_id": stream_id, "target": target}
        if self._command_master is not None:
            key = derive_device_key(self._command_master, self.site, device_id)
            body = sign_command(key, self.site, device_id, body, user)
        else:
            log.warning(
                "acknowledge to %s sent unsigned (no dashboard.command_key_file): the device "
                "refuses it unless its commands.accept_unsigned is set",
                device_id,
            )
        info = self._session.publish(topic, json.dumps(body), qos=1)
        try:
            info.wait_for_publish(timeout=COMMAND_WAIT_S)
        except (RuntimeError, ValueError) as exc:
            raise FeedError(f"broker {self.config.address} did not take it: {exc}") from None
        if not info.is_published():
            raise FeedError(f"broker {self.config.address}: no PUBACK in {COMMAND_WAIT_S:g} s")
        return topic

    def probe(self) -> None:
        """Send the round-trip probe when connected; the broker's answer reaches the ward."""
        if self.connected.is_set():
            self._client.unsubscribe(self.probe_topic)

    # -- paho callbacks (network thread) -----------------------------------------------
    def _on_subscribe(
        self, client: Any, userdata: Any, mid: Any, reasons: Any, props: Any = None
    ) -> None:
        """The topics the broker refused (0x80) go to the ward; a new refusal is logged once."""
        if mid != self._session.subscribe_mid:
            return
        self.subacks += 1
        refused = [t for t, r in zip(self.topics, reasons, strict=False) if r.is_failure]
        if refused and refused != self._refused_logged:
            log.error("broker %s refused the dashboard's subscriptions: not allowed to read %s "
                      "(its user needs read on %s/%s/#; the page says so)", self.config.address,
                      ", ".join(refused), TOPIC_ROOT, self.site)  # fmt: skip
        elif not refused and self._refused_logged:
            log.info("broker %s now grants every subscription", self.config.address)
        self._refused_logged = refused
        self.ward.set_refused(refused)

    def _on_unsubscribe(self, client: Any, userdata: Any, mid: Any, *answer: Any) -> None:
        self.ward.probe_returned()  # the feed unsubscribes from nothing else

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        try:
            self.ward.handle(message.topic, bytes(message.payload), bool(message.retain))
        except Exception:  # the last guard: raising in paho's thread stops the feed for good
            log.error("dashboard: a message on %r could not be handled", message.topic,
                      exc_info=True)  # fmt: skip
