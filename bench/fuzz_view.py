"""Fuzz the ward view's intake: random and mutated device messages, no dead thread, memory bounded.

    make fuzz             # both fuzzers; or: python -m bench.fuzz_view [--inputs 100000]

A corpus of valid messages of every kind a device publishes is mutated, one mutator per input
(values of the wrong type, keys dropped or added, topics and times changed, bytes flipped,
truncated or spliced, garbage), into one long-lived :class:`Ward` with a real SQLite history;
every 50 inputs the push thread's work and the history's answers run on it. Violations: a
message that escapes :meth:`Ward.handle` or counts ``internal_error`` (every bad message must
be refused for a reason the intake names); an exception from the push work or the history; a
row not stored for another reason than the message; a traced heap that grows over the second
half beyond a small margin (the ward holds bounded state).

Writes bench/results/fuzz_view.{md,json}; exits 1 on any violation.
"""

from __future__ import annotations

import copy
import json
import logging
import platform
import random
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.fuzz import _checkpoint, _memory_verdict, heap_table, run_cli
from lungwatch.clip import Clip, clip_messages, encode_flac, quantise
from lungwatch.events import Event, format_utc
from wardview.history import History
from wardview.ward import Ward

SITE, DEVICES, BEDS = "ward-f", ("dev-a", "dev-b"), ("bed-1", "bed-2")
SHA = "0" * 64
HEAP_GROWTH_LIMIT_BYTES = 4 * 1024 * 1024
PUSH_EVERY = 50
ODD_VALUES: list[Any] = [
    None, True, 0, -1, 10**30, -(10**30), 1.5e308, "NaN", "", "x" * 5000, "\ud800", "\x1b[2J",
    "bed-1/../x", [], ["x"], [[[[]]]], {}, {"a": {"b": {"c": []}}}, "2099-01-01T00:00:00.000Z",
    "1970-01-01T00:00:00.000Z", "not a time", 3.7, "high", "latched",
]  # fmt: skip


def make_corpus(now_s: float) -> list[tuple[str, bytes]]:
    root = f"lungwatch/v1/{SITE}"
    out: list[tuple[str, bytes]] = []
    for d, device in enumerate(DEVICES):
        status = {"schema_version": 1, "state": "online", "site": SITE, "device_id": device,
                  "utc": format_utc(now_s), "reason": "connected"}  # fmt: skip
        out.append((f"{root}/{device}/status", json.dumps(status).encode()))
        for b, bed in enumerate(BEDS):
            for k, type_ in enumerate(("Wheeze", "Fine Crackle", "apnoea", "poor_signal")):
                start = now_s - 60 + 7 * k + d + b
                values: dict[str, Any] = {
                    "type": type_, "site": SITE, "device_id": device, "stream_id": bed,
                    "start_utc": format_utc(start), "start_sample": int(start * 8000) % 10**9,
                    "detail": {"key": f"{type_}@{k}", "latched": k == 2},
                }  # fmt: skip
                if type_ in ("Wheeze", "Fine Crackle", "apnoea"):
                    values.update(confidence=0.9, model_id="fuzz", model_sha256=SHA,
                                  quality={"score": 0.95})  # fmt: skip
                onset = Event.onset(**values)
                end_sample = (onset.start_sample or 0) + 24000
                ended = onset.ended(format_utc(start + 3), end_sample=end_sample)
                for event in (onset, onset.ongoing(), ended):
                    out.append((event.topic, event.to_json().encode()))
            body = {"schema_version": 1, "site": SITE, "device_id": device, "stream_id": bed,
                    "utc": format_utc(now_s)}  # fmt: skip
            summary = {**body, "name": f"Bed {b}", "location": "Ward F", "open": [
                {"episode_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7", "type": "apnoea",
                 "priority": "high", "state": "ongoing", "start_utc": format_utc(now_s - 30),
                 "key": "apnoea@1", "latched": True}]}  # fmt: skip
            out.append((f"{root}/{device}/{bed}/summary", json.dumps(summary).encode()))
            resp = {**body, "state": "ok", "rate_bpm": 18.0, "age_band": "adult",
                    "low_bpm": 9, "high_bpm": 24}  # fmt: skip
            out.append((f"{root}/{device}/{bed}/respiration", json.dumps(resp).encode()))
            verdict = {**body, "verdict": "CAS", "window_s": 30.0}
            out.append((f"{root}/{device}/{bed}/verdict", json.dumps(verdict).encode()))
            live = {**body, "classes": {"Wheeze": 0.4}, "quality_score": 0.9}
            out.append((f"{root}/{device}/{bed}/live", json.dumps(live).encode()))
            metrics = {**body, "metrics": {"frames": 10, "read_wait_ms_p99": 3.0}}
            out.append((f"{root}/{device}/metrics", json.dumps(metrics).encode()))
            rng = np.random.default_rng(d * 2 + b)
            audio = (0.1 * rng.standard_normal(8000 * 2)).astype(np.float32)
            clip = Clip(SITE, device, bed, f"9b2c{d}{b}a0-0000-4000-8000-000000000000", "Wheeze",
                        8000, 0, format_utc(now_s - 10), 8000, encode_flac(audio, 8000),
                        ("Wheeze", "Fine Crackle"), 88, 320,
                        quantise(rng.random((50, 2))))  # fmt: skip
            out += [(t, p.encode()) for t, p in clip_messages(clip, part_bytes=8192)]
    return out


