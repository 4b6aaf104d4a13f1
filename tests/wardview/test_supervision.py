"""The threads the ward view and the device depend on are watched: one that stops unasked is
said loudly, shown, and started again or the process stops with the reason.

Each loop guards its own work (one bad message, row or clip never ends it), so a thread stops
only on a failure nobody foresaw; the tests put one there (``SystemExit``, which no
``except Exception`` catches) into the real loop, with the real server, broker, history file
and headless Chromium around it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from lungwatch.events import Event, status_payload
from lungwatch.mqtt import MqttConfig
from lungwatch.supervision import RESTARTS, ThreadStoppedError, Worker
from tests.brokers import HOST, SHA256, Mosquitto
from tests.wardview.browser import SNAPSHOT_SHOWN, chromium, require_chromium, wait_until
from wardview.config import DashboardConfig
from wardview.history import History
from wardview.server import DashboardServer
from wardview.ward import Ward

SITE, DEVICE = "ward-s", "dev-1"
ROOT = f"lungwatch/v1/{SITE}/{DEVICE}"


def test_a_worker_that_stops_unasked_says_why_and_is_started_again_within_its_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stopping = threading.Event()
    runs = []

    def loop() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("a case nobody foresaw")
        stopping.wait()

    with caplog.at_level(logging.CRITICAL, logger="lungwatch.supervision"):
        worker = Worker(loop, "lungwatch-test", stopping.is_set).start()
        wait_until(lambda: not worker.is_alive(), 5.0, "the first run to fail")
    why = worker.failure()
    assert why == "thread lungwatch-test stopped: RuntimeError: a case nobody foresaw"
    record = next(r for r in caplog.records if r.levelno == logging.CRITICAL)
    assert record.exc_info is not None, "the traceback is logged"
    assert worker.restart(now_s=100.0)
    wait_until(lambda: len(runs) == 2, 5.0, "the second run")
    assert worker.failure() is None, "running again"
    stopping.set()
    worker.join(5.0)
    assert worker.failure() is None, "asked to stop: no failure"
    for i in range(1, RESTARTS):
        assert worker.restart(now_s=100.0 + i)
    assert not worker.restart(now_s=100.0 + RESTARTS), "the bound within the window"
    assert worker.restart(now_s=100.0 + 10_000.0), "an old restart no longer counts"


def serve(broker: Mosquitto, tmp_path: Path) -> DashboardServer:
    config = DashboardConfig(port=0, history_path=str(tmp_path / "history.sqlite"),
                             heartbeat_interval_s=0.5)  # fmt: skip
    mqtt_config = MqttConfig(host=HOST, port=broker.port, connect_timeout_s=5.0)
    server = DashboardServer(config, mqtt_config, SITE).start()
    wait_until(server.feed.connected.is_set, 10.0, "the view's broker connection")
    return server


def publish_onset(port: int) -> Event:
    import paho.mqtt.client as mqtt

    event = Event.onset(
        type="Wheeze", site=SITE, device_id=DEVICE, stream_id="bed-1",
        start_utc=time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()), start_sample=8000,
        confidence=0.9, model_id="edge-test", model_sha256=SHA256, quality={"score": 0.99},
    )  # fmt: skip
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(HOST, port)
    client.loop_start()
    online = status_payload("online", SITE, DEVICE, "connected")
    client.publish(f"{ROOT}/status", online, qos=1, retain=True).wait_for_publish(5.0)
    client.publish(event.topic, event.to_json(), qos=1).wait_for_publish(5.0)
    client.disconnect()
    client.loop_stop()
    return event


def stored_events(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT id FROM events ORDER BY seq")]


def test_a_stopped_history_writer_is_a_technical_alarm_on_the_page_and_starts_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The history writer's first pruning raises what its guards do not catch: the writer
    stops; the view starts it again within a push round, the page shows (and sounds) a
    technical alarm naming the thread and what happened, and what arrives afterwards is
    stored."""
    require_chromium()
    prune = History._prune
    calls = []

    def prune_once_broken(self: History, db: sqlite3.Connection) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise SystemExit("injected: the writer's loop broke")
        prune(self, db)

    monkeypatch.setattr(History, "_prune", prune_once_broken)
    with Mosquitto(tmp_path) as broker, chromium() as driver:
        server = serve(broker, tmp_path)
        try:
            expected = ("thread lungwatch-history stopped: SystemExit: injected: the writer's "
                        "loop broke; started again")  # fmt: skip
            wait_until(lambda: server.ward.faults.get("history") == expected, 10.0,
                       "the fault in the ward")  # fmt: skip
            assert server.failure() is None, "started again: the view goes on"
            driver.get(server.url)
            wait_until(lambda: driver.execute_script(SNAPSHOT_SHOWN), 15.0, "the page")
            banner = "return document.querySelector('#faults').textContent"
            shown = wait_until(lambda: driver.execute_script(banner), 10.0, "the banner")
            assert shown == f"Technical alarm (ward view): {expected}"
            event = publish_onset(broker.port)
            path = tmp_path / "history.sqlite"
            wait_until(lambda: stored_events(path), 10.0, "the event stored afterwards")
            assert stored_events(path) == [event.id]
        finally:
            server.stop()


def test_the_view_stops_with_the_reason_when_its_push_thread_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No page can be updated without the push thread: ``serve_until`` (what ``lungwatch
    dashboard`` and ``lungwatch run`` wait in) raises with the thread's name and error, so
    the process exits 1 and its service manager starts it again."""

    def broken(self: Ward) -> None:
        raise SystemExit("injected: the push loop broke")

    with Mosquitto(tmp_path) as broker:
        server = serve(broker, tmp_path)
        stop = threading.Event()
        guard = threading.Timer(20.0, stop.set)  # the test fails instead of hanging
        guard.start()
        try:
            monkeypatch.setattr(Ward, "check_liveness", broken)
            with pytest.raises(ThreadStoppedError) as raised:
                server.serve_until(stop, every_s=0.1)
            assert str(raised.value) == (
                "the ward view stops: thread lungwatch-dashboard-push stopped: SystemExit: "
                "injected: the push loop broke"
            )
            assert not stop.is_set(), "seen by the watch, not ended by the guard's timer"
        finally:
            guard.cancel()
            server.stop()
