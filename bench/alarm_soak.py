"""A ward's alarms in real time as a charge nurse meets them: nine beds for ten minutes.

    python -m bench.alarm_soak [--minutes 10] [--out bench/results]

Through ``lungwatch run``, Mosquitto, ``lungwatch dashboard`` and headless Chromium, every bed
paced in real time and looping (docs/dashboard.md, "Measured: a ward's alarms in real time"):
``bed-1`` (wheezes only) and ``bed-2`` of ``ward.yaml``; ``apnoea``, three 40-s stretches
low-passed at 120 Hz (heart sounds, and so contact, remain); ``detached`` (a -80 dBFS floor
from a fifth of the run); ``noisy`` (0 dB SNR); ``normal-1`` .. ``normal-4``, Normal
recordings of the judging half of ``intra_test``'s patients (the finding rules were fitted on
the other half). The nurse (Selenium) acknowledges the first two apnoeas 5 s after each shows
and pauses the audio 30 s before the third; the view, then the device, restart near the end.

Targets: no wheeze or crackle alarm on a Normal bed, no crackle alarm on ``bed-1``; no advisory
finding above medium; each apnoea the top row in view and its high pattern heard within 2 s;
no two patterns at once; no unacknowledged row lost by a restart; no layout fault at the end.

Results: ``bench/results/alarm_soak.{md,json}`` and ``alarm_soak.png`` (not kept in the
repository: ``docs/dashboard.png`` is a copy of one).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import soundfile
import yaml
from scipy.signal import butter, sosfiltfilt

from bench import RESULTS_DIR, write_results
from bench.runtime import start_mosquitto
from edge.audio import read_audio
from edge.datapaths import data_root
from lungwatch.commandauth import derive_device_key, new_key, write_key
from lungwatch.events import Event

REPO = Path(__file__).resolve().parents[1]
RATE_HZ = 8000
SITE, DEVICE = "ward-soak", "edge-soak"
WARD_BEDS = (("bed-1", "64913238_0.6_1_p3_2175", 0.6), ("bed-2", "41161556_1.7_0_p2_3062", 1.7))
APNOEA_RECORD = ("40943224_9.7_0_p2_94", 9.7)
NORMAL_RECORDS = (("41125983_6.8_0_p2_2406", 6.8), ("41050041_5.6_0_p2_1758", 5.6),
                  ("40797293_5.5_1_p2_1082", 5.5), ("41073762_4.6_1_p3_679", 4.6))  # fmt: skip
APNOEA_AT = (0.125, 0.358, 0.592)  # where the breath sounds are taken away (run fractions)
APNOEA_S = 40.0
DETACHED_AT = 0.2
VIEW_RESTART_AT, DEVICE_RESTART_S = 0.75, 40.0
ACK_AFTER_S = 5.0
PAUSE_BEFORE_S = 30.0
ADVISORY = ("CAS", "DAS", "tachypnoea", "bradypnoea")  # findings: never above medium
FINDINGS = ("CAS", "DAS")  # the sounds' alarm conditions (finding episodes)


def intra_test(name: str) -> Path:
    return data_root() / "sprsound" / "intra_test" / f"{name}.flac"


def record(name: str) -> np.ndarray:
    path = intra_test(name)
    if not path.exists():
        sys.exit(f"{path} is missing (set LUNGWATCH_DATA_DIR to the shared data folder)")
    return read_audio(path, target_rate_hz=RATE_HZ).samples.astype(np.float64)


def tiled(samples: np.ndarray, seconds: float) -> np.ndarray:
    n = int(seconds * RATE_HZ)
    return np.tile(samples, n // len(samples) + 1)[:n].copy()


def build_ward(folder: Path, run_s: float) -> list[dict[str, Any]]:
    streams = [{"id": bed, "source": str(intra_test(name)), "age_years": age}
               for bed, name, age in WARD_BEDS]  # fmt: skip
    rng = np.random.default_rng(0)
    length_s = run_s + 120.0  # longer than the run: no loop seam inside it
    name, age = APNOEA_RECORD
    apnoea = tiled(record(name), length_s)
    low = butter(4, 120, "low", fs=RATE_HZ, output="sos")
    for fraction in APNOEA_AT:
        a, b = int(fraction * run_s * RATE_HZ), int((fraction * run_s + APNOEA_S) * RATE_HZ)
        apnoea[a:b] = sosfiltfilt(low, apnoea[a:b])
    detached = tiled(record(name), length_s)
    cut = int(DETACHED_AT * run_s * RATE_HZ)
    detached[cut:] = rng.normal(0.0, 10 ** (-80 / 20), len(detached) - cut)
    noisy = tiled(record(NORMAL_RECORDS[0][0]), length_s)
    noisy = np.clip(noisy + rng.normal(0.0, float(np.std(noisy)), len(noisy)), -1.0, 1.0)
    for bed, audio in (("apnoea", apnoea), ("detached", detached), ("noisy", noisy)):
        path = folder / f"{bed}.flac"
        soundfile.write(path, audio.astype(np.float32), RATE_HZ)
        streams.append({"id": bed, "source": str(path), "age_years": age})
    for i, (name, age) in enumerate(NORMAL_RECORDS):
        streams.append({"id": f"normal-{i + 1}", "source": str(intra_test(name)), "age_years": age})
    for stream in streams:
        stream.update(realtime=True, loop=True, chunk_samples=800)
    return streams


def configs(folder: Path, streams: list[dict[str, Any]], broker: str, view_port: int) -> Path:
    config = yaml.safe_load((REPO / "edge" / "configs" / "ward.yaml").read_text())
    master = new_key()
    master_file = write_key(folder / "keys" / "command-master.key", master)
    device_file = write_key(folder / "keys" / "device.command.key",
                            derive_device_key(master, SITE, DEVICE))  # fmt: skip
    host, port = broker.rsplit(":", 1)
    config.update(site=SITE, device_id=DEVICE, streams=streams, metrics_interval_s=10.0)
    config["model"]["dir"] = str(REPO / "models" / "sed")
    config["sinks"].update(stdout=False, jsonl=None, mqtt=True)
    config["mqtt"].update(host=host, port=int(port), spool_path=str(folder / "spool.sqlite"))
    config["commands"] = {"key_file": str(device_file)}
    config["dashboard"].update(
        port=view_port, command_key_file=str(master_file), probe_interval_s=5,
        history_path=str(folder / "history.sqlite"), persistent_session=True,
        client_id="lungwatch-soak-view",
    )  # fmt: skip
    path = folder / "ward.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


class Listener:
    """Every event message the broker delivers, with the wall time it arrived."""

    def __init__(self, broker: str) -> None:
        self.events: list[tuple[float, Event]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = self._message
        host, port = broker.rsplit(":", 1)
        self.client.connect(host, int(port))
        self.client.subscribe(f"lungwatch/v1/{SITE}/{DEVICE}/+/event", qos=1)
        self.client.loop_start()

    def _message(self, client: Any, userdata: Any, message: Any) -> None:
        arrived = time.time()
        try:
            event = Event.from_json(message.payload)
        except Exception:  # counted by nothing: the bench reads valid events only
            return
        with self.lock:
            self.events.append((arrived, event))

    def since(self, at: float) -> list[tuple[float, Event]]:
        with self.lock:
            return [(t, e) for t, e in self.events if t >= at]

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def start_device(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "lungwatch.cli", "run", "--config",
                                 str(config)], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def state(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "api/state", timeout=10) as reply:
        return json.loads(reply.read())


def row_key(row: dict[str, Any]) -> tuple[str, str]:
    return (row["stream_id"], row["condition"])


class Soak:
    def __init__(self, driver: Any, url: str, listener: Listener, run_s: float) -> None:
        self.driver, self.url, self.listener, self.run_s = driver, url, listener, run_s
        self.start = time.time()
        self.signals: Counter[tuple[str, str]] = Counter()  # (condition, priority) started
        self.alarming: set[tuple[str, str, str]] = set()  # bed, condition, raised_utc
        self.highest: dict[str, str] = {}  # condition kind -> highest priority seen
        self.apnoeas: list[dict[str, Any]] = []
        self.restarts: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def at(self) -> float:
        return time.time() - self.start

    def poll_state(self) -> dict[str, Any] | None:
        """The view's alarm list now: signals started, the highest priorities."""
        try:
            now = state(self.url)
        except OSError:
            return None  # the view is restarting
        rank = {"high": 0, "medium": 1, "low": 2}
        for row in now["alarms"]:
            kind = row["condition"] if row["kind"] != "technical" else "technical"
            if rank[row["priority"]] < rank[self.highest.get(kind, "low")]:
                self.highest[kind] = row["priority"]
            instance = (row["stream_id"], row["condition"], row.get("raised_utc") or "")
            if row["state"] == "alarming" and instance not in self.alarming:
                self.alarming.add(instance)
                self.signals[(row["condition"], row["priority"])] += 1
        return now

    def wait(self, until_s: float) -> None:
        while self.at() < until_s:
            self.poll_state()
            time.sleep(min(1.0, max(0.05, until_s - self.at())))

    def apnoea(self, label: str, since_s: float, acknowledge: bool) -> None:
        """Wait for the next apnoea of bed ``apnoea``; measure its top row and its sound."""
        from tests.wardview.alarm_page import heard_since, top_is

        deadline = self.at() + 120.0
        found = None
        while found is None and self.at() < deadline:
            self.poll_state()
            found = next((t for t, e in self.listener.since(self.start + since_s)
                          if e.stream_id == "apnoea" and e.type == "apnoea"
                          and e.state == "onset"), None)  # fmt: skip
            time.sleep(0.1)
        if found is None:
            self.apnoeas.append({"case": label, "raised": False})
            self.notes.append(f"{label}: no apnoea event within 120 s")
            return
        top = heard = None
        while (top is None or heard is None) and time.time() - found < 20.0:
            if top is None and top_is(self.driver, "apnoea", "apnoea"):
                top = time.time() - found
            if heard is None:
                sounds = heard_since(self.driver, found * 1000.0, 880.0)
                heard = (min(sounds) / 1000.0 - found) if sounds else None
            time.sleep(0.05)
        self.apnoeas.append({"case": label, "raised": True, "at_s": round(found - self.start, 1),
                             "top_row_s": None if top is None else round(top, 2),
                             "heard_s": None if heard is None else round(heard, 2)})  # fmt: skip
        if acknowledge:
            time.sleep(ACK_AFTER_S)
            button = '#alarms tr[data-stream="apnoea"][data-condition="apnoea"] button.ack'
            if not self.driver.execute_script(f"const b = document.querySelector('{button}'); "
                                              "if (b) b.click(); return Boolean(b);"):  # fmt: skip
                self.notes.append(f"{label}: no Acknowledge button on the apnoea row")

    def restart(self, what: str, stop_it: Any, start_it: Any) -> None:
        """Rows before and after a restart; unacknowledged ones that did not come back."""
        before = self.poll_state() or {"alarms": []}
        stop_it()
        start_it()
        time.sleep(15.0)  # started, its broker session and the retained messages back
        after = None
        while after is None:
            after = self.poll_state()
            time.sleep(0.5)
        alarming = {row_key(r) for r in before["alarms"] if r["state"] == "alarming"}
        lost = sorted(alarming - {row_key(r) for r in after["alarms"]})
        self.restarts.append({"what": what, "at_s": round(self.at(), 1),
                              "rows_before": len(before["alarms"]),
                              "rows_after": len(after["alarms"]),
                              "alarming_before": len(alarming), "lost": lost})  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.wardview.alarm_page import LISTEN, SPY, TABLE_GEOMETRY, overlapping_pulses, visible
    from tests.wardview.browser import DashboardProcess, chromium, require_chromium, wait_until

    require_chromium()
    from edge.sinks.broker import _free_port

    run_s = args.minutes * 60.0
    with tempfile.TemporaryDirectory(prefix="lungwatch-alarm-soak-") as tmp:
        folder = Path(tmp)
        streams = build_ward(folder, run_s)
        broker = start_mosquitto(folder)
        if broker is None:
            sys.exit("Mosquitto is not installed (make test installs it)")
        view_port = _free_port("127.0.0.1")
        config = configs(folder, streams, broker[1], view_port)
        listener = Listener(broker[1])
        device = start_device(config, folder / "device.log")
        view = DashboardProcess(config)  # on a fixed port: the page reconnects after a restart
        view.command[view.command.index("--port") + 1] = str(view_port)
        view.start()
        try:
            with chromium(1400, 900) as driver:
                driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": SPY})
                driver.get(view.url)
                wait_until(lambda: driver.execute_script("return window.lwReady"), 30.0,
                           "the page")  # fmt: skip
                driver.find_element("id", "sound").click()
                driver.execute_script(LISTEN)
                soak = Soak(driver, view.url, listener, run_s)
                for i, fraction in enumerate(APNOEA_AT):
                    due_s = fraction * run_s
                    if i == 2:  # the nurse pauses the sound for the ward's other alarms
                        soak.wait(due_s - PAUSE_BEFORE_S)
                        clicked = driver.execute_script(
                            "const b = document.querySelector('#sound-pause');"
                            "if (!b || b.hidden) return false; b.click(); return true;"
                        )
                        if not clicked:
                            soak.notes.append("audio pause: no button (nothing alarming)")
                    soak.wait(due_s)
                    label = ("first", "after an acknowledge", "during audio pause")[i]
                    soak.apnoea(label, due_s, acknowledge=i < 2)
                soak.wait(VIEW_RESTART_AT * run_s)

                soak.restart("ward view", view.stop, view.start)
                wait_until(lambda: driver.execute_script(
                    "return document.querySelector('#connection').textContent") == "live",
                    30.0, "the page live again")  # fmt: skip
                soak.wait(VIEW_RESTART_AT * run_s + DEVICE_RESTART_S)

                def restart_device() -> None:
                    nonlocal device
                    device = start_device(config, folder / "device.log")

                soak.restart("device", lambda: stop(device), restart_device)
                soak.wait(run_s)
                latencies = event_to_row(driver, listener.since(0.0))
                wrong = driver.execute_script(TABLE_GEOMETRY)
                shown = visible(driver)
                overlaps = overlapping_pulses(driver)
                args.out.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(args.out / "alarm_soak.png"))
                events = listener.since(0.0)
        finally:
            stop(device)
            view.stop()
            listener.stop()
            broker[0].terminate()
            broker[0].wait(timeout=10)
            device_log = (folder / "device.log").read_text(errors="replace")[-2000:]
    bed_hours = len(streams) * (soak.at() / 3600.0)
    per_type: dict[str, Counter[str]] = defaultdict(Counter)
    for _, event in events:
        if event.state == "onset":
            per_type[event.stream_id][event.type] += 1
    hours = soak.at() / 3600.0
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python -m bench.alarm_soak " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "minutes": args.minutes, "beds": [s["id"] for s in streams],
        "bed_hours": round(bed_hours, 3),
        "signals_per_bed_hour": {f"{c} {p}": round(n / bed_hours, 1)
                                 for (c, p), n in sorted(soak.signals.items())},
        "signals": {f"{c} {p}": n for (c, p), n in sorted(soak.signals.items())},
        "highest_priority": soak.highest,
        "advisory_above_medium": sorted(k for k, p in soak.highest.items()
                                        if k in ADVISORY and p == "high"),
        "apnoeas": soak.apnoeas, "restarts": soak.restarts,
        "overlapping_pulses": len(overlaps),
        "event_to_row_s": latencies, "table_faults": wrong,
        "rows_at_end": shown["rows"], "rows_in_view_at_end": len(shown["visible"]),
        "below_said_at_end": shown["said"], "below_at_end": shown["below"],
        "onsets_per_bed_hour": {bed: {t: round(n / hours, 1) for t, n in sorted(c.items())}
                                for bed, c in sorted(per_type.items())},
        "finding_alarms_per_bed": {bed: sorted({c for b, c, _ in soak.alarming
                                                if b == bed and c in FINDINGS})
                                   for bed in (s["id"] for s in streams)},
        "notes": soak.notes, "device_log_tail": device_log if soak.notes else "",
    }  # fmt: skip


