"""The ward view in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven
by Selenium), against real brokers and real processes, as a nurse would use it:

- a ``lungwatch run`` device (the shipped streaming model on the three recordings in
  ``examples/``, paced in real time, looping) and ``lungwatch dashboard`` on a Mosquitto that
  needs a password: the beds appear with their live strips; each alarm is pushed to the page
  (on screen within ALARM_BOUND_S of its MQTT event; how fast is measured, against its target,
  by ``python -m bench.ward``, not here); a view-only user sees no Acknowledge button and a
  forged POST is refused (403, nothing published); acknowledging from the page publishes the
  command and the episode's acknowledged ``ended`` comes back to the page; SIGKILL of the
  runtime (the broker's last will) turns the device and its beds offline;
- ``lungwatch demo --realtime --hold`` (embedded amqtt broker): the three demo beds;
- 200 beds publishing events at the demo's rate: the time from each event's publish to its
  row on the screen, measured in the browser.

Screenshots go to pytest's ``tmp_path`` (the path is printed). Skipped, with the reason,
where Chromium or its driver is missing (``make test`` installs them) or Mosquitto is.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml

from edge.sinks.live import live_payload, live_topic
from lungwatch.alarms import condition_of
from lungwatch.commandauth import derive_device_key, new_key, write_key
from lungwatch.events import Event, status_payload
from tests.brokers import HOST, SHA256, Message, Mosquitto, Recorder, make_password_file
from tests.wardview.browser import (
    REPO_ROOT,
    SNAPSHOT_SHOWN,
    DashboardProcess,
    authorise,
    chromium,
    require_chromium,
    user_entry,
    wait_until,
)
from wardview.plot import MARGIN_PX

SITE, DEVICE = "ward-b", "edge-b"
ROOT = f"lungwatch/v1/{SITE}/{DEVICE}"
BROKER_USER, BROKER_PASSWORD = "ward", "br0ker-pw"
NURSE, PORTER = ("nurse", "nurse-pw"), ("porter", "porter-pw")
RECORDS = ("64913238_0.6_1_p3_2175", "41161556_1.7_0_p2_3062", "65099422_0.5_0_p3_2599")
# each alarm reaches the open page (the view pushes its alarm list at most every second). Not
# a speed target, which bench.ward measures (event -> screen p99 0.2 s against 1 s): here, beside
# the suite's other worker on 2 CPUs with the device, the broker, the view and the browser,
# the worst alarm took 1.2-3.1 s
ALARM_BOUND_S = 10.0
TIMED_ALARMS = 3  # alarms whose time to the screen is measured
ROW_BOUND_S = 1.0
SUBPROCESS_ENV = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}

pytestmark = pytest.mark.slow


class TimedRecorder(Recorder):
    """A Recorder that also keeps the wall time each message arrived (time.time())."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrived: list[float] = []

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._cond:
            self.arrived.append(time.time())
        super()._on_message(client, userdata, message)

    def timed(self) -> list[tuple[float, Message]]:
        with self._cond:
            return list(zip(self.arrived, self.messages, strict=True))


def page(driver: Any, script: str) -> Any:
    return driver.execute_script(script)


def bed_states(driver: Any) -> dict[str, str]:
    """Bed name -> the state text shown on its card."""
    return page(
        driver,
        "const out = {}; document.querySelectorAll('article.bed').forEach(b => "
        "{ out[b.dataset.stream] = b.querySelector('.state').textContent; }); return out;",
    )


FIRST_ACKABLE = (  # a latched condition's row with its button: [its episodes, bed, condition]
    "const b = document.querySelector('#alarms tr[data-latched=\"true\"] button.ack');"
    "if (!b) return null; const row = b.closest('tr');"
    "return [row.dataset.episodes, row.dataset.stream, row.dataset.condition];"
)


def condition_row(stream: str, condition: str) -> str:
    return f'#alarms tr[data-stream="{stream}"][data-condition="{condition}"]'


def click(driver: Any, selector: str) -> bool:
    """Click the element if it is there (False if not, or replaced meanwhile)."""
    from selenium.common.exceptions import StaleElementReferenceException

    found = driver.find_elements("css selector", selector)
    try:
        if found:
            found[0].click()
    except StaleElementReferenceException:
        return False
    return bool(found)


def text_of(driver: Any, selector: str) -> str | None:
    """The rendered text of the first match, read in one step (None if none).

    The page replaces rows and cards as events arrive; a WebElement found first and read
    later may be gone by then, so text is read inside the page instead.
    """
    script = "const e = document.querySelector(arguments[0]); return e ? e.innerText.trim() : null;"
    return driver.execute_script(script, selector)


def live_on_every_bed(driver: Any) -> bool:
    # textContent: a card far off the screen is not rendered (content-visibility), its text is
    texts = "return [...document.querySelectorAll('.live')].map(e => e.textContent);"
    return all("quality" in t for t in driver.execute_script(texts))


def screenshot(driver: Any, path: Path) -> Path:
    driver.save_screenshot(str(path))
    print(f"\nscreenshot: {path}")
    return path


# -- a running device --------------------------------------------------------------------
@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    password_file = make_password_file(tmp_path, BROKER_USER, BROKER_PASSWORD)
    with Mosquitto(tmp_path, password_file=password_file) as broker:
        yield broker


