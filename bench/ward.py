"""The ward view at ward scale: 200 beds, an hour of history, clips and live events at once.

    python -m bench.ward [--beds 200] [--devices 4] [--hours 1] [--live-s 60] [--repeats 5]
        [--clip-minutes 5] [--stores sqlite,postgresql]

Targets: with 200 beds and one hour of history the bed grid and one bed's trend render within
1 s, and clip delivery does not delay event delivery (event -> screen p99 within 1 s). The
setup is docs/evidence.md, "Measured": an hour of ``lungwatch run`` on the demo recordings,
replayed per bed with its own ids (UUID5) through the view's intake into each store (clips
kept for the last ``--clip-minutes``; PostgreSQL vacuumed and checkpointed after the load);
then ``lungwatch dashboard`` and headless Chromium time the grid (``window.lwReadyMs``), a
trend (``lwTrend.drawnAt``) and a clip (``lwEvidence``). Live, on the first store: the last
``--live-s`` of events for every bed, published at their pace, event -> paint
(``window.lwRendered``, one clock), once alone and once with each episode's clip 1 s after
it ends; the ratio of the p99s is what clips cost events.

Nothing is pinned: runtime, broker, view, browser and publisher share the machine's cores.
Results: ``bench/results/ward.{md,json}``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import soundfile
import yaml

from bench import write_results
from bench.runtime import mosquitto_broker
from bench.runtime_probes import percentiles_ms
from lungwatch.events import format_utc, parse_utc
from wardview.config import DashboardConfig
from wardview.history import History
from wardview.ward import Ward

REPO = Path(__file__).resolve().parents[1]
RECORDS = ("64913238_0.6_1_p3_2175", "41161556_1.7_0_p2_3062", "65099422_0.5_0_p3_2599")
SITE = "bench-ward"
NAMESPACE = uuid.UUID("6f1d2c1e-6a55-4c1b-9d0e-46e5a7d1b0a1")  # the replicas' UUID5 ids
NURSE = ("nurse", "bench-only-password")
BED_KINDS = ("event", "verdict", "respiration", "summary", "evidence")


@dataclass(frozen=True)
class Message:
    arrived_s: float
    topic: str
    payload: bytes
    retain: bool

    @property
    def kind(self) -> str:
        return self.topic.rsplit("/", 1)[-1]

    @property
    def stream(self) -> str:
        return self.topic.split("/")[4]


# -- 1. an hour through the real runtime ---------------------------------------------------
def connected(port: int, name: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    return client


class Subscriber:
    def __init__(self, port: int) -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self.client = connected(port, "bench-keeper")
        self.client.on_message = self._on_message
        self.client.subscribe("lungwatch/v1/#", qos=1)

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(
                Message(time.time(), message.topic, bytes(message.payload), message.retain)
            )

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def tiled_audio(folder: Path, seconds: float) -> list[Path]:
    paths = []
    for record in RECORDS:
        samples, rate = soundfile.read(REPO / "examples" / f"{record}.flac", dtype="float32")
        reps = math.ceil(seconds * rate / len(samples))
        path = folder / f"{record}-tiled.flac"
        soundfile.write(path, np.tile(samples, reps)[: int(seconds * rate)], rate,
                        subtype="PCM_16")  # fmt: skip
        paths.append(path)
    return paths


def generate(folder: Path, hours: float) -> tuple[list[Message], float, dict[str, Any]]:
    """The runtime's messages for three beds over ``hours`` of audio, the wall time it
    started (its streams' sample 0, within the model's load) and what the run took."""
    sources = tiled_audio(folder, hours * 3600.0)
    with mosquitto_broker() as broker:
        if broker is None:
            raise SystemExit("bench.ward needs Mosquitto (apt-get install mosquitto)")
        port = int(broker[1].rsplit(":", 1)[1])
        config = {
            "site": SITE, "device_id": "generator",
            "model": {"dir": str(REPO / "models" / "sed"), "file": "model.int8.onnx"},
            "backend": {"kind": "onnxruntime", "providers": ["cpu"], "intra_op_threads": 1},
            "streams": [{"id": f"bed-{i + 1}", "source": str(path), "realtime": False,
                         "name": f"Bed {i + 1}", "location": "Ward 3 East"}
                        for i, path in enumerate(sources)],
            "sinks": {"stdout": False, "jsonl": None, "mqtt": True},
            "mqtt": {"host": "127.0.0.1", "port": port, "require_broker_at_start": True,
                     "spool_path": str(folder / "spool.sqlite")},
            "live_interval_s": 0, "metrics_interval_s": 10,
        }  # fmt: skip
        path = folder / "generator.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        keeper = Subscriber(port)
        started_s = time.time()
        with open(folder / "generator.log", "w") as log:
            run = subprocess.run(
                [sys.executable, "-m", "lungwatch.cli", "run", "--config", str(path)],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO, check=False,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )  # fmt: skip
        took_s = time.time() - started_s
        if run.returncode != 0:
            raise SystemExit(f"the runtime failed ({run.returncode}): {folder}/generator.log")
        drained = drain_clips(config)
        last, quiet_since = keeper.count(), time.monotonic()
        while time.monotonic() - quiet_since < 3.0:  # the clips' connection drains after it
            time.sleep(0.5)
            if keeper.count() != last:
                last, quiet_since = keeper.count(), time.monotonic()
        keeper.close()
    kinds = Counter(m.kind for m in keeper.messages)
    stats = {"runtime_s": round(took_s, 1), "messages": dict(kinds), "clips_sent_after": drained}
    metrics = [json.loads(m.payload)["metrics"] for m in keeper.messages if m.kind == "metrics"]
    # clips the runtime could not queue while it read 60x faster than real time (counted)
    stats["clips_dropped_by_the_runtime"] = max((m.get("evidence_dropped", 0) for m in metrics),
                                                default=0)  # fmt: skip
    return keeper.messages, started_s, stats


def drain_clips(config: dict[str, Any]) -> int:
    """Send the clips the runtime left in its spool (it read an hour in a minute, faster than
    its clips leave), with the device's own publisher on the same spool, as after a restart."""
    from edge.evidence.publisher import EvidencePublisher
    from edge.evidence.recorder import EvidenceConfig
    from lungwatch.config import from_mapping
    from lungwatch.mqtt import MqttConfig

    mqtt_config = from_mapping(
        MqttConfig, {**config["mqtt"], "site": SITE, "device_id": config["device_id"]}
    )
    publisher = EvidencePublisher(from_mapping(EvidenceConfig, {}), mqtt_config).connect()
    waiting = len(publisher.spool)
    if not publisher.flush(600.0):
        raise SystemExit(f"{len(publisher.spool)} clips still spooled after 600 s")
    publisher.close()
    return waiting