class Mutator:
    def __init__(self, corpus: list[tuple[str, bytes]], seed: int) -> None:
        self.corpus, self.rng = corpus, random.Random(seed)
        self.mutators: list[Callable[[str, bytes], tuple[str, bytes]]] = [
            self.value, self.value, self.value, self.drop_key, self.add_key, self.topic,
            self.time, self.bytes_, self.splice, self.garbage, self.valid,
        ]  # fmt: skip

    def make(self) -> tuple[str, bytes]:
        topic, payload = self.rng.choice(self.corpus)
        return self.rng.choice(self.mutators)(topic, payload)

    def _paths(self, node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        found = [path] if path else []
        if isinstance(node, dict):
            for key, value in node.items():
                found += self._paths(value, (*path, key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                found += self._paths(value, (*path, i))
        return found

    def _parent(self, body: Any, path: tuple[Any, ...]) -> Any:
        for part in path[:-1]:
            body = body[part]
        return body

    def value(self, topic: str, payload: bytes) -> tuple[str, bytes]:
        body = json.loads(payload)
        paths = self._paths(body)
        if paths:
            path = self.rng.choice(paths)
            self._parent(body, path)[path[-1]] = copy.deepcopy(self.rng.choice(ODD_VALUES))
        return topic, json.dumps(body).encode()

    def drop_key(self, topic: str, payload: bytes) -> tuple[str, bytes]:
        body = json.loads(payload)
        paths = [p for p in self._paths(body) if isinstance(p[-1], str)]
        if paths:
            path = self.rng.choice(paths)
            del self._parent(body, path)[path[-1]]
        return topic, json.dumps(body).encode()

    def add_key(self, topic: str, payload: bytes) -> tuple[str, bytes]:
        body = json.loads(payload)
        body[self.rng.choice(["extra", "detail", "open", "\ud800", "x" * 300])] = copy.deepcopy(
            self.rng.choice(ODD_VALUES))  # fmt: skip
        return topic, json.dumps(body).encode()

    def topic(self, topic: str, payload: bytes) -> tuple[str, bytes]:
        parts = topic.split("/")
        i = self.rng.randrange(2, len(parts))
        parts[i] = self.rng.choice(["dev-b", "dev-z", "bed-9", "+", "#", "", "x" * 80, "$SYS"])
        return "/".join(parts), payload

    def time(self, topic: str, payload: bytes) -> tuple[str, bytes]:
        body = json.loads(payload)
        for key in ("utc", "start_utc", "end_utc"):
            if key in body:
                body[key] = self.rng.choice(
                    ["2099-12-31T23:59:59.999Z", "1900-01-01T00:00:00.000Z",
                     format_utc(time.time() + 3900), "2026-13-45T99:99:99.000Z"])  # fmt: skip
        return topic, json.dumps(body).encode()

    def bytes_(self, topic: str, payload: bytes) -> tuple[str, bytes]:
        data = bytearray(payload)
        for _ in range(self.rng.randint(1, 8)):
            if data:
                data[self.rng.randrange(len(data))] = self.rng.randrange(256)
        if self.rng.random() < 0.3:
            data = data[: self.rng.randrange(len(data) + 1)]
        return topic, bytes(data)

    def splice(self, topic: str, payload: bytes) -> tuple[str, bytes]:
        _, other = self.rng.choice(self.corpus)
        cut = self.rng.randrange(len(payload) + 1)
        return topic, payload[:cut] + other[self.rng.randrange(len(other) + 1) :]

    def garbage(self, topic: str, payload: bytes) -> tuple[str, bytes]:
        n = self.rng.randrange(200)
        return topic, bytes(self.rng.randrange(256) for _ in range(n))

    def valid(self, topic: str, payload: bytes) -> tuple[str, bytes]:
        return topic, payload


def push_round(ward: Ward, store: History) -> None:
    """What the push thread and a page's requests do with the ward (each to JSON)."""
    json.dumps(ward.alarms(), allow_nan=False)
    json.dumps(ward.snapshot(), allow_nan=False)
    changes = ward.take_changes()
    if changes is not None:
        json.dumps(changes, allow_nan=False)
    for device in DEVICES:
        json.dumps(store.trend(device, BEDS[0], hours=6), allow_nan=False)
    for episode in list(ward.clips)[:2]:
        store.clip(episode)


def fuzz(n_inputs: int, seed: int, checkpoints: int = 10) -> dict[str, object]:
    quiet = logging.getLogger("lungwatch")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # a warning per rejected message: not here
    try:
        with tempfile.TemporaryDirectory() as folder:
            return _fuzz(n_inputs, seed, checkpoints, Path(folder) / "history.sqlite")
    finally:
        quiet.setLevel(level)


def _fuzz(n_inputs: int, seed: int, checkpoints: int, history: Path) -> dict[str, object]:
    violations: list[str] = []
    points: list[dict[str, float]] = []
    store = History(history, max_age_days=1.0, site=SITE,
                    on_failure=lambda why: ward.store_failed(why))  # fmt: skip
    ward = Ward(SITE, history=store)
    mutator = Mutator(make_corpus(time.time()), seed)
    start_s = time.perf_counter()
    for i in range(n_inputs):
        topic, payload = mutator.make()
        try:
            ward.handle(topic, payload, retained=i % 7 == 0)
        except Exception as exc:  # the MQTT thread would die
            violations.append(f"input {i}: handle raised {type(exc).__name__}: {exc}")
        if i % PUSH_EVERY == PUSH_EVERY - 1:
            try:
                push_round(ward, store)
            except Exception as exc:  # the push thread would die
                violations.append(f"input {i}: push raised {type(exc).__name__}: {exc}")
        if (i + 1) % max(n_inputs // checkpoints, 1) == 0:
            store.flush()
            points.append(_checkpoint(i + 1, n_inputs, start_s))
    store.flush()
    store.close()
    tracemalloc.stop()
    reasons = dict(ward.rejected_reasons)
    for reason in ("internal_error", "not_stored", "push_error"):
        if reasons.get(reason):
            violations.append(f"{reasons[reason]} messages counted {reason}: "
                              f"last {ward.last_rejected}")  # fmt: skip
    violations += _memory_verdict(points, HEAP_GROWTH_LIMIT_BYTES)
    return {
        "inputs": n_inputs, "seed": seed, "seconds": round(time.perf_counter() - start_s, 1),
        "accepted": ward.counts.get("messages", 0), "rejected": ward.counts["rejected"],
        "rejected_reasons": reasons, "history_failed": store.failed,
        "checkpoints": points, "violations": violations[:20],
        "n_violations": len(violations),
    }  # fmt: skip


def render(record: dict[str, Any]) -> str:
    lines = [
        f"Fuzz of the ward view's intake: {record['inputs']:,} mutated device messages, seed "
        f"{record['seed']}, {record['seconds']} s; {platform.machine()}, Python "
        f"{platform.python_version()}",
        "",
        f"- violations: {record['n_violations']} (escaped or internal_error, push failure, "
        "history failure, memory)",
        f"- rejected: {record['rejected']:,} by reason: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(record["rejected_reasons"].items())),
        "",
        *heap_table(record["checkpoints"]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_cli(argv, "fuzz_view", __doc__.splitlines()[0], 100_000, fuzz, render)


if __name__ == "__main__":
    raise SystemExit(main())