def ward_config(tmp_path: Path, port: int) -> Path:
    """A runtime YAML: the demo's model on the three example recordings (paced, looping),
    crackles and wheezes high priority (so they latch until acknowledged), the broker's
    password, and a dashboard block with an ``ack`` and a ``view`` user."""
    streams = [
        {"id": f"bed-{i + 1}", "source": str(REPO_ROOT / "examples" / f"{record}.flac"),
         "realtime": True, "loop": True}
        for i, record in enumerate(RECORDS)
    ]  # fmt: skip
    high = [{"type": t, "priority": "high"} for t in ("Wheeze", "Fine Crackle", "Coarse Crackle")]
    master = new_key()  # the site's command master key (the view) and the device's own key
    master_file = write_key(tmp_path / "keys" / "command-master.key", master)
    device_file = write_key(
        tmp_path / "keys" / "device.command.key", derive_device_key(master, SITE, DEVICE)
    )
    config = {
        "site": SITE,
        "device_id": DEVICE,
        "model": {"dir": str(REPO_ROOT / "models" / "sed"), "file": "model.int8.onnx"},
        "backend": {"kind": "onnxruntime", "providers": ["cpu"], "intra_op_threads": 1},
        "streams": streams,
        "detector": {"priorities": high, "latching": ["high"]},
        "sinks": {"stdout": False, "jsonl": None, "mqtt": True},
        "mqtt": {
            "host": HOST, "port": port, "username": BROKER_USER, "password": BROKER_PASSWORD,
            "spool_path": str(tmp_path / "spool.sqlite"), "connect_timeout_s": 5.0,
            "require_broker_at_start": True,
        },
        "dashboard": {"users": [user_entry(NURSE[0], "ack", NURSE[1]),
                                user_entry(PORTER[0], "view", PORTER[1])],
                      "command_key_file": str(master_file)},
        "commands": {"key_file": str(device_file)},
        "metrics_interval_s": 2.0,
    }  # fmt: skip
    path = tmp_path / "ward.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture
def runtime_process(tmp_path: Path, password_broker: Mosquitto) -> Iterator[subprocess.Popen[str]]:
    config = ward_config(tmp_path, password_broker.port)
    with running_device(config, tmp_path / "runtime.log") as process:
        yield process


