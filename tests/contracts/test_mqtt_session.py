"""lungwatch.mqtt.Session against a real Mosquitto: a publish from another thread while the
session connects or reconnects never reaches the broker before the CONNECT (a broker drops such a
connection as a protocol error; a gateway once failed its restart this way)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from lungwatch.mqtt import MqttConfig, Session
from tests.brokers import Mosquitto, Recorder

TOPIC = "lungwatch/v1/ward-3/race/status"
WINDOW_S = 0.3  # how long the test holds a connect between its socket and its CONNECT


def test_a_publish_during_a_connect_or_a_reconnect_waits_for_the_connect(tmp_path: Path) -> None:
    with Mosquitto(tmp_path) as broker, Recorder(broker.port, topic=TOPIC) as recorder:
        config = MqttConfig(port=broker.port, connect_timeout_s=5.0, backoff_max_s=1)
        session = Session(config, "race-test", "test")
        socket_open = threading.Event()

        def hold_the_window(client: Any, userdata: Any, sock: Any) -> None:
            socket_open.set()  # paho has a socket and has not yet queued its CONNECT
            time.sleep(WINDOW_S)

        session.client.on_socket_open = hold_the_window

        def publish_in_the_window(payload: bytes) -> threading.Thread:
            def run() -> None:
                assert socket_open.wait(10.0)
                session.publish(TOPIC, payload, qos=1)

            thread = threading.Thread(target=run)
            thread.start()
            return thread

        first = publish_in_the_window(b"first")
        session.start()  # raised "closed the connection before CONNACK" before the fix
        first.join(10.0)
        assert session.connects == 1
        assert recorder.wait_for(lambda ms: [m.payload for m in ms] == [b"first"], 5.0)

        socket_open.clear()
        second = publish_in_the_window(b"second")
        broker.restart()  # paho's own thread reconnects
        recorder.connect()
        second.join(10.0)
        deadline = time.monotonic() + 10.0
        while session.connects < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        session.stop()
        log = broker.log.read_text(encoding="utf-8")
        assert "protocol error" not in log, log
        assert session.connects == 2, log
