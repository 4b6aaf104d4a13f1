"""What a ward's alarm list asks of a nurse: episodes as rows against alarm conditions.

    python -m bench.alarm_load [--beds 50] [--minutes 30] [--ack-after-s 60] [--seed 0]

Each bed gets ``--minutes`` of seeded, joined SPRSound ``intra_test`` records (about half
hold adventitious sounds: a sick ward, not a typical one), run through ``lungwatch run`` (the
shipped INT8 model, respiration on) as fast as it goes. The events are replayed in order
through the ward view's intake and listed two ways: *episodes*, one row per open episode;
*conditions* (``lungwatch.alarms``, the shipped list), one row per bed and condition, each
acknowledged by a simulated nurse ``--ack-after-s`` after it starts alarming. Reported for
both: rows on the page, alarm rows or signals per hour, acknowledgements per bed-hour, and
that every episode reached the view.

Results: ``bench/results/alarm_load.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import yaml

from edge.audio import read_audio
from edge.datapaths import data_root
from lungwatch.alarms import AlarmSettings
from lungwatch.events import Event, parse_utc
from wardview.config import DashboardConfig
from wardview.ward import Ward

REPO = Path(__file__).resolve().parents[1]
RATE_HZ = 8000
SAMPLE_EVERY_S = 10.0


def ward_audio(folder: Path, beds: int, minutes: float, seed: int) -> list[Path]:
    records = sorted((data_root() / "sprsound" / "intra_test").glob("*.flac"))
    if not records:
        sys.exit(f"no SPRSound intra_test records under {data_root()} (set LUNGWATCH_DATA_DIR)")
    rng = np.random.default_rng(seed)
    cache: dict[Path, np.ndarray] = {}
    paths = []
    for bed in range(beds):
        parts, total = [], 0
        while total < minutes * 60 * RATE_HZ:
            path = records[int(rng.integers(len(records)))]
            if path not in cache:
                cache[path] = read_audio(path, target_rate_hz=RATE_HZ).samples
            parts.append(cache[path])
            total += cache[path].shape[0]
        out = folder / f"bed-{bed + 1}.flac"
        sf.write(out, np.concatenate(parts)[: int(minutes * 60 * RATE_HZ)], RATE_HZ)
        paths.append(out)
    return paths


def run_device(folder: Path, audio: list[Path]) -> tuple[Path, float]:
    events = folder / "events.jsonl"
    config = {
        "site": "ward-load",
        "device_id": "edge-load",
        "model": {"dir": str(REPO / "models" / "sed"), "file": "model.int8.onnx"},
        "streams": [{"id": p.stem, "source": str(p), "realtime": False} for p in audio],
        "sinks": {"stdout": False, "jsonl": str(events), "mqtt": False},
        "evidence": {"enabled": False},
        "live_interval_s": 0,
        "alarms": {"persist": False},
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    started = time.perf_counter()
    lungwatch = Path(sys.executable).with_name("lungwatch")
    result = subprocess.run([str(lungwatch), "run", "--config", str(path)], cwd=REPO,
                            capture_output=True, text=True, check=False)  # fmt: skip
    if result.returncode != 0:
        sys.exit(f"lungwatch run failed:\n{result.stderr[-4000:]}")
    return events, time.perf_counter() - started


def event_time(event: Event) -> float:
    """Stream time, POSIX s: onset its start, ended its end, latched update its condition's end."""
    utc = event.start_utc
    if event.state == "ended" and event.end_utc:
        utc = event.end_utc
    elif event.detail.get("condition_end_utc"):
        utc = str(event.detail["condition_end_utc"])
    return parse_utc(utc).timestamp()


