"""The alarm list and its sound as a charge nurse meets them, in a real headless Chromium
against a real Mosquitto and ``lungwatch dashboard``, fed by a paho client publishing as a
device does:

- the alarm table reads: every cell of every row at least as wide as its header's words, no
  cell one letter per line, every Acknowledge button inside its cell and the window (each
  bed's first row was laid out by a style meant for the bed cards: cells 16-22 px wide);
- with advisory findings escalating for minutes (``escalate_after_s`` short here) none goes
  above medium, an apnoea is the top visible row within 2 s of its event and stays there,
  nothing swaps places as new episodes come, and the count of conditions below the visible
  part is right;
- a new apnoea after the nurse acknowledged the bed's previous one alarms and its pattern is
  heard; a new apnoea during audio pause ends the pause and is heard; one pattern sounds at a
  time. "Heard" is measured where the sound leaves the page (an AnalyserNode between the
  page's alarm sound and the speakers: energy and its frequency over time), and the pulses
  the browser's oscillators actually started are read from a spy on ``OscillatorNode.start``
  installed before the page loads, not from what the page logs it meant to play;
- a view that restarts on its history while a bed's acknowledged apnoea waited for its
  device: the row leaves the page when the device's status says it shut down cleanly, and
  stays, the device offline, after its last will.

Skipped, with the reason, where Chromium, its driver or Mosquitto is missing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml

from lungwatch.events import SHUTDOWN_REASON, Event, format_utc, kind_of, status_payload
from tests.brokers import HOST, SHA256, Mosquitto
from tests.wardview.alarm_page import (
    LISTEN,
    SPY,
    TABLE_GEOMETRY,
    bursts,
    heard_since,
    overlapping_pulses,
    top_is,
    visible,
)
from tests.wardview.browser import (
    SNAPSHOT_SHOWN,
    DashboardProcess,
    chromium,
    require_chromium,
    wait_until,
)

SITE, DEVICE = "ward-p", "edge-p"
ROOT = f"lungwatch/v1/{SITE}/{DEVICE}"
TOP_ROW_BOUND_S = 2.0
HEARD_BOUND_S = 2.0

pytestmark = pytest.mark.slow


class Device:
    """A device's messages from a paho client (QoS 1, each publish awaited)."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.connect(HOST, port)
        self.client.loop_start()
        self.put(f"{ROOT}/status", status_payload("online", SITE, DEVICE, "connected"), True)

    def put(self, topic: str, payload: str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5.0)

    def send(self, event: Event) -> Event:
        self.put(event.topic, event.to_json())
        return event

    def onset(self, type_: str, bed: str, **extra: Any) -> Event:
        at = time.time()
        values: dict[str, Any] = {
            "type": type_, "site": SITE, "device_id": DEVICE, "stream_id": bed,
            "start_utc": format_utc(at), "start_sample": int(at * 8000) % 10**12,
            "detail": {"key": f"{type_}@{int(at * 1000)}"}, **extra,
        }  # fmt: skip
        if kind_of(type_) == "physiological":
            values.update(confidence=0.9, model_id="edge-test", model_sha256=SHA256)
        return self.send(Event.onset(**values))

    def episode(self, type_: str, bed: str) -> Event:
        """An episode that starts and ends at once (as a short wheeze reaches the view)."""
        event = self.onset(type_, bed)
        assert event.start_sample is not None
        return self.send(event.ended(format_utc(time.time()), event.start_sample + 800))

    def end(self, event: Event) -> Event:
        assert event.start_sample is not None
        return self.send(event.ended(format_utc(time.time()), event.start_sample + 8000))

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def ward_page(
    tmp_path: Path, width: int = 1280, height: int = 800, **dashboard: Any
) -> Iterator[tuple[Any, Device, DashboardProcess]]:
    """A broker, ``lungwatch dashboard`` (no users: loopback, may acknowledge), a device
    publisher and a Chromium on the page (the alarm sound spied on from before the load),
    and the view's process."""
    require_chromium()
    with Mosquitto(tmp_path) as broker:
        path = tmp_path / "view.yaml"
        view = {"site": SITE, "mqtt": {"host": HOST, "port": broker.port},
                "dashboard": {"probe_interval_s": 0, **dashboard}}  # fmt: skip
        path.write_text(yaml.safe_dump(view), encoding="utf-8")
        with DashboardProcess(path) as dashboard_process, chromium(width, height) as driver:
            driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": SPY})
            driver.get(dashboard_process.url)
            wait_until(lambda: driver.execute_script(SNAPSHOT_SHOWN), 15.0, "the page")
            device = Device(broker.port)
            try:
                yield driver, device, dashboard_process
            finally:
                device.stop()