@contextmanager
def running_device(config: Path, log_path: Path) -> Iterator[subprocess.Popen[str]]:
    """``lungwatch run --config CONFIG -v`` (output to ``log_path``), killed on exit."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "lungwatch.cli", "run", "--config", str(config), "-v"],
            stdout=log, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT,
            env={**os.environ, **SUBPROCESS_ENV},
        )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def forged_ack(url: str, user: tuple[str, str], body: dict[str, str]) -> int:
    import base64

    token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    request = urllib.request.Request(
        url + "api/acknowledge",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def alarm_latencies(driver: Any, recorder: TimedRecorder) -> list[tuple[str, float]]:
    """(episode, seconds from the arrival of its first MQTT message at a subscriber on the same
    broker to its alarm row on the screen) for every alarm the page has shown."""
    shown: dict[str, float] = page(driver, "return window.lwAlarmShown")
    first: dict[str, float] = {}
    for arrived, message in recorder.timed():
        if message.topic.endswith("/event"):
            first.setdefault(message.json()["episode_id"], arrived)
    return [(ep, ms / 1000.0 - first[ep]) for ep, ms in shown.items() if ep in first]


def test_ward_view_of_a_running_device(
    tmp_path: Path, password_broker: Mosquitto, runtime_process: subprocess.Popen[str]
) -> None:
    require_chromium()
    creds = (BROKER_USER, BROKER_PASSWORD)
    config = tmp_path / "ward.yaml"
    with (
        TimedRecorder(password_broker.port, topic="lungwatch/v1/#", credentials=creds) as recorder,
        DashboardProcess(config) as dashboard,
        chromium(1200, 640) as driver,
    ):
        authorise(driver, *NURSE)
        driver.get(dashboard.url)
        wait_until(lambda: page(driver, SNAPSHOT_SHOWN), 15.0, "the first snapshot")
        assert "nurse: may view and acknowledge" in driver.find_element("id", "user").text

        # the beds appear, the device is online, the live strip moves
        beds = ["bed-1", "bed-2", "bed-3"]
        wait_until(lambda: sorted(bed_states(driver)) == beds, 60.0, "the three beds")
        device = f'section.device[data-device="{DEVICE}"]'
        wait_until(lambda: "online" in (text_of(driver, f"{device} .online") or ""),
                   30.0, "the device online")  # fmt: skip
        wait_until(lambda: live_on_every_bed(driver), 30.0, "a live-strip point on every bed")
        assert "beds served: 3" in text_of(driver, device)
        # three paced beds: the device's loop keeps up (its worst bed's read wait, not behind)
        shown = wait_until(lambda: "read wait: " in (t := text_of(driver, device) or "") and t,
                           30.0, "the device's read wait")  # fmt: skip
        assert "behind" not in shown
        lives = [m for m in recorder.messages if m.topic.endswith("/live")]
        assert {m.topic for m in lives} == {f"{ROOT}/{b}/live" for b in beds}
        assert not any(m.retain for m in lives)

        # a latched alarm with its button; every alarm pushed to the screen (ALARM_BOUND_S)
        episodes, stream, condition = wait_until(
            lambda: page(driver, FIRST_ACKABLE), 120.0, "a latched alarm with an Acknowledge button"
        )
        latencies = wait_until(
            lambda: (found := alarm_latencies(driver, recorder)) and len(found) >= TIMED_ALARMS
            and found, 90.0, f"{TIMED_ALARMS} alarms on the page",
        )  # fmt: skip
        seconds = [s for _, s in latencies]
        worst = max(seconds)
        print(f"\nalarm on screen after its MQTT event: {len(latencies)} alarms, "
              f"max {worst * 1000:.0f} ms, median {np.median(seconds) * 1000:.0f} ms")  # fmt: skip
        assert worst <= ALARM_BOUND_S, latencies
        screenshot(driver, tmp_path / "ward-view.png")

        # a view-only user: no button; a forged POST is refused and publishes nothing
        latched = next(
            e for e in map(Event.from_json, (m.payload for m in recorder.events()))
            if e.episode_id in episodes.split() and e.detail.get("latched")
        )  # fmt: skip
        episode, target = latched.episode_id, condition
        assert condition == condition_of(latched.type)
        authorise(driver, *PORTER)
        driver.get(dashboard.url)
        wait_until(lambda: page(driver, SNAPSHOT_SHOWN), 15.0, "the porter's snapshot")
        assert "porter: view only" in driver.find_element("id", "user").text
        wait_until(
            lambda: driver.find_elements("css selector", condition_row(stream, condition)),
            10.0, "the latched alarm on the porter's page",
        )  # fmt: skip
        assert driver.find_elements("css selector", "#alarms button.ack") == []
        commands = lambda ms: [m for m in ms if m.topic.endswith("/command")]  # noqa: E731
        body = {"device_id": DEVICE, "stream_id": stream, "target": target}
        assert forged_ack(dashboard.url, PORTER, body) == 403
        assert not recorder.wait_for(lambda ms: bool(commands(ms)), 1.0), "nothing published"

        # the nurse acknowledges from the page: command out, acknowledged ended back
        authorise(driver, *NURSE)
        driver.get(dashboard.url)
        wait_until(lambda: page(driver, SNAPSHOT_SHOWN), 15.0, "the nurse's snapshot")
        button = f"{condition_row(stream, condition)} button.ack"
        wait_until(lambda: click(driver, button), 10.0, "a click on the alarm's button")
        assert recorder.wait_for(lambda ms: bool(commands(ms)), 10.0), "no command published"
        [command] = commands(recorder.messages)
        assert command.topic == f"{ROOT}/command"
        sent = command.json()
        assert {k: sent[k] for k in ("action", "stream_id", "target", "user")} == {
            "action": "acknowledge",
            "stream_id": stream,
            "target": target,
            "user": NURSE[0],
        }
        assert len(sent["sig"]) == 64, "signed for the device (lungwatch.commandauth)"
        acked = f'article.bed[data-stream="{stream}"] li[data-episode="{episode}"] .acked'
        shown = wait_until(lambda: text_of(driver, acked), 15.0,
                           "the acknowledged end on the page")  # fmt: skip
        assert shown.startswith("acknowledged "), shown
        ended = [
            e for e in map(Event.from_json, (m.payload for m in recorder.events()))
            if e.episode_id == episode and e.state == "ended"
        ]  # fmt: skip
        assert ended[0].detail["ended_by"] == "acknowledge"
        assert ended[0].detail["acknowledged_by"] == NURSE[0]
        alarm_row = f'#alarms tr[data-episodes~="{episode}"]'
        wait_until(
            lambda: not driver.find_elements("css selector", alarm_row),
            5.0, "the acknowledged episode to leave the list",
        )  # fmt: skip
        # quiet now; crackles here are high, and a high condition does not continue past its
        # episodes: a crackle after the acknowledged one is a new condition, alarming anew
        raised = f'{condition_row(stream, condition)}[data-state="alarming"]'
        for row in driver.find_elements("css selector", raised):
            assert row.get_attribute("data-raised") > latched.start_utc

        # SIGKILL: the broker publishes the last will; device and beds go offline
        killed_s = time.monotonic()
        runtime_process.send_signal(signal.SIGKILL)
        runtime_process.wait(timeout=10)
        wait_until(lambda: set(bed_states(driver).values()) == {"offline"}, 15.0, "beds offline")
        badge = text_of(driver, f"{device} .online")
        assert badge == "offline (connection lost)", badge
        print(f"device offline on the page {time.monotonic() - killed_s:.2f} s after SIGKILL")
        screenshot(driver, tmp_path / "ward-view-offline.png")


# -- the demo ----------------------------------------------------------------------------
def test_demo_shows_its_three_beds(tmp_path: Path) -> None:
    require_chromium()
    process = subprocess.Popen(
        [sys.executable, "-m", "lungwatch.cli", "demo", "--realtime", "--hold",
         "--set", f"out_dir={tmp_path / 'out'}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, **SUBPROCESS_ENV},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        url = None
        for _ in range(20):
            line = process.stdout.readline()
            if line.startswith("dashboard: "):
                url = line.split()[1]
                break
        assert url is not None, line
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), url
        reader = threading.Thread(target=process.stdout.read, daemon=True)
        reader.start()  # keep the pipe drained
        with chromium() as driver:
            driver.get(url)
            wait_until(lambda: page(driver, SNAPSHOT_SHOWN), 15.0, "the snapshot")
            wait_until(lambda: sorted(bed_states(driver)) == ["bed-1", "bed-2", "bed-3"], 30.0,
                       "the three demo beds")  # fmt: skip
            device = 'section.device[data-device="demo-edge"]'
            wait_until(lambda: "online" in (text_of(driver, device) or ""), 10.0,
                       "the demo device online")  # fmt: skip
            wait_until(lambda: live_on_every_bed(driver), 15.0, "the live strips",
            )  # fmt: skip
            assert "local: may view and acknowledge" in driver.find_element("id", "user").text
            screenshot(driver, tmp_path / "demo.png")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


# -- 200 beds ----------------------------------------------------------------------------
DEVICES, BEDS_PER_DEVICE = 4, 50  # 200 beds
# docs/demo.md: 24 event messages for 33.8 s of audio on 3 beds, i.e. 0.71 per bed-second
DEMO_EVENTS_PER_BED_S = 24 / 33.8
RUN_S = 20.0


class WardPublisher:
    """Publishes, like 4 devices of 50 beds: a retained ``online`` status per device, one
    live point per bed per second and valid events (Wheeze / Fine Crackle onsets and their
    ends) at the demo's rate, spread evenly; keeps each event id's publish time."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.max_inflight_messages_set(1000)
        self.client.connect(HOST, port)
        self.client.loop_start()
        self.published: dict[str, float] = {}
        self.rng = np.random.default_rng(14)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def beds(self) -> list[tuple[str, str]]:
        return [
            (f"dev-{d + 1}", f"bed-{b + 1}") for d in range(DEVICES) for b in range(BEDS_PER_DEVICE)
        ]

    def run(self, seconds: float) -> None:
        for device in {d for d, _ in self.beds()}:
            payload = status_payload("online", SITE, device, "connected")
            self.client.publish(f"lungwatch/v1/{SITE}/{device}/status", payload, 1, retain=True)
        beds = self.beds()
        open_events: dict[tuple[str, str], Event] = {}
        interval_s = 1.0 / (DEMO_EVENTS_PER_BED_S * len(beds))
        start_s = time.monotonic()
        next_live_s, n = start_s, 0
        while (now_s := time.monotonic()) < start_s + seconds:
            if now_s >= next_live_s:
                self._live(beds)
                next_live_s += 1.0
            self._event(beds[int(self.rng.integers(len(beds)))], open_events)
            n += 1
            time.sleep(max(0.0, start_s + n * interval_s - time.monotonic()))

    def _event(self, bed: tuple[str, str], open_events: dict[tuple[str, str], Event]) -> None:
        device, stream = bed
        previous = open_events.pop(bed, None)
        if previous is not None:
            event = previous.ended(_utc(time.time()), end_sample=previous.start_sample + 8000)  # type: ignore[operator]
        else:
            event = Event.onset(
                type=str(self.rng.choice(["Wheeze", "Fine Crackle"])), site=SITE,
                device_id=device, stream_id=stream, start_utc=_utc(time.time()),
                start_sample=int(time.time() * 8000) % 10**9, confidence=0.9,
                model_id="edge-test", model_sha256=SHA256, quality={"score": 0.99},
            )  # fmt: skip
            open_events[bed] = event
        self.published[event.id] = time.time()
        self.client.publish(event.topic, event.to_json(), qos=1)

    def _live(self, beds: list[tuple[str, str]]) -> None:
        for device, stream in beds:
            values = self.rng.random(3) * [0.3, 1.0, 1.0]
            point = {
                "utc": _utc(time.time()), "interval_s": 1.0, "frames": 25,
                "classes": dict(zip(("Wheeze", "Fine Crackle", "Normal"),
                                    np.round(values, 3).tolist(), strict=True)),
                "quality_score": 0.99,
            }  # fmt: skip
            self.client.publish(
                live_topic(SITE, device, stream), live_payload(SITE, device, stream, point), 0
            )