def event_to_row(driver: Any, events: list[tuple[float, Event]]) -> dict[str, Any]:
    """Onset arrival -> paint of its episode's row; an episode that ended before the list's
    next push is never listed open, so not counted."""
    shown = driver.execute_script("return window.lwAlarmShown")
    arrived = {e.episode_id: t for t, e in events if e.state == "onset"}
    late = [shown[e] / 1000.0 - t for e, t in arrived.items() if e in shown]
    if not late:
        return {"rows": 0}
    return {"rows": len(late), "p50": round(float(np.median(late)), 2),
            "max": round(float(np.max(late)), 2)}  # fmt: skip


def table(result: dict[str, Any]) -> str:
    lines = [
        "# Alarm soak: a ward's alarms in real time",
        "",
        f"{result['date']}, `{result['command']}`, {result['machine']}: "
        f"{len(result['beds'])} beds for {result['minutes']:g} min through `lungwatch run`, "
        "Mosquitto, `lungwatch dashboard` and headless Chromium (bench/alarm_soak.py).",
        "",
        "| apnoea | event -> top row in view (s) | event -> high pattern heard (s) |",
        "|---|---:|---:|",
    ]
    for case in result["apnoeas"]:
        lines.append(f"| {case['case']} | {case.get('top_row_s')} | {case.get('heard_s')} |")
    lines += [
        "",
        "| restart | rows before | rows after | alarming before | lost |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result["restarts"]:
        lines.append(f"| {r['what']} | {r['rows_before']} | {r['rows_after']} | "
                     f"{r['alarming_before']} | {len(r['lost'])} |")  # fmt: skip
    lines += [
        "",
        "| alarm signals started (condition, priority) | per bed-hour | count |",
        "|---|---:|---:|",
    ]
    for key, rate in result["signals_per_bed_hour"].items():
        lines.append(f"| {key} | {rate} | {result['signals'][key]} |")
    latency = result["event_to_row_s"]
    lines += [
        "",
        f"- highest priority reached: {result['highest_priority']}; advisory findings above "
        f"medium: {result['advisory_above_medium'] or 'none'}",
        f"- pulses sounding at once (two patterns over each other): {result['overlapping_pulses']}",
        f"- event -> row on screen: {latency.get('rows', 0)} rows, p50 {latency.get('p50')} s, "
        f"max {latency.get('max')} s",
        f"- the table at the end: {result['rows_at_end']} rows, "
        f"{result['rows_in_view_at_end']} in view, the page says {result['below_said_at_end']} "
        f"below ({result['below_at_end']} measured); layout faults: "
        f"{result['table_faults'] or 'none'}",
        "- finding alarm conditions per bed (CAS, DAS): "
        + "; ".join(
            f"{bed}: {', '.join(c) or 'none'}"
            for bed, c in result["finding_alarms_per_bed"].items()
        ),
        "- the device's onsets per bed-hour: "
        + "; ".join(
            f"{bed}: " + ", ".join(f"{t} {n}" for t, n in c.items())
            for bed, c in result["onsets_per_bed_hour"].items()
        ),
    ]
    if result["notes"]:
        lines += ["", "Notes: " + "; ".join(result["notes"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.minutes < 4:
        parser.error("--minutes must be at least 4 (three apnoeas and two restarts)")
    result = run(args)
    write_results("alarm_soak", result, table(result), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