def test_the_alarm_table_reads_and_an_apnoea_is_its_top_visible_row(tmp_path: Path) -> None:
    """Eight beds with advisory, technical and high conditions escalating for a while (two
    escalation steps), then an apnoea on a ninth bed while crackles and wheezes go on."""
    settings = {"alarms": {"escalate_after_s": 1.5}}
    with ward_page(tmp_path, 1280, 800, **settings) as (driver, device, _):
        beds = (("bed-1", "Fine Crackle"), ("bed-2", "Wheeze"), ("bed-3", "tachypnoea"),
                ("bed-4", "poor_signal"), ("bed-5", "Stridor"), ("bed-6", "Coarse Crackle"),
                ("bed-7", "breath_signal_lost"), ("bed-8", "Rhonchi"))  # fmt: skip
        for bed, type_ in beds:
            device.episode(type_, bed)
            if type_ in ("Fine Crackle", "Wheeze"):
                device.episode("poor_signal", bed)  # a bed's second row: its worst is first
        wait_until(lambda: visible(driver)["rows"] == 10, 10.0, "ten condition rows")
        time.sleep(3.5)  # two escalation steps: low to medium, and no further
        apnoea = device.onset("apnoea", "bed-9")
        raised = time.monotonic()
        wait_until(lambda: top_is(driver, "bed-9", "apnoea"), 10.0, "the apnoea on top")
        on_top_s = time.monotonic() - raised
        orders, deadline = [], time.monotonic() + 5.0
        while time.monotonic() < deadline:  # crackles and wheezes go on
            for bed, type_ in (("bed-1", "Fine Crackle"), ("bed-6", "Coarse Crackle"),
                               ("bed-2", "Wheeze")):  # fmt: skip
                device.episode(type_, bed)
            orders.append([tuple(r[:2]) for r in visible(driver)["visible"]])
            time.sleep(0.25)
        shown = visible(driver)
        wrong = driver.execute_script(TABLE_GEOMETRY)
        path = tmp_path / "alarm-table.png"
        driver.save_screenshot(str(path))
        print(
            f"\napnoea on top {on_top_s:.2f} s after its event; {shown['rows']} rows, "
            f"{len(shown['visible'])} in view, {shown['below']} below; screenshot {path}"
        )
        assert wrong == [], wrong
        assert on_top_s <= TOP_ROW_BOUND_S
        assert all(order and order[0] == ("bed-9", "apnoea") for order in orders), orders
        assert len({tuple(order) for order in orders}) == 1, "rows swapped places"
        priorities = {(r[0], r[1]): r[2] for r in shown["visible"]}
        assert priorities[("bed-5", "CAS")] == "high"  # stridor's own priority
        # a family's row names a sound of its own (the snapshot's classes), a wheeze none
        cell = "return document.querySelector('#alarms tr[data-stream=\"{}\"][data-condition=CAS]')"
        said = {
            b: driver.execute_script(cell.format(b) + ".querySelector('td.condition').textContent")
            for b in ("bed-2", "bed-5", "bed-8")
        }
        assert said["bed-5"].startswith("wheezes (CAS) · stridor"), said
        assert said["bed-8"].startswith("wheezes (CAS) · rhonchi"), said
        assert said["bed-2"].split(" · ")[1].endswith("episodes"), said
        advisory = {k: p for k, p in priorities.items() if k[1] not in ("apnoea",)
                    and k != ("bed-5", "CAS")}  # fmt: skip
        assert advisory
        assert set(advisory.values()) <= {"medium"}, advisory
        assert shown["below"] > 0
        assert shown["said"] == shown["below"], shown
        assert apnoea.episode_id in driver.execute_script(
            "return document.querySelector('#alarms tbody tr').dataset.episodes"
        )