# -- 2. 200 beds ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Bed:
    index: int
    device: str
    stream: str
    source: str  # the generated bed it replays

    @property
    def name(self) -> str:
        return f"Bed {int(self.stream.split('-')[1])}"

    @property
    def location(self) -> str:
        return f"Ward {self.device.split('-')[1]}, bay {'ABCDE'[(self.index // 10) % 5]}"


def beds(count: int, devices: int) -> list[Bed]:
    per = math.ceil(count / devices)
    return [Bed(i, f"edge-{i // per + 1}", f"bed-{i % per + 1:02d}", f"bed-{i % 3 + 1}")
            for i in range(count)]  # fmt: skip


def replica_id(name: str) -> str:
    """A UUID4-shaped id derived from ``name`` (the bed and the original id)."""
    return str(uuid.UUID(bytes=uuid.uuid5(NAMESPACE, name).bytes, version=4))


def beds_by_source(ward_beds: list[Bed]) -> dict[str, list[Bed]]:
    found: dict[str, list[Bed]] = defaultdict(list)
    for bed in ward_beds:
        found[bed.source].append(bed)
    return found


def known_ids(messages: list[Message]) -> set[str]:
    ids: set[str] = set()
    for m in messages:
        if m.kind == "event":
            body = json.loads(m.payload)
            ids.update((body["id"], body["episode_id"]))
    return ids


def rewrite_strings(value: Any, change: Callable[[str, str], str], key: str = "") -> Any:
    """``key``: the mapping key a string sits under (a list's items keep their list's key)."""
    if isinstance(value, dict):
        return {k: rewrite_strings(v, change, k) for k, v in value.items()}
    if isinstance(value, list):
        return [rewrite_strings(v, change, key) for v in value]
    return change(key, value) if isinstance(value, str) else value


