"""The health check against a real Mosquitto: it accepts only an ``online`` stamped after the
restart (a stale retained ``online`` never passes) and says why it gave up."""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from deploy.errors import HealthError
from deploy.health import BrokerConfig, wait_online
from lungwatch.events import status_payload
from tests.brokers import HOST, Mosquitto, closed_port, make_password_file

TOPIC = "lungwatch/v1/ward-h/dev-h/status"


def publish_status(port: int, state: str, *, topic: str = TOPIC) -> None:
    """A retained status as the runtime publishes it, stamped now."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="health-test-publisher")
    client.connect(HOST, port)
    client.loop_start()
    info = client.publish(topic, status_payload(state, "ward-h", "dev-h", "test"), 1, True)
    info.wait_for_publish(5.0)
    client.disconnect()
    client.loop_stop()


def test_online_after_the_restart_is_accepted(broker: Mosquitto) -> None:
    since = time.time()
    publish_status(broker.port, "online")
    status = wait_online(BrokerConfig(port=broker.port), TOPIC, since, timeout_s=5)
    assert status["state"] == "online"


def test_a_stale_retained_online_is_not_enough(broker: Mosquitto) -> None:
    publish_status(broker.port, "online")
    since = time.time() + 1.0  # the restart happened after that status
    with pytest.raises(HealthError, match=r"within 1 s \(last status: online at "):
        wait_online(BrokerConfig(port=broker.port), TOPIC, since, timeout_s=1)
    assert wait_online(BrokerConfig(port=broker.port), TOPIC, None, timeout_s=5)  # no restart


def test_offline_is_reported(broker: Mosquitto) -> None:
    publish_status(broker.port, "offline")
    with pytest.raises(HealthError, match=r"last status: offline"):
        wait_online(BrokerConfig(port=broker.port), TOPIC, None, timeout_s=1)


def test_unreachable_and_refused_brokers_are_named(tmp_path: Path) -> None:
    with (
        closed_port() as port,
        pytest.raises(HealthError, match=rf"broker 127\.0\.0\.1:{port} unreachable"),
    ):
        wait_online(BrokerConfig(port=port), TOPIC, None, timeout_s=1)
    password_file = make_password_file(tmp_path, "device", "secret")
    with Mosquitto(tmp_path, password_file=password_file) as locked:
        config = BrokerConfig(port=locked.port, username="someone", password_env="NOPE_UNSET")
        with pytest.raises(HealthError, match="refused the connection"):
            wait_online(config, TOPIC, None, timeout_s=5)