def test_a_new_apnoea_is_heard_after_an_acknowledge_and_through_audio_pause(
    tmp_path: Path,
) -> None:
    """The nurse enables the sound; the bed's apnoea sounds the high pattern; she
    acknowledges it and the bed breathes again; a new apnoea 3 s later is a new alarm: top
    row, alarming, heard. She pauses the audio: silence; a new apnoea on another bed ends the
    pause and is heard. Through it all one pattern sounds at a time."""
    with ward_page(tmp_path, audio_pause_s=30) as (driver, device, _):
        driver.find_element("id", "sound").click()  # the gesture browsers ask for
        assert driver.find_element("id", "sound").text == "Alarm sound on"
        assert driver.execute_script("return document.querySelector('#sound-pause').hidden")
        driver.execute_script(LISTEN)
        wait_until(lambda: driver.execute_script("return window.__heard.length") > 5, 5.0,
                   "the listener")  # fmt: skip

        def raise_apnoea(bed: str) -> tuple[Event, float, float]:
            since_ms = driver.execute_script("return Date.now()")
            event, start = device.onset("apnoea", bed), time.monotonic()
            wait_until(lambda: top_is(driver, bed, "apnoea"), 10.0, f"the apnoea of {bed} on top")
            top_s = time.monotonic() - start
            wait_until(lambda: heard_since(driver, since_ms, 880.0), 10.0, "the high pattern")
            heard_s = (min(heard_since(driver, since_ms, 880.0)) - since_ms) / 1000.0
            return event, top_s, heard_s

        first, top_s, heard_s = raise_apnoea("bed-1")
        assert top_s <= TOP_ROW_BOUND_S
        assert heard_s <= HEARD_BOUND_S
        row = '#alarms tr[data-stream="bed-1"][data-condition="apnoea"] button.ack'
        driver.find_element("css selector", row).click()
        wait_until(lambda: driver.execute_script(
            "const r = document.querySelector('#alarms tr[data-condition=\"apnoea\"]');"
            "return r && r.dataset.state === 'acknowledged';"), 5.0, "acknowledged")  # fmt: skip
        acked_ms = driver.execute_script("return Date.now()")
        time.sleep(2.0)  # acknowledged: its pattern stopped, nothing else alarms
        assert heard_since(driver, acked_ms + 100, 880.0) == [], "the pattern went on"
        device.end(first)  # breathing again
        wait_until(lambda: visible(driver)["rows"] == 0, 5.0, "the list empty")
        time.sleep(1.0)

        _, top_s, heard_s = raise_apnoea("bed-1")  # a new apnoea, 3 s after
        print(f"\nnew apnoea after an acknowledge: top row {top_s:.2f} s, heard {heard_s:.2f} s")
        assert top_s <= TOP_ROW_BOUND_S
        assert heard_s <= HEARD_BOUND_S
        since_ms = driver.execute_script("return Date.now()")
        time.sleep(3.0)
        pattern = heard_since(driver, since_ms - 3000, 880.0)
        assert bursts(pattern) >= 6, pattern  # the pattern, pulse by pulse (ten in all)

        driver.find_element("id", "sound-pause").click()
        paused_ms = driver.execute_script("return Date.now()")
        assert driver.find_element("id", "sound-pause").text.startswith("Audio paused")
        time.sleep(2.0)
        assert heard_since(driver, paused_ms + 100, 880.0) == [], "silent while paused"
        _, top_s, heard_s = raise_apnoea("bed-2")  # a new high condition during the pause
        print(f"new apnoea during audio pause: top row {top_s:.2f} s, heard {heard_s:.2f} s")
        assert top_s <= TOP_ROW_BOUND_S
        assert heard_s <= HEARD_BOUND_S
        assert driver.find_element("id", "sound-pause").text.startswith("Pause audio")
        time.sleep(1.0)
        assert overlapping_pulses(driver) == []
        assert driver.execute_script("return window.lwSound.context.state") == "running"