def shifted(key: str, value: str, shift_s: float) -> str:
    if key.endswith("utc") and value:
        return format_utc(parse_utc(value).timestamp() + shift_s)
    return value


def remap(
    message: Message, bed: Bed, ids: set[str], shift_s: float, salt: str = ""
) -> tuple[str, bytes]:
    """``message`` as ``bed``'s: its topic, device, stream, ids (UUID5), name and times."""
    parts = message.topic.split("/")
    parts[3], parts[4] = bed.device, bed.stream

    def change(key: str, value: str) -> str:
        if key == "device_id":
            return bed.device
        if key == "stream_id":
            return bed.stream
        if value in ids:
            return replica_id(f"{salt}{bed.index}/{value}")
        return shifted(key, value, shift_s)

    body = rewrite_strings(json.loads(message.payload), change)
    if message.kind == "summary" and isinstance(body, dict) and body:
        body.update(name=bed.name, location=bed.location)
    return "/".join(parts), json.dumps(body, separators=(",", ":")).encode()


def build_history(
    path: Path | str,
    messages: list[Message],
    ward_beds: list[Bed],
    started_s: float,
    hours: float,
    clip_minutes: float,
) -> dict[str, Any]:
    shift_s = (time.time() - hours * 3600.0) - started_s
    ids = known_ids(messages)
    keep_from_s = started_s + hours * 3600.0 - clip_minutes * 60.0  # generated time
    clip_episodes = set()
    kept = []
    for m in messages:
        if m.kind not in BED_KINDS or not m.payload:  # empty: the stream ended (the file)
            continue
        if m.kind == "evidence":
            body = json.loads(m.payload)
            header = body.get("clip")
            if header and parse_utc(header["start_utc"]).timestamp() >= keep_from_s:
                clip_episodes.add(body["episode_id"])
            if body["episode_id"] not in clip_episodes:
                continue
        kept.append(m)
    by_source = beds_by_source(ward_beds)
    store = History(path, max_age_days=7.0, max_evidence_mb=4000.0)
    ward = Ward(SITE, DashboardConfig(max_beds_per_device=512), history=store)
    began = time.perf_counter()
    handled = 0
    for m in kept:
        for bed in by_source.get(m.stream, ()):
            topic, payload = remap(m, bed, ids, shift_s)
            if not ward.handle(topic, payload, retained=m.retain):
                raise SystemExit(f"the view refused {topic}: {ward.last_rejected}")
            handled += 1
    if not store.flush(timeout_s=600.0):
        raise SystemExit("the history store did not catch up in 600 s")
    store.close()
    return {"messages_in": handled, "intake_s": round(time.perf_counter() - began, 1),
            "clips_of_the_3_beds": len(clip_episodes),
            "store_mb": round(store_bytes(path) / 1e6, 1)}  # fmt: skip


def settle(where: Path | str) -> None:
    """So PostgreSQL's background catch-up does not later share the cores with the browser."""
    if isinstance(where, Path):
        return
    import psycopg

    with psycopg.connect(where, autocommit=True) as db:
        db.execute("VACUUM (ANALYZE)")
        db.execute("CHECKPOINT")


def store_bytes(where: Path | str) -> int:
    if isinstance(where, Path):
        return where.stat().st_size
    import psycopg

    with psycopg.connect(where) as db:
        row = db.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) if row else 0


# -- 3. the page -----------------------------------------------------------------------------
GRID = ("return window.lwReadyMs === null ? null : "
        "[window.lwReadyMs, document.querySelectorAll('article.bed').length];")  # fmt: skip
CLICK_BED = ("const b = document.querySelector(arguments[0]); window.lwTrend = null;"
             "const t = Date.now(); b.click(); return t;")  # fmt: skip
LISTENS = ("return [...document.querySelectorAll('button.listen:not([disabled])')]"
           ".map(b => b.dataset.episode);")  # fmt: skip
CLICK_LISTEN = ("document.querySelector(`button.listen[data-episode=\"${arguments[0]}\"]`)"
                ".click();")  # fmt: skip


