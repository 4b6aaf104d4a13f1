"""The gateway's own health, published and shown: a running gateway publishes, retained,
that it is up with each queue's depth, what it set aside and its receiver's last acceptance;
a stopped one that it is down; and a ward view turns a feed that is down, sets messages
aside or falls behind into a technical alarm (and clears it when the feed is well)."""

from __future__ import annotations

import datetime as dt
import json
import signal
import threading
from pathlib import Path
from typing import Any

from lungwatch.events import feed_health_payload, feed_health_topic
from lungwatch.mqtt import import_paho
from tests.brokers import Mosquitto
from tests.gateway.receiver import Receiver
from tests.gateway.test_service import SITE, Device, gateway_yaml, start_gateway
from wardview.ward import Ward


class Watcher:
    """Every health message on the site's gateways' topic, in order."""

    def __init__(self, port: int) -> None:
        mqtt = import_paho()
        self.got: list[dict[str, Any]] = []
        self.changed = threading.Condition()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"test-watcher-{port}")  # fmt: skip
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"lungwatch/v1/{SITE}/gateway/+/health", qos=1)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.changed:
            self.got.append(json.loads(message.payload) if message.payload else {})
            self.changed.notify_all()

    def wait_for(self, predicate: Any, timeout_s: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self.got), timeout_s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_running_gateway_says_it_is_up_with_its_queue_and_a_stopped_one_says_down(
    tmp_path: Path,
) -> None:
    (tmp_path / "state").mkdir(mode=0o700)
    broker, receiver = Mosquitto(tmp_path).start(), Receiver().start()
    watcher = Watcher(broker.port)
    gateway = start_gateway(gateway_yaml(tmp_path, broker.port, receiver.port))
    device = Device(broker.port)
    try:
        assert watcher.wait_for(lambda got: any(g.get("state") == "up" for g in got), 20.0)
        up = next(g for g in watcher.got if g.get("state") == "up")
        assert (up["site"], up["gateway"]) == (SITE, "gateway")
        assert (up["queues"]["hl7"]["queued"], up["queues"]["hl7"]["refused"]) == (0, 0)
        assert up["storing"] is True
        # what it took since it started, by outcome: a device's bad message is said there too
        device.publish(f"lungwatch/v1/{SITE}/dev-1/bed-1/respiration", b"{not json")
        assert watcher.wait_for(
            lambda got: any(g.get("intake", {}).get("refused:bad_json") == 1 for g in got), 25.0
        ), watcher.got[-1]
    finally:
        device.close()
        gateway.send_signal(signal.SIGTERM)
        _, err = gateway.communicate(timeout=20)
    try:
        assert watcher.wait_for(lambda got: got[-1].get("state") == "down", 10.0), watcher.got
        assert watcher.got[-1]["reason"] == "stopped"
    finally:
        watcher.close()
        receiver.kill()
        broker.stop()
    assert gateway.returncode == 0, err


def health(state: str = "up", queued: int = 0, refused: int = 0, last_ack_s: float | None = 5.0,
           storing: bool = True, name: str = "hl7-gw") -> bytes:  # fmt: skip
    """A health message as a gateway publishes it, its receiver's last acceptance
    ``last_ack_s`` before its own time (None: never)."""
    now = dt.datetime.now(dt.timezone.utc)
    last = "" if last_ack_s is None else (now - dt.timedelta(seconds=last_ack_s)).isoformat()
    started = (now - dt.timedelta(hours=1)).isoformat()
    queues = {"hl7": {"queued": queued, "refused": refused, "last_ack_utc": last,
                      "last_error": ""}}  # fmt: skip
    return feed_health_payload(SITE, name, state, "running" if state == "up" else
                               "connection lost", queues, storing, started).encode()  # fmt: skip