def test_at_the_end_of_audio_pause_one_pattern_sounds(tmp_path: Path) -> None:
    """Two apnoeas alarm; the nurse pauses the audio; when the pause runs out the high
    pattern sounds once, not twice over itself."""
    with ward_page(tmp_path, audio_pause_s=3) as (driver, device, _):
        driver.find_element("id", "sound").click()
        driver.execute_script(LISTEN)
        device.onset("apnoea", "bed-1")
        wait_until(lambda: top_is(driver, "bed-1", "apnoea"), 10.0, "the apnoea")
        device.onset("Wheeze", "bed-2")
        device.onset("apnoea", "bed-3")
        wait_until(lambda: visible(driver)["rows"] == 3, 10.0, "three rows")
        time.sleep(1.0)
        driver.find_element("id", "sound-pause").click()
        paused = driver.execute_script("return [Date.now(), window.__pulses.length]")
        for _ in range(3):  # updates come meanwhile, as on a ward
            device.onset("Wheeze", "bed-2")
            time.sleep(1.0)
        time.sleep(2.5)
        started = driver.execute_script("return window.__pulses")[paused[1] :]
        after = [p for p in started if p[2] >= paused[0] + 2900]
        assert len(after) == 10, started  # one high pattern: two bursts of five
        assert overlapping_pulses(driver) == []
        time.sleep(3.0)  # the whole pattern (2.8 s) has left the page
        assert bursts(heard_since(driver, paused[0] + 2900, 880.0)) >= 6


@pytest.mark.parametrize("reason", [SHUTDOWN_REASON, "connection lost"])
def test_an_alarm_restored_after_its_device_shut_down_leaves_the_page(
    tmp_path: Path, reason: str
) -> None:
    """The nurse acknowledges a bed's latched apnoea; the view stops before the device ends
    it. The device stops while the view is away (``shutdown``: its stream ends, the apnoea
    with it, an end the view keeps no session for) and its retained status says why. The view
    starts again on its history: after a clean shutdown the row leaves the page; after the
    last will (``connection lost``) it stays, acknowledged and latched, its device offline."""
    history = str(tmp_path / "ward-history.sqlite")
    with ward_page(tmp_path, history_path=history) as (driver, device, view):
        apnoea = device.onset("apnoea", "bed-1")
        device.send(apnoea.ongoing(detail={**apnoea.detail, "latched": True}))
        row = '#alarms tr[data-stream="bed-1"][data-condition="apnoea"]'
        read = (f"const r = document.querySelector('{row}'); return r ? [r.dataset.state, "
                "r.dataset.latched, r.children[2].textContent] : [];")  # fmt: skip
        wait_until(lambda: driver.execute_script(read)[1:2] == ["true"], 10.0,
                   "the latched apnoea")  # fmt: skip
        driver.find_element("css selector", f"{row} button.ack").click()
        wait_until(lambda: driver.execute_script(read)[:1] == ["acknowledged"], 5.0,
                   "the apnoea acknowledged")  # fmt: skip
        view.stop()
        if reason == SHUTDOWN_REASON:
            device.end(apnoea)  # its stream's end, while the view is away
        device.put(f"{ROOT}/status", status_payload("offline", SITE, DEVICE, reason), True)
        view.start()
        driver.get(view.url)
        wait_until(lambda: driver.execute_script(SNAPSHOT_SHOWN), 15.0, "the page")
        badge = (f"return document.querySelector('section[data-device=\"{DEVICE}\"] "
                 ".badge.online').textContent")  # fmt: skip
        wait_until(lambda: driver.execute_script(badge) == f"offline ({reason})", 10.0,
                   "the device offline")  # fmt: skip
        if reason == SHUTDOWN_REASON:
            wait_until(lambda: visible(driver)["rows"] == 0, 5.0, "the apnoea off the list")
        else:
            time.sleep(1.0)  # what the view does with the status has reached the page
            assert visible(driver)["visible"] == [["bed-1", "apnoea", "high", "acknowledged"]]
            assert driver.execute_script(read) == ["acknowledged", "true", f"{DEVICE} (offline)"]