def dashboard_config(folder: Path, port: int, store: Path | str) -> Path:
    from tests.wardview.browser import user_entry

    config = {
        "site": SITE,
        "mqtt": {"host": "127.0.0.1", "port": port},
        "dashboard": {"users": [user_entry(NURSE[0], "ack", NURSE[1])],
                      "history_path": str(store), "max_beds_per_device": 512,
                      "probe_interval_s": 5},
    }  # fmt: skip
    path = folder / "view.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def percentiles(values: list[float]) -> dict[str, float]:
    found = percentiles_ms(values)
    return {"n": found.pop("n"), **{f"{k}_ms": round(v, 1) for k, v in found.items()}}


def trend_of(driver: Any, bed: Bed) -> dict[str, Any] | None:
    t = driver.execute_script("return window.lwTrend")
    return t if t and t["stream"] == bed.stream and t["device"] == bed.device else None


def evidence_of(driver: Any, episode: str) -> dict[str, Any] | None:
    s = driver.execute_script("return window.lwEvidence")
    ready = s and s["episode"] == episode and ((s["audioAt"] and s["pictureAt"]) or s["error"])
    return s if ready else None


def measure_page(driver: Any, url: str, ward_beds: list[Bed], repeats: int) -> dict[str, Any]:
    from tests.wardview.browser import wait_until

    grid = []
    for _ in range(repeats):
        driver.get(url)
        ready_ms, shown = wait_until(lambda: driver.execute_script(GRID), 30.0, "the grid")
        if shown != len(ward_beds):
            raise SystemExit(f"the grid showed {shown} beds of {len(ward_beds)}")
        grid.append(ready_ms / 1000.0)
    trend = []
    for bed in ward_beds[:: max(1, len(ward_beds) // 10)][:10]:
        selector = (f'section.device[data-device="{bed.device}"] '
                    f'article.bed[data-stream="{bed.stream}"] button.bed-name')  # fmt: skip
        clicked = driver.execute_script(CLICK_BED, selector)
        drawn = wait_until(functools.partial(trend_of, driver, bed), 10.0, "a trend")
        if not sum(sum(v) for v in drawn["onsets"].values()):
            raise SystemExit(f"{bed} has no onsets in its trend: the history is not there")
        trend.append((drawn["drawnAt"] - clicked) / 1000.0)
    evidence = []
    episodes = wait_until(lambda: driver.execute_script(LISTENS), 10.0, "Listen buttons")
    for episode in episodes[:: max(1, len(episodes) // 10)][:10]:
        driver.execute_script(CLICK_LISTEN, episode)
        shown = wait_until(functools.partial(evidence_of, driver, episode), 10.0, "a clip")
        if shown["error"]:
            raise SystemExit(f"clip {episode}: {shown['error']}")
        evidence.append((max(shown["audioAt"], shown["pictureAt"]) - shown["clickedAt"]) / 1e3)
    return {"grid": percentiles(grid), "trend": percentiles(trend),
            "evidence": percentiles(evidence)}  # fmt: skip


# -- 4. live ---------------------------------------------------------------------------------
def message_time_s(message: Message) -> float:
    body = json.loads(message.payload)
    return parse_utc(body.get("end_utc") or body["start_utc"]).timestamp()


def live_schedule(
    messages: list[Message],
    ward_beds: list[Bed],
    started_s: float,
    hours: float,
    live_s: float,
    with_clips: bool,
    salt: str,
) -> list[tuple[float, str, str, bytes, str]]:
    """(seconds from the start, connection, topic, payload, event id) of the last ``live_s``
    of the generated hour for every bed, with fresh ids; times moved to the replay's start."""
    end_s = started_s + hours * 3600.0
    since_s = end_s - live_s
    ids = known_ids(messages)
    events = [m for m in messages if m.kind == "event" and message_time_s(m) >= since_s]
    ended = {json.loads(m.payload)["episode_id"]: message_time_s(m) for m in events
             if json.loads(m.payload)["state"] == "ended"}  # fmt: skip
    clips = [m for m in messages if m.kind == "evidence"
             and json.loads(m.payload)["episode_id"] in ended] if with_clips else []  # fmt: skip
    by_source = beds_by_source(ward_beds)
    out = []
    for m in events + clips:
        body = json.loads(m.payload)
        at_s = message_time_s(m) if m.kind == "event" else ended[body["episode_id"]] + 1.0
        for bed in by_source.get(m.stream, ()):
            # the times become "now" at replay: shift = replay start - since_s, set later
            topic, payload = remap(m, bed, ids, 0.0, salt)
            event_id = json.loads(payload)["id"] if m.kind == "event" else ""
            out.append((at_s - since_s, "clips" if m.kind == "evidence" else "events", topic,
                        payload, event_id))  # fmt: skip
    return sorted(out, key=lambda row: row[0])


def restamp(payload: bytes, shift_s: float) -> bytes:
    body = rewrite_strings(json.loads(payload), lambda key, value: shifted(key, value, shift_s))
    return json.dumps(body, separators=(",", ":")).encode()


def replay(
    driver: Any, port: int, schedule: list[tuple[float, str, str, bytes, str]], since_s: float
) -> dict[str, Any]:
    """Publish ``schedule`` at its pace; event -> screen from the page's paint stamps."""
    clients = {"events": connected(port, "bench-devices"), "clips": connected(port, "bench-clips")}
    sent: dict[str, float] = {}
    start_s = time.time()
    shift_s = start_s - since_s
    late = []
    try:
        for at_s, connection, topic, payload, event_id in schedule:
            wait_s = start_s + at_s - time.time()
            if wait_s > 0:
                time.sleep(wait_s)
            else:
                late.append(-wait_s)
            body = restamp(payload, shift_s)
            if event_id:
                sent[event_id] = time.time()
            clients[connection].publish(topic, body, qos=1)
        script = "return Object.keys(window.lwRendered).length;"
        previous = -1
        while (now := driver.execute_script(script)) != previous:  # until no new ones are painted
            previous = now
            time.sleep(2.0)
        rendered: dict[str, float] = driver.execute_script("return window.lwRendered")
    finally:
        for client in clients.values():
            client.disconnect()
            client.loop_stop()
    delays = [rendered[i] / 1000.0 - t for i, t in sent.items() if i in rendered]
    return {**percentiles(delays), "events_sent": len(sent),
            "events_on_screen": len(delays),
            "clip_messages": sum(1 for row in schedule if row[1] == "clips"),
            "published_late_p99_ms": round(float(np.percentile(late, 99)) * 1000, 1)
            if late else 0.0}  # fmt: skip


# -- the run ---------------------------------------------------------------------------------
def live(record: dict[str, Any], driver: Any, url: str, port: int, messages: list[Message],
         ward_beds: list[Bed], started_s: float, args: argparse.Namespace) -> None:  # fmt: skip
    from tests.wardview.browser import wait_until

    since_s = started_s + args.hours * 3600.0 - args.live_s
    for run, with_clips in (("reference", False), ("with_clips", True)):
        driver.get(url)
        wait_until(lambda: driver.execute_script(GRID), 30.0, "the grid")
        schedule = live_schedule(messages, ward_beds, started_s, args.hours, args.live_s,
                                 with_clips, salt=run)  # fmt: skip
        record[run] = replay(driver, port, schedule, since_s)
        print(f"{run}: {record[run]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beds", type=int, default=200)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--live-s", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clip-minutes", type=float, default=5.0)
    parser.add_argument("--stores", default="sqlite",
                        help="the history stores to build and load the page on, in order: "
                        "sqlite, postgresql or both (live events on the first)")  # fmt: skip
    args = parser.parse_args(argv)
    from tests.wardview.browser import DashboardProcess, authorise, chromium, require_chromium

    require_chromium()
    stores = [name.strip() for name in args.stores.split(",") if name.strip()]
    if not stores or set(stores) - {"sqlite", "postgresql"}:
        raise SystemExit(f"--stores: sqlite and/or postgresql, got {args.stores!r}")
    record: dict[str, Any] = {"beds": args.beds, "devices": args.devices, "hours": args.hours,
                              "stores": {}}  # fmt: skip
    server = None
    if "postgresql" in stores:
        from tests.postgres import Postgres, binaries

        if binaries() is None:
            raise SystemExit("--stores postgresql: PostgreSQL is not installed (make sysdeps)")
        server = Postgres()
    try:
        with tempfile.TemporaryDirectory(prefix="lungwatch-bench-ward-") as tmp:
            folder = Path(tmp)
            messages, started_s, record["generated"] = generate(folder, args.hours)
            print(f"generated: {record['generated']}", flush=True)
            ward_beds = beds(args.beds, args.devices)
            for n, name in enumerate(stores):
                where: str | Path = folder / "history.sqlite"
                if name == "postgresql":
                    assert server is not None
                    where = server.new_database()
                found = {"history": build_history(where, messages, ward_beds, started_s,
                                                  args.hours, args.clip_minutes)}  # fmt: skip
                settle(where)
                print(f"{name} history: {found['history']}", flush=True)
                with mosquitto_broker() as broker:
                    assert broker is not None
                    port = int(broker[1].rsplit(":", 1)[1])
                    view = dashboard_config(folder, port, where)
                    with DashboardProcess(view) as dashboard, chromium(1600, 1000) as driver:
                        authorise(driver, *NURSE)
                        found["page"] = measure_page(driver, dashboard.url, ward_beds,
                                                     args.repeats)  # fmt: skip
                        print(f"{name} page: {found['page']}", flush=True)
                        if n == 0:  # live events: on the first store only
                            record.update(found, store=name)
                            live(record, driver, dashboard.url, port, messages, ward_beds,
                                 started_s, args)  # fmt: skip
                record["stores"][name] = found
    finally:
        if server is not None:
            server.stop()
    if len(record["stores"]) == 2:
        grid = {k: found["page"]["grid"].get("p99_ms") for k, found in record["stores"].items()}
        pg, lite = grid["postgresql"], grid["sqlite"]
        record["grid_p99_postgresql_over_sqlite"] = round(pg / lite, 3) if pg and lite else None
    ref, clips = record["reference"].get("p99_ms"), record["with_clips"].get("p99_ms")
    record["clip_cost_p99_ratio"] = round(clips / ref, 3) if ref and clips else None
    record["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, nothing pinned"
    record["measured_utc"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    write_results("ward", record, report(record))
    return 0


def report(r: dict[str, Any]) -> str:
    def row(what: str, m: dict[str, Any], target: str) -> str:
        return (f"| {what} | {m.get('n', 0)} | {m.get('p50_ms', '-')} | {m.get('p99_ms', '-')} "
                f"| {m.get('max_ms', '-')} | {target} |")  # fmt: skip

    def page_rows(page: dict[str, Any]) -> list[str]:
        return [
            "| what | n | p50 ms | p99 ms | max ms | target |",
            "|---|---|---|---|---|---|",
            row("grid: navigation -> every bed painted", page["grid"], "<= 1000"),
            row("trend: click -> chart drawn", page["trend"], "<= 1000"),
            row(
                "evidence: click -> audio loaded and spectrogram drawn", page["evidence"], "<= 1000"
            ),
        ]

    page, ref, clips = r["page"], r["reference"], r["with_clips"]
    lines = [
        f"# Ward view: {r['beds']} beds on {r['devices']} devices, {r['hours']:g} h of history",
        "",
        f"Measured {r['measured_utc']} by `python -m bench.ward "
        f"--stores {','.join(r.get('stores', {}) or ['sqlite'])}` ({r['machine']}); the page "
        f"below on {r.get('store', 'sqlite')}.",
        f"History generated through `lungwatch run` in {r['generated']['runtime_s']} s: "
        f"{r['generated']['messages']} (3 beds); through the view's intake: "
        f"{r['history']['messages_in']} messages in {r['history']['intake_s']} s, "
        f"store {r['history']['store_mb']} MB.",
        "",
        *page_rows(page),
        row("event -> screen, events only (reference)", ref, "p99 <= 1000"),
        row("event -> screen, with clips", clips, "p99 <= 1000"),
        "",
        f"Live: {ref['events_sent']} events in {ref['events_on_screen']} painted (reference); "
        f"{clips['events_sent']} events with {clips['clip_messages']} clip parts "
        f"({clips['events_on_screen']} painted). p99 with clips / reference: "
        f"{r['clip_cost_p99_ratio']}.",
    ]  # fmt: skip
    others = {k: v for k, v in r.get("stores", {}).items() if k != r.get("store", "sqlite")}
    for name, found in others.items():
        h, p = found["history"], found["page"]
        lines += ["", f"### The same page on {name}", "",
                  f"Through the view's intake: {h['messages_in']} messages in {h['intake_s']} s, "
                  f"store {h['store_mb']} MB.", "", *page_rows(p)]  # fmt: skip
    if r.get("grid_p99_postgresql_over_sqlite") is not None:
        lines += ["", "Grid p99, PostgreSQL / SQLite (one run): "
                  f"{r['grid_p99_postgresql_over_sqlite']}."]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