def test_the_ward_view_raises_a_technical_alarm_for_a_feed_that_is_not_well() -> None:
    ward = Ward(SITE)
    topic = feed_health_topic(SITE, "hl7-gw")
    assert ward.handle(topic, health())
    assert ward.feed_alarms() == {}  # up, nothing waiting: no alarm
    assert ward.handle(topic, health(queued=3, last_ack_s=20.0))
    assert ward.feed_alarms() == {}  # a few waiting, accepted a moment ago: busy, not behind
    cases = [
        (health(refused=2), "2 messages set aside"),
        (health(queued=40, last_ack_s=600.0), "40 messages waiting, nothing accepted for 10 min"),
        (health(queued=5, last_ack_s=None), "5 messages waiting"),  # never accepted, up 1 h
        (health(storing=False), "takes no writes"),
        (health(state="down"), "down (connection lost)"),
    ]
    for payload, said in cases:
        assert ward.handle(topic, payload)
        alarms = ward.feed_alarms()
        assert list(alarms) == ["hl7-gw"], alarms
        assert said in alarms["hl7-gw"], (said, alarms)
        assert "hl7-gw" in ward.snapshot()["feeds"]
    assert ward.handle(topic, health())  # well again: the alarm clears
    assert ward.feed_alarms() == {}
    assert ward.handle(topic, health(state="down"))
    assert ward.handle(topic, b"")  # the retained health withdrawn: no longer followed
    assert ward.feed_alarms() == {}


def test_a_device_cannot_speak_for_a_feed_and_bad_health_is_refused() -> None:
    ward = Ward(SITE)
    assert not ward.handle(f"lungwatch/v1/{SITE}/dev-1/bed-1/health", health())
    assert not ward.handle(feed_health_topic(SITE, "other-gw"), health())  # body names hl7-gw
    bad = json.loads(health())
    bad["queues"]["hl7"]["queued"] = "many"
    assert not ward.handle(feed_health_topic(SITE, "hl7-gw"), json.dumps(bad).encode())
    for i in range(16):
        name = f"gw-{i}"
        assert ward.handle(feed_health_topic(SITE, name), health(name=name))
    assert not ward.handle(feed_health_topic(SITE, "gw-16"), health(name="gw-16"))  # bounded
    assert ward.feed_alarms() == {}
    assert ward.rejected_reasons.get("internal_error") is None


def test_the_page_shows_a_feed_that_is_down_as_a_legible_technical_alarm(tmp_path: Path) -> None:
    """Through a real broker and the view's server to headless Chromium: a gateway's retained
    health saying it is down becomes a red banner on the page, inside it on one to three lines
    (not one letter per line), and leaves when the feed is well; a screenshot is kept
    for a person to look at (the test's tmp folder)."""
    from tests.wardview.browser import SNAPSHOT_SHOWN, chromium, require_chromium, wait_until
    from tests.wardview.test_supervision import serve

    require_chromium()
    mqtt = import_paho()
    with Mosquitto(tmp_path) as broker, chromium() as driver:
        server = serve(broker, tmp_path)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        site = server.ward.site
        topic = feed_health_topic(site, "hl7-gw")
        down = json.loads(health(state="down"))
        down["site"] = site
        try:
            client.publish(topic, json.dumps(down), qos=1, retain=True).wait_for_publish(5.0)
            driver.get(server.url)
            wait_until(lambda: driver.execute_script(SNAPSHOT_SHOWN), 15.0, "the page")
            read = (
                "const n = document.querySelector('#feeds');"
                "const r = n.getBoundingClientRect();"
                "return [n.hidden, n.textContent, r.width, r.height, window.innerWidth,"
                " parseFloat(getComputedStyle(n).lineHeight) || 20];"
            )
            shown = wait_until(lambda: (lambda v: v if v[1] else None)(driver.execute_script(read)),
                               10.0, "the feed's banner")  # fmt: skip
            hidden, text, width, height, page_width, line = shown
            driver.save_screenshot(str(tmp_path / "feed-down.png"))
            assert not hidden
            assert text == "Technical alarm: hospital feed hl7-gw: down (connection lost)"
            assert 300 <= width <= page_width, (width, page_width)  # inside the page, not a sliver
            assert height <= 3 * line, (height, line)  # not one letter per line
            up = json.loads(health())
            up["site"] = site
            client.publish(topic, json.dumps(up), qos=1, retain=True).wait_for_publish(5.0)
            gone = "return document.querySelector('#feeds').hidden"
            wait_until(lambda: driver.execute_script(gone), 10.0, "the banner gone")
        finally:
            client.disconnect()
            client.loop_stop()
            server.stop()