def strip_pixels(card: str) -> str:
    """A script: how many pixels of the card's live strip are drawn."""
    return (
        f"const c = document.querySelector('{card} canvas.strip');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;"
    )


def _utc(seconds: float) -> str:
    from lungwatch.events import format_utc

    return format_utc(seconds)


def test_200_beds_event_to_screen_within_one_second(tmp_path: Path) -> None:
    require_chromium()
    config = tmp_path / "dash.yaml"
    with Mosquitto(tmp_path) as broker:
        config.write_text(
            yaml.safe_dump({"site": SITE, "mqtt": {"host": HOST, "port": broker.port}})
        )
        with DashboardProcess(config) as dashboard, chromium(1600, 1200) as driver:
            driver.get(dashboard.url)
            wait_until(lambda: page(driver, SNAPSHOT_SHOWN), 15.0, "the snapshot")
            publisher = WardPublisher(broker.port)
            try:
                publisher.run(RUN_S)
            finally:
                publisher.stop()
            published = publisher.published

            def rendered() -> dict[str, float]:
                return page(driver, "return window.lwRendered")  # type: ignore[no-any-return]

            wait_until(lambda: set(published) <= set(rendered()), 10.0, "every event's row")
            shown = rendered()
            assert page(driver, "return document.querySelectorAll('article.bed').length") == 200
            screenshot(driver, tmp_path / "ward-200-beds.png")
            # every bed's live text is current; the strips are drawn on the screen and near
            # it, and a bed far below draws its strip when the nurse scrolls to it
            assert live_on_every_bed(driver)
            first, last = 'article.bed[data-stream="bed-1"]', 'section.device:last-child ' \
                'article.bed:last-child'  # fmt: skip
            assert page(driver, strip_pixels(first)) > 0
            assert page(driver, strip_pixels(last)) == 0
            page(driver, f"document.querySelector('{last}').scrollIntoView()")
            wait_until(lambda: page(driver, strip_pixels(last)) > 0, 5.0, "the strip drawn")
    latencies = np.array([shown[i] / 1000.0 - t for i, t in published.items()])
    p50, p99, worst = np.percentile(latencies, [50, 99, 100])
    rate = len(published) / RUN_S
    print(
        f"\n200 beds, {len(published)} events in {RUN_S:g} s ({rate:.0f}/s, demo rate "
        f"{DEMO_EVENTS_PER_BED_S:.2f}/bed/s) + 200 live points/s: publish -> row on screen "
        f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {worst * 1000:.0f} ms"
    )
    assert latencies.min() > 0.0, "a row before its publish: the clocks are not comparable"
    assert worst <= ROW_BOUND_S, f"max {worst:.3f} s"


# -- a ward view that keeps working and tells the truth --------------------------------------
DEEP = b"[" * 10_000 + b"]" * 10_000  # RecursionError in an unguarded parser
HUGE_INT = "9" * 401  # OverflowError where a report's number is turned into a float


def view_config(tmp_path: Path, port: int, **dashboard: Any) -> Path:
    """A ``lungwatch dashboard`` YAML for the broker on ``port`` (no users: loopback)."""
    path = tmp_path / "view.yaml"
    data = {"site": SITE, "mqtt": {"host": HOST, "port": port}, "dashboard": dashboard}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@contextmanager
def view_page(tmp_path: Path, **dashboard: Any) -> Iterator[tuple[Mosquitto, Any, Any]]:
    """A broker, a ``lungwatch dashboard`` on it (``dashboard``: its settings) and a browser
    page showing the view's first snapshot: (broker, dashboard, driver)."""
    require_chromium()
    with Mosquitto(tmp_path) as broker:
        config = view_config(tmp_path, broker.port, **dashboard)
        with DashboardProcess(config) as view, chromium() as driver:
            driver.get(view.url)
            wait_until(lambda: page(driver, SNAPSHOT_SHOWN), 15.0, "the snapshot")
            yield broker, view, driver