CONTRAST = """
const lum = (css) => { const [r, g, b] = css.match(/\\d+(\\.\\d+)?/g).slice(0, 3).map(Number)
  .map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
const s = getComputedStyle(arguments[0]);
const [a, b] = [lum(s.color), lum(s.backgroundColor)].sort((x, y) => y - x);
return (a + 0.05) / (b + 0.05);
"""
SHOWN_BADGES = (  # the header's and devices' badges a person sees: [id or class, text]
    "return [...document.querySelectorAll('.badge')].filter((b) => b.offsetParent !== null)"
    ".map((b) => [b.id || b.className, b.textContent.trim()]);"
)


def test_the_header_and_badges_say_only_what_is_true(tmp_path: Path) -> None:
    """No pause button while nothing alarms and no empty badge; the sound buttons' words
    readable on their colours (WCAG 4.5:1); a latched alarm known only from its bed's
    summary reads "latched", not "latched (condition ended )"; when the page's stream
    breaks, the broker's state is not claimed ("broker ?" beside "reconnecting…")."""
    from lungwatch.events import summary_payload, summary_topic

    with ward_page(tmp_path) as (driver, device, view):
        device.put(f"{ROOT}/metrics", json.dumps({
            "schema_version": 1, "site": SITE, "device_id": DEVICE, "stream_id": "bed-1",
            "utc": format_utc(time.time()), "metrics": {"frames": 1}}))  # fmt: skip
        wait_until(lambda: driver.find_elements("css selector", "article.bed"), 10.0, "a bed")
        shown = driver.execute_script(SHOWN_BADGES)
        assert all(text for _, text in shown), shown
        assert "sound-pause" not in [name for name, _ in shown]
        sound = driver.find_element("id", "sound")
        assert driver.execute_script(CONTRAST, sound) >= 4.5
        sound.click()
        assert sound.text == "Alarm sound on"
        assert driver.execute_script(CONTRAST, sound) >= 4.5
        assert not driver.find_element("id", "sound-pause").is_displayed()  # nothing alarms
        row = {"episode_id": "ep-latched-1", "type": "apnoea", "kind": "physiological",
               "priority": "high", "start_utc": format_utc(time.time() - 60),
               "key": "apnoea@1", "latched": True}  # fmt: skip
        body = {"name": "Bed 1", "location": "Bay A", "open": [row], "utc": format_utc(time.time())}
        device.put(summary_topic(SITE, DEVICE, "bed-1"),
                   summary_payload(SITE, DEVICE, "bed-1", body), True)  # fmt: skip
        state = '#alarms tr[data-condition="apnoea"] td.alarm-state'
        text = wait_until(lambda: driver.execute_script(
            f"const c = document.querySelector('{state}'); return c && c.textContent;"),
            10.0, "the latched apnoea")  # fmt: skip
        assert text == "ALARM · latched", text
        pause = driver.find_element("id", "sound-pause")
        wait_until(pause.is_displayed, 5.0, "the pause button while an apnoea alarms")
        assert driver.execute_script(CONTRAST, pause) >= 4.5
        assert all(text for _, text in driver.execute_script(SHOWN_BADGES))
        view.stop()  # the page's stream breaks
        connection = "return document.querySelector('#connection').textContent"
        wait_until(lambda: driver.execute_script(connection) == "reconnecting…", 10.0,
                   "the page reconnecting")  # fmt: skip
        broker = "return document.querySelector('#broker').textContent"
        assert driver.execute_script(broker) == "broker ?"