def replay(events: list[Event], beds: int, ack_after_s: float, hold_s: float) -> dict[str, Any]:
    now = [0.0]
    config = DashboardConfig(max_open_episodes_per_bed=100_000, alarms=AlarmSettings(hold_s=hold_s))
    ward = Ward("ward-load", config, clock=lambda: now[0])
    open_episodes: set[str] = set()
    episode_rows: list[int] = []
    condition_rows: list[int] = []
    onsets = latched = 0
    alarming_since: dict[tuple[str, str, str], float] = {}
    signals = acks = 0
    start = end = None
    next_sample = None

    def sample() -> None:
        nonlocal signals, acks
        rows = ward.alarms()
        condition_rows.append(len(rows))
        episode_rows.append(len(open_episodes))
        alarming = {(r["device_id"], r["stream_id"], r["condition"]) for r in rows
                    if r["state"] == "alarming"}  # fmt: skip
        for key in alarming - set(alarming_since):
            alarming_since[key] = now[0]
            signals += 1
        for key in set(alarming_since) - alarming:
            del alarming_since[key]
        for key, since in list(alarming_since.items()):
            if now[0] - since >= ack_after_s:
                ward.acknowledge_sent(*key, "nurse")
                acks += 1
                del alarming_since[key]

    for event in events:
        at = event_time(event)
        now[0] = max(now[0], at)
        start = at if start is None else min(start, at)
        end = now[0]
        if next_sample is None:
            next_sample = now[0] + SAMPLE_EVERY_S
        while now[0] >= next_sample:
            held, now[0] = now[0], next_sample
            sample()
            now[0], next_sample = held, next_sample + SAMPLE_EVERY_S
        ward.handle(event.topic, event.to_json().encode())
        if event.state == "onset":
            onsets += 1
        if event.state == "ended":
            open_episodes.discard(event.episode_id)
        else:
            open_episodes.add(event.episode_id)
        if event.state == "ongoing" and event.detail.get("latched"):
            latched += 1
    hours = max(1e-9, ((end or 0.0) - (start or 0.0)) / 3600.0)
    return {
        "stream_hours": round(hours, 3),
        "intake_events": ward.counts["events"],
        "episodes": {
            "rows_mean": round(float(np.mean(episode_rows)), 1) if episode_rows else 0.0,
            "rows_max": max(episode_rows, default=0),
            "alarm_rows_started_per_hour": round(onsets / hours, 1),
            "acks_per_bed_per_hour": round(latched / hours / beds, 2),
        },
        "conditions": {
            "rows_mean": round(float(np.mean(condition_rows)), 1) if condition_rows else 0.0,
            "rows_max": max(condition_rows, default=0),
            "alarm_signals_started_per_hour": round(signals / hours, 1),
            "acks_per_bed_per_hour": round(acks / hours / beds, 2),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--beds", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--ack-after-s", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hold-s", type=float, nargs="+", default=[0.0, 60.0],
                        help="the conditions' hold_s to compare")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lungwatch-alarm-load-") as tmp:
        folder = Path(tmp)
        audio = ward_audio(folder, args.beds, args.minutes, args.seed)
        jsonl, wall_s = run_device(folder, audio)
        lines = jsonl.read_text(encoding="utf-8").splitlines() if jsonl.exists() else []
    events = [Event.from_json(line) for line in lines]
    runs = {str(h): replay(events, args.beds, args.ack_after_s, h) for h in args.hold_s}
    found = runs[str(args.hold_s[0])]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python -m bench.alarm_load " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "beds": args.beds, "minutes": args.minutes, "ack_after_s": args.ack_after_s,
        "seed": args.seed, "device_wall_s": round(wall_s, 1), "events": len(events),
        "nothing_lost": found["intake_events"] == len(events),
        "stream_hours": found["stream_hours"], "intake_events": found["intake_events"],
        "episodes": found["episodes"],
        "conditions_by_hold_s": {h: r["conditions"] for h, r in runs.items()},
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "alarm_load.json").write_text(json.dumps(result, indent=1) + "\n")
    e = result["episodes"]
    heads = " | ".join(f"one row per bed and condition, hold_s {float(h):g}" for h in runs)

    def cells(key: str, key2: str | None = None) -> str:
        return " | ".join(
            str(r["conditions"][key]) + (f" / {r['conditions'][key2]}" if key2 else "")
            for r in runs.values()
        )

    table = [
        "# Alarm load: episodes as rows against alarm conditions",
        "",
        f"{result['date']}, `{result['command']}`, {result['machine']}: {args.beds} beds x "
        f"{args.minutes:g} min of SPRSound `intra_test` records through `lungwatch run` "
        f"({len(events)} event messages, {result['stream_hours']} h of stream time; every "
        f"message reached the view's intake: {result['nothing_lost']}); a nurse acknowledges "
        f"each alarming condition {args.ack_after_s:g} s after it starts.",
        "",
        f"| | one row per episode (before) | {heads} |",
        "|---|---:|" + "---:|" * len(runs),
        f"| rows on the page, mean / max | {e['rows_mean']} / {e['rows_max']} | "
        f"{cells('rows_mean', 'rows_max')} |",
        f"| alarm rows (before) / alarm signals (now) started per hour | "
        f"{e['alarm_rows_started_per_hour']} | {cells('alarm_signals_started_per_hour')} |",
        f"| acknowledgements needed per bed per hour | {e['acks_per_bed_per_hour']} | "
        f"{cells('acks_per_bed_per_hour')} |",
        "",
    ]
    (args.out / "alarm_load.md").write_text("\n".join(table))
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