class Device:
    """A paho client publishing, as a device would, and whatever else a test sends (QoS 1,
    each publish awaited: the broker keeps their order)."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.connect(HOST, port)
        self.client.loop_start()

    def put(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5.0)

    def online(self) -> None:
        self.put(f"{ROOT}/status", status_payload("online", SITE, DEVICE, "connected"), True)

    def metrics(self, extra: str = "") -> None:
        """A metrics report of bed-1; ``extra``: raw JSON text first among its metrics."""
        head = json.dumps({"schema_version": 1, "site": SITE, "device_id": DEVICE,
                           "stream_id": "bed-1", "utc": _utc(time.time())})  # fmt: skip
        self.put(f"{ROOT}/metrics", f'{head[:-1]}, "metrics": {{{extra}"frames": 25}}}}')

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def text(driver: Any, selector: str) -> str:
    return str(page(driver, f"return document.querySelector('{selector}').textContent"))


def test_one_hostile_message_does_not_silence_the_ward_view(tmp_path: Path) -> None:
    """The security probe's two messages (a 10,000-deep JSON array on an event topic, a
    401-digit integer in a metrics report) once stopped the dashboard's MQTT thread for good
    while the page went on saying "live" and "broker connected". Now they are rejected and
    counted per reason, in the page's header and the snapshot, and the next real event still
    reaches the page."""
    with view_page(tmp_path) as (broker, dashboard, driver):
        device = Device(broker.port)
        try:
            device.online()
            device.put(f"{ROOT}/bed-1/event", DEEP)
            device.metrics(f'"read_wait_ms_p99": {HUGE_INT}, ')
            event = Event.onset(
                type="Wheeze", site=SITE, device_id=DEVICE, stream_id="bed-1",
                start_utc=_utc(time.time()), start_sample=8000, confidence=0.9,
                model_id="edge-test", model_sha256=SHA256, quality={"score": 0.99},
            )  # fmt: skip
            device.put(event.topic, event.to_json())
        finally:
            device.stop()
        wait_until(lambda: event.id in page(driver, "return window.lwRendered"), 15.0,
                   "the real event after the hostile ones on the page")  # fmt: skip
        rejected = wait_until(lambda: text(driver, "#rejected"), 5.0, "the rejected count")
        assert rejected == (
            "2 message(s) rejected (too_deep 1, bad_number 1); last: "
            f"bad_number: {ROOT}/metrics: an integer of 401 digits (at most 19)"
        )
        assert text(driver, "#broker") == "broker connected"
        assert text(driver, "#connection") == "live"
        with urllib.request.urlopen(dashboard.url + "api/state", timeout=10) as reply:
            state = json.loads(reply.read())
        assert state["rejected_reasons"] == {"too_deep": 1, "bad_number": 1}
        assert [a["episode_id"] for a in state["alarms"]] == [event.episode_id]


def test_the_page_says_when_a_device_the_broker_or_its_own_stream_goes_quiet(
    tmp_path: Path,
) -> None:
    """``stale_after_s`` 2 s, ``probe_interval_s`` 0.5 s, ``heartbeat_interval_s`` 0.3 s:

    - a device that is online but sends nothing: ``no messages for N s``, its beds ``no data
      from the device``, until it reports again;
    - the broker stopped (SIGSTOP: its connections stay open, nothing is answered):
      ``broker stale: nothing heard for N s``, ``broker connected`` once it answers again;
    - the dashboard's own process stopped: the page's stream gets no heartbeat, the page says
      so (``broker ?``: not known) and greys the ward, and is ``live`` again after it resumes.

    The page's script and stylesheet run under the server's Content-Security-Policy."""
    settings = {"stale_after_s": 2.0, "probe_interval_s": 0.5, "heartbeat_interval_s": 0.3}
    with view_page(tmp_path, **settings) as (broker, dashboard, driver):
        assert dashboard.process is not None
        header = "return getComputedStyle(document.querySelector('header')).backgroundColor"
        assert page(driver, header) == "rgb(38, 50, 56)", "style.css applies"
        device = Device(broker.port)
        try:
            device.online()
            device.metrics()
            bed = 'article.bed[data-stream="bed-1"] .state'
            wait_until(lambda: driver.find_elements("css selector", bed), 10.0, "bed-1")
            silent = f'section.device[data-device="{DEVICE}"] .silent'
            wait_until(lambda: text(driver, silent).startswith("no messages for "), 15.0,
                       "the device silent")  # fmt: skip
            assert text(driver, bed) == "no data from the device"
            device.metrics()
            wait_until(lambda: text(driver, bed) == "breathing normal", 10.0, "data again")
            assert page(driver, f"return document.querySelector('{silent}').hidden")
        finally:
            device.stop()
        try:
            broker.pause()
            wait_until(lambda: text(driver, "#broker").startswith(
                "broker stale: nothing heard for "), 15.0, "the broker stale")  # fmt: skip
        finally:
            assert broker.process is not None
            broker.process.send_signal(signal.SIGCONT)
        wait_until(lambda: text(driver, "#broker") == "broker connected", 15.0,
                   "the broker connected again")  # fmt: skip
        try:
            dashboard.process.send_signal(signal.SIGSTOP)
            wait_until(lambda: text(driver, "#connection").startswith(
                "no heartbeat from the server for "), 15.0, "the stream stalled")  # fmt: skip
            assert text(driver, "#broker") == "broker ?"
            assert page(driver, "return document.body.classList.contains('stream-down')")
            screenshot(driver, tmp_path / "ward-view-stream-down.png")
        finally:
            dashboard.process.send_signal(signal.SIGCONT)
        wait_until(lambda: text(driver, "#connection") == "live", 15.0, "the stream back")
        assert text(driver, "#broker") == "broker connected"
        assert not page(driver, "return document.body.classList.contains('stream-down')")


# -- breathing -------------------------------------------------------------------------------
def test_a_beds_rate_trend_and_apnoea_on_the_page(
    tmp_path: Path, password_broker: Mosquitto
) -> None:
    """A device paced in real time on a synthetic chest (20 breaths a minute, then 30 s of
    heart sounds only, then breathing again): the bed's card shows its rate and draws its
    trend; the apnoea comes as a high-priority alarm and the bed's state says apnoea. The
    nurse enabled the alarm sound at login: the apnoea starts the high-priority pattern (two
    bursts of five pulses), heard through the browser's own Web Audio oscillators (a spy on
    ``OscillatorNode.start``, installed before the page loads), the title says ALARM, and
    "Pause audio" silences it for a counted two minutes."""
    import soundfile

    from tests.edge.breathing_audio import RATE_HZ, chest_audio

    require_chromium()
    audio = tmp_path / "chest.wav"
    soundfile.write(audio, chest_audio(62.0, 20.0, pause=(22.0, 52.0)), RATE_HZ,
                    subtype="PCM_16")  # fmt: skip
    config = yaml.safe_load(ward_config(tmp_path, password_broker.port).read_text())
    config["streams"] = [{"id": "bed-rr", "source": str(audio), "realtime": True,
                          "age_years": 40}]  # fmt: skip
    config["respiration_publish_s"] = 2.0
    path = tmp_path / "ward-rr.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with (
        running_device(path, tmp_path / "runtime.log"),
        DashboardProcess(path) as dashboard,
        chromium(1200, 640) as driver,
    ):
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": OSC_SPY})
        authorise(driver, *NURSE)
        driver.get(dashboard.url)
        wait_until(lambda: page(driver, SNAPSHOT_SHOWN), 15.0, "the first snapshot")
        driver.find_element("id", "sound").click()  # the gesture browsers ask for
        assert driver.find_element("id", "sound").text == "Alarm sound on"
        rate = 'article.bed[data-stream="bed-rr"] .rate'
        shown = wait_until(lambda: page(driver, RATE_TEXT), 30.0, "a rate on the card")
        assert re.fullmatch(r"RR (19|20|21)/min \(normal 9-24, adult\)", shown), shown
        wait_until(lambda: page(driver, TREND_DRAWN) > 0, 10.0, "the rate's trend drawn")
        row = wait_until(
            lambda: text_of(driver, '#alarms tr[data-type="apnoea"]'), 45.0, "the apnoea alarm"
        )
        assert "high" in row.lower(), row
        log = "return window.lwSound.log.filter((p) => p.priority === 'high')"
        high = wait_until(lambda: page(driver, log), 5.0, "the high-priority pattern")
        assert high[0]["pulses"] == 10
        starts = page(driver, "return window.__oscStarts")
        assert sum(round(f) == 880 for f in starts) >= 10, starts
        assert page(driver, "return window.lwSound.context.state") == "running"
        assert re.match(r"\(\d+\) ALARM HIGH · ", driver.title), driver.title
        driver.find_element("id", "sound-pause").click()
        paused = driver.find_element("id", "sound-pause").text
        assert re.fullmatch(r"Audio paused 1[12]\d s", paused), paused
        before = len(page(driver, "return window.__oscStarts"))
        time.sleep(2.0)
        assert len(page(driver, "return window.__oscStarts")) == before, "silent while paused"
        state = wait_until(lambda: "apnoea" in bed_states(driver).get("bed-rr", "") and
                           bed_states(driver)["bed-rr"], 5.0, "the bed's state")  # fmt: skip
        assert state.startswith("apnoea")
        wait_until(lambda: "APNOEA" in (text_of(driver, rate) or ""),
                   15.0, "the rate line saying apnoea")  # fmt: skip
        screenshot(driver, tmp_path / "ward-view-apnoea.png")


FINDING_PIXELS = (  # bed-1's trend: pixels of the wheeze amber (bottom), crackle violet (top)
    "const c = document.querySelector('article.bed[data-stream=\"bed-1\"] canvas.trend');"
    "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
    "let amber = 0, violet = 0;"
    "for (let i = 0; i < d.length; i += 4) { if (!d[i + 3]) continue;"
    " if (d[i] > 200 && d[i + 1] > 110 && d[i + 1] < 170 && d[i + 2] < 60) amber++;"
    " if (d[i] > 90 && d[i] < 160 && d[i + 1] < 60 && d[i + 2] > 130) violet++; }"
    "return [amber, violet];"
)


def test_a_beds_finding_rates_on_its_card_and_in_its_trend(tmp_path: Path) -> None:
    """The device's finding rates (the share of breathing time with wheeze and with crackle)
    reach the bed's card as a line and its trend as bars beneath the rate, from the live
    readings and again from the snapshot of a page opened later; a wheeze rate of 0 draws no
    bar."""
    from lungwatch.events import respiration_payload, respiration_topic

    line = 'article.bed[data-stream="bed-1"] .finding-rate'
    with view_page(tmp_path) as (broker, dashboard, driver):
        device = Device(broker.port)
        try:
            device.online()
            now = time.time()
            for i, (wheeze, crackle) in enumerate([(0.0, None), (40.0, None), (60.0, 25.0)]):
                reading = {"state": "ok", "rate_bpm": 18.0 + i, "confidence": 0.8,
                           "breaths": 12, "age_band": "adult", "low_bpm": 9.0,
                           "high_bpm": 24.0, "reason": "", "utc": _utc(now + 10 * i),
                           "wheeze_rate_pct": wheeze, "crackle_rate_pct": crackle}  # fmt: skip
                body = respiration_payload(SITE, DEVICE, "bed-1", reading)
                device.put(respiration_topic(SITE, DEVICE, "bed-1"), body, retain=True)
                if i == 0:  # the first reading on the card before the next is sent
                    wait_until(lambda: text_of(driver, line), 10.0, "the finding rates")
                    assert text_of(driver, line) == "wheeze 0.0 % · crackle -- of breathing"
                    assert page(driver, FINDING_PIXELS) == [0, 0]
        finally:
            device.stop()
        wait_until(lambda: text_of(driver, line) == "wheeze 60 % · crackle 25 % of breathing",
                   10.0, "the last reading's finding rates")  # fmt: skip
        amber, violet = wait_until(lambda: all(page(driver, FINDING_PIXELS)) and
                                   page(driver, FINDING_PIXELS), 5.0, "the bars")  # fmt: skip
        screenshot(driver, tmp_path / "finding-rates.png")
        driver.get(dashboard.url)  # a page opened later draws them from the snapshot
        wait_until(lambda: page(driver, SNAPSHOT_SHOWN), 15.0, "the snapshot")
        assert text_of(driver, line) == "wheeze 60 % · crackle 25 % of breathing"
        again = wait_until(lambda: all(page(driver, FINDING_PIXELS)) and
                           page(driver, FINDING_PIXELS), 5.0, "the bars again")  # fmt: skip
        assert again == [amber, violet]


OSC_SPY = """
window.__oscStarts = [];
(function () {
  const start = OscillatorNode.prototype.start;
  OscillatorNode.prototype.start = function (...args) {
    window.__oscStarts.push(this.frequency.value);
    return start.apply(this, args);
  };
})();
"""
RATE_TEXT = (
    "const r = document.querySelector('article.bed[data-stream=\"bed-rr\"] .rate');"
    "return r && r.dataset.rate ? r.textContent : null;"
)
TREND_DRAWN = (
    "const c = document.querySelector('article.bed[data-stream=\"bed-rr\"] canvas.trend');"
    "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
    "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;"
)


# -- evidence and history ----------------------------------------------------------------------
BED_NAMES = {"bed-1": ("Bed 1", "Ward 3 East, bay A"), "bed-2": ("Bed 2", "Ward 3 East, bay A"),
             "bed-3": ("Side room 4", "Ward 3 East")}  # fmt: skip
FIRST_LISTEN = (
    "const b = document.querySelector('#alarms button.listen:not([disabled])');"
    "if (!b) return null; const row = b.closest('tr');"
    "return [b.dataset.episode, row.dataset.stream, row.dataset.condition];"
)
PLAYED = "const a = document.querySelector('#evidence-audio'); return a.currentTime;"
PICTURE_SIZE = (
    "const i = document.querySelector('#evidence-picture');"
    "return i.complete ? [i.naturalWidth, i.naturalHeight] : null;"
)
CHART_DRAWN = (
    "const c = document.querySelector('#history-chart');"
    "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
    "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;"
)


def evidence_config(tmp_path: Path, port: int) -> Path:
    """The ward of :func:`ward_config` with named beds, and a view that keeps its history in
    SQLite and holds a persistent MQTT session."""
    config = yaml.safe_load(ward_config(tmp_path, port).read_text())
    for stream in config["streams"]:
        stream["name"], stream["location"] = BED_NAMES[stream["id"]]
    config["dashboard"]["history_path"] = str(tmp_path / "ward-history.sqlite")
    config["dashboard"]["persistent_session"] = True
    path = tmp_path / "ward.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def fetch_json(driver: Any, url: str) -> Any:
    """GET ``url`` from the page (its credentials) and parse the JSON."""
    script = (
        "const done = arguments[arguments.length - 1];"
        f"fetch({json.dumps(url)}).then(r => r.json()).then(done, e => done(String(e)));"
    )
    return driver.execute_async_script(script)


def test_an_alarms_clip_plays_and_the_beds_history_survives_the_views_restart(
    tmp_path: Path, password_broker: Mosquitto
) -> None:
    """The real runtime on the three example recordings, with named beds, and a ward view
    that keeps its history:

    - each alarm row names its bed and, once the device's clip has come, has a Listen
      button; a click plays the clip in the page (the audio element's duration is the
      clip's) and shows its spectrogram with the model's outputs (the times from the click
      are printed; bench/ward.py measures them with 200 beds);
    - a request for the clip without credentials gets 401;
    - the view restarts: the latched alarm from before the restart is listed again, and a
      click on the bed's name draws its hour-by-hour trend (kept in SQLite);
    - a second view that starts after the alarm latched, with no history of its own, lists it
      too (from the bed's retained summary)."""
    require_chromium()
    config = evidence_config(tmp_path, password_broker.port)
    with running_device(config, tmp_path / "runtime.log"), chromium(1400, 900) as driver:
        authorise(driver, *NURSE)
        with DashboardProcess(config) as dashboard:
            driver.get(dashboard.url)
            wait_until(lambda: page(driver, SNAPSHOT_SHOWN), 15.0, "the snapshot")
            names = ("return [...document.querySelectorAll('article.bed .bed-name')]"
                     ".map(b => b.textContent).sort();")  # fmt: skip
            wait_until(lambda: page(driver, names) == ["Bed 1", "Bed 2", "Side room 4"],
                       60.0, "the beds by their names")  # fmt: skip
            episode, stream, kind = wait_until(lambda: page(driver, FIRST_LISTEN), 150.0,
                                               "an alarm with its clip")  # fmt: skip
            row = text_of(driver, f'#alarms tr[data-clip="{episode}"]')
            assert row is not None, "the alarm's row"
            assert BED_NAMES[stream][0] in row
            assert BED_NAMES[stream][1] in row
            about = fetch_json(driver, f"/api/evidence/{episode}")
            assert condition_of(about["event_type"]) == kind
            assert about["stream_id"] == stream

            listen = f'#alarms tr[data-clip="{episode}"] button.listen'
            wait_until(lambda: click(driver, listen), 10.0, "a click on the alarm's Listen button")
            shown = wait_until(
                lambda: (e := page(driver, "return window.lwEvidence")) and e["audioAt"]
                and e["pictureAt"] and e, 10.0, "the clip's audio and picture",
            )  # fmt: skip
            audio_ms = shown["audioAt"] - shown["clickedAt"]
            picture_ms = shown["pictureAt"] - shown["clickedAt"]
            print(f"\nclick -> audio ready {audio_ms} ms, picture drawn {picture_ms} ms "
                  f"({about['duration_s']:.1f}-s clip of {kind})")  # fmt: skip
            assert shown["error"] is None
            assert shown["duration"] == pytest.approx(about["duration_s"], abs=0.05)
            wait_until(lambda: page(driver, PLAYED) > 0.2, 10.0, "the clip playing")
            width, height = page(driver, PICTURE_SIZE)  # a column per 10-ms frame
            assert width == pytest.approx(MARGIN_PX + 100 * about["duration_s"], abs=15)
            assert height > 100
            screenshot(driver, tmp_path / "ward-view-evidence.png")
            assert get_status(f"{dashboard.url}api/evidence/{episode}.flac") == 401

            latched = wait_until(
                lambda: page(driver, FIRST_ACKABLE), 60.0, "a latched alarm")  # fmt: skip
        # the view restarts (the device goes on): the alarm is still listed, the bed's
        # history is there
        with DashboardProcess(config) as dashboard:
            driver.get(dashboard.url)
            wait_until(lambda: page(driver, SNAPSHOT_SHOWN), 15.0, "the snapshot")
            alarm = condition_row(latched[1], latched[2])
            wait_until(lambda: driver.find_elements("css selector", alarm), 10.0,
                       "the latched alarm after the restart")  # fmt: skip
            bed = f'article.bed[data-stream="{latched[1]}"] button.bed-name'
            clicked = time.time() * 1000
            driver.find_element("css selector", bed).click()
            trend = wait_until(lambda: page(driver, "return window.lwTrend"), 10.0,
                               "the bed's trend")  # fmt: skip
            trend_ms = trend["drawnAt"] - clicked
            print(f"click -> trend drawn {trend_ms:.0f} ms")
            assert trend["stream"] == latched[1]
            assert sum(sum(v) for v in trend["onsets"].values()) >= 1
            assert page(driver, CHART_DRAWN) > 1000
            screenshot(driver, tmp_path / "ward-view-history.png")
        # a view with no history of its own, started after the alarm latched
        fresh = yaml.safe_load(config.read_text())
        fresh["dashboard"].update(history_path=None, persistent_session=False)
        fresh_path = tmp_path / "fresh.yaml"
        fresh_path.write_text(yaml.safe_dump(fresh), encoding="utf-8")
        with DashboardProcess(fresh_path) as dashboard:
            driver.get(dashboard.url)
            wait_until(lambda: page(driver, SNAPSHOT_SHOWN), 15.0, "the snapshot")
            wait_until(lambda: driver.find_elements("css selector", alarm), 10.0,
                       "the latched alarm from the bed's summary")  # fmt: skip


# -- the README's ward on one machine ------------------------------------------------------
README_WARD = re.compile(r"<!-- ward-on-one-machine -->\n```sh\n(.*?)```", re.S)


def readme_ward_commands(mqtt_port: int, view_port: int) -> list[list[str]]:
    """The README's ward-on-one-machine block as argument lists: continuation lines joined,
    comments dropped, the broker's and the page's ports (1883, 8080) replaced by free ones,
    ``lungwatch`` / ``lungwatch-edge`` the scripts installed beside this Python."""
    import shlex

    block = README_WARD.search((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
    assert block is not None, "README.md has no ward-on-one-machine block"
    text = block.group(1).replace("\\\n", " ")
    text = text.replace(":1883", f":{mqtt_port}").replace("--port 8080", f"--port {view_port}")
    scripts = Path(sys.executable).parent
    commands = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] in ("lungwatch", "lungwatch-edge"):
            words[0] = str(scripts / words[0])
        if words:
            commands.append(words)
    return commands


def test_the_readmes_ward_path_acknowledges_and_plays_a_clip(tmp_path: Path) -> None:
    """The README's ward on one machine, its commands run as written (only the ports are
    free ones), in a folder that holds the repository's ``edge`` and ``models``: the access
    files, Mosquitto on the generated config, the device on ``edge/configs/ward.yaml`` with
    its client file, the ward view with its own. The nurse logs in with the password the
    access command wrote; an alarm's clip plays; her acknowledgement reaches the device,
    which accepts it as signed by her (its log), and the page shows it acknowledged by her."""
    require_chromium()
    from tests.brokers import _wait_port, free_port, require_mosquitto

    require_mosquitto()
    data = Path(os.environ.get("LUNGWATCH_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    if not (data / "sprsound" / "intra_test").is_dir():
        pytest.skip(f"{data}/sprsound/intra_test is absent: edge/configs/ward.yaml reads it")
    mqtt_port, view_port = free_port(), free_port()
    access, broker, device, view = readme_ward_commands(mqtt_port, view_port)
    for name in ("edge", "models"):
        (tmp_path / name).symlink_to(REPO_ROOT / name)
    env = {**os.environ, **SUBPROCESS_ENV, "LUNGWATCH_DATA_DIR": str(data)}
    made = subprocess.run(access, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    # the test reads the device's metrics under a login of its own (each connection's client
    # id is its login there, so the view's own login would take the view's connection over):
    # the same command again with one more view, which keeps every password and key
    at = access.index("--views") + 1
    more = subprocess.run([*access[:at], "test-reader", *access[at:]], cwd=tmp_path, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert more.returncode == 0, more.stderr
    running: list[subprocess.Popen[bytes]] = []
    logs = {name: tmp_path / f"{name}.log" for name in ("broker", "device", "view")}
    try:
        for name, command in zip(logs, (broker, device, view), strict=True):
            with open(logs[name], "wb") as log:
                running.append(subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log,
                                                stderr=subprocess.STDOUT))  # fmt: skip
            if name == "broker":
                _wait_port(mqtt_port, running[0], logs["broker"])
        _wait_port(view_port, running[2], logs["view"])
        password = (tmp_path / "out" / "access" / "users" / "nurse.password").read_text().strip()
        with chromium(1400, 900) as driver:
            authorise(driver, "nurse", password)
            driver.get(f"http://127.0.0.1:{view_port}/")
            wait_until(lambda: page(driver, SNAPSHOT_SHOWN), 30.0, "the snapshot")
            episode, _, _ = wait_until(lambda: page(driver, FIRST_LISTEN), 180.0,
                                            "an alarm with its clip")  # fmt: skip
            driver.find_element("css selector", f'#alarms tr[data-clip="{episode}"] '
                                "button.listen").click()  # fmt: skip
            wait_until(lambda: page(driver, PLAYED) > 0.2, 15.0, "the clip playing")
            ack = wait_until(lambda: page(driver, ACKABLE), 60.0, "an alarm to acknowledge")
            row = condition_row(ack[0], ack[1])
            wait_until(lambda: click(driver, f"{row} button.ack"), 5.0, "the click")
            # acknowledged: listed as such while an episode is open, else gone (hold_s 0)
            text = f"const r = document.querySelector('{row}'); return r ? r.textContent : null"
            wait_until(lambda: (t := page(driver, text)) is None or "acknowledged by nurse" in t,
                       10.0, "the row acknowledged by the nurse")  # fmt: skip
            wait_until(lambda: accepted_commands(tmp_path, mqtt_port) >= 1, 30.0,
                       "the device's metrics counting the nurse's signed acknowledge")  # fmt: skip
            assert "command ignored" not in logs["device"].read_text()
            screenshot(driver, tmp_path / "readme-ward.png")
    finally:
        for process in reversed(running):
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def accepted_commands(folder: Path, port: int) -> int:
    """``commands_accepted`` in the device's latest metrics, read with the test's own view
    login from its client file (0 when none came within 12 s)."""
    login = yaml.safe_load((folder / "out/access/clients/test-reader.yaml").read_text())["mqtt"]
    credentials = (login["username"], login["password"])
    with Recorder(port, "lungwatch/v1/ward-1/edge-1/metrics", credentials=credentials) as seen:
        seen.wait_for(bool, 12.0)
        counts = [m.json()["metrics"].get("commands_accepted", 0) for m in seen.messages]
    return max(counts, default=0)


ACKABLE = (  # the first alarm row with an Acknowledge button: [bed, condition]
    "const b = document.querySelector('#alarms button.ack');"
    "if (!b) return null; const row = b.closest('tr');"
    "return [row.dataset.stream, row.dataset.condition];"
)
