"""Helpers of the runtime tests: configs in a temporary folder, the runtime in this process or
as a ``lungwatch run`` subprocess, SPRSound annotations, and matching events to them.

Matching rule (stated once, used by the end-to-end test): an ``ended`` physiological event
*matches* an annotated event when both are of the same family (CAS: Wheeze, Rhonchi,
Stridor; DAS: Fine/Coarse Crackle; ``Wheeze+Crackle`` counts as both) and their spans overlap,
or their centres are within :data:`MATCH_TOLERANCE_S`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import yaml

from edge.datapaths import sprsound_root
from edge.runtime.config import RuntimeConfig
from edge.runtime.loop import Runtime, open_model, open_streams, serve
from lungwatch.config import from_mapping
from lungwatch.events import Event
from lungwatch.labels import sound_class
from wardview.server import serve_beside

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO_ROOT / "models" / "sed"
RATE_HZ = 8000
SITE, DEVICE = "ward-t", "edge-t"
MATCH_TOLERANCE_S = 1.0
WHEEZES = "intra_test/64913238_0.6_1_p3_2175"  # 13 annotated wheezes, 15.7 s
MIXED = "intra_test/41161556_1.7_0_p2_3062"  # wheezes and fine crackles
CRACKLES = "intra_test/41004529_5.2_1_p3_1359"  # 5 fine crackles
# 8 fine crackles, 15.4 s: the record the shipped streaming model finds most of (its findings
# drive the runtime's reliability tests; an earlier model raised almost no Wheeze event:
# docs/models/sed-lab.md)
FOUND = "intra_test/41267028_0.3_0_p1_2681"
SUBPROCESS_ENV = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


def record_path(record: str, suffix: str = ".flac") -> Path:
    """A SPRSound record (``intra_test/<name>``); skips the test when the data are absent."""
    path = sprsound_root() / f"{record}{suffix}"
    if not path.is_file():
        pytest.skip(f"SPRSound record not found at {path} (set LUNGWATCH_DATA_DIR)")
    return path


def stream(stream_id: str, source: str | Path, **options: Any) -> dict[str, Any]:
    return {"id": stream_id, "source": str(source), **options}


def config_mapping(
    tmp_path: Path, streams: Sequence[dict[str, Any]], /, **sections: Any
) -> dict[str, Any]:
    """A runtime config as plain data: the shipped model (INT8, ONNX Runtime CPU), no stdout,
    no MQTT unless ``sections`` says so; ``sections`` replace or extend top-level keys."""
    base: dict[str, Any] = {
        "site": SITE,
        "device_id": DEVICE,
        "model": {"dir": str(MODEL_DIR), "file": "model.int8.onnx"},
        "backend": {"kind": "onnxruntime", "providers": ["cpu"], "intra_op_threads": 1},
        "streams": list(streams),
        "sinks": {"stdout": False, "jsonl": str(tmp_path / "events.jsonl"), "mqtt": False},
        "mqtt": {"spool_path": str(tmp_path / "spool.sqlite"), "connect_timeout_s": 5.0},
        "metrics_interval_s": 1.0,
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


def mqtt_sections(tmp_path: Path, port: int, **mqtt: Any) -> dict[str, Any]:
    """``sinks`` and ``mqtt`` sections for a broker on 127.0.0.1:``port``."""
    return {
        "sinks": {"mqtt": True},
        "mqtt": {"host": "127.0.0.1", "port": port, "flush_timeout_s": 15.0, **mqtt},
    }


def write_config(path: Path, mapping: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
    return path


def build(mapping: dict[str, Any]) -> RuntimeConfig:
    return from_mapping(RuntimeConfig, mapping, source="test.yaml")


class ListSink:
    """A sink that keeps events and metrics in memory (the Sink protocol)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.metrics: list[tuple[str, dict[str, Any]]] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)

    def publish_metrics(self, stream_id: str, metrics: dict[str, Any]) -> None:
        self.metrics.append((stream_id, metrics))

    def flush(self, timeout_s: float) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release."""


def run_collecting(config: RuntimeConfig) -> tuple[Runtime, ListSink]:
    """The runtime over ``config``'s streams into a :class:`ListSink` until the sources end."""
    model = open_model(config, "test.yaml")
    try:
        sink = ListSink()
        runtime = Runtime(config, model, open_streams(config, model, "test.yaml"), sink)
        runtime.run(threading.Event())
    finally:
        model.backend.close()
    return runtime, sink


class ServeThread:
    """:func:`edge.runtime.loop.serve` in a background thread (the MQTT sink included), with
    the ward view beside it where the config enables it, as ``lungwatch run`` serves it."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.runtime: Runtime | None = None
        self._thread = threading.Thread(target=self._serve, args=(config,), daemon=True)

    def _serve(self, config: RuntimeConfig) -> None:
        try:
            self.runtime = serve(config, self.stop, source="test.yaml", companions=(serve_beside,))
        except BaseException as exc:  # handed to the test thread by join()
            self.error = exc

    def __enter__(self) -> ServeThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.join()

    def join(self, timeout_s: float = 60.0) -> Runtime | None:
        self.stop.set()
        self._thread.join(timeout_s)
        if self.error is not None:
            raise self.error
        return self.runtime


def lungwatch(*args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``lungwatch ARGS`` (``python -m lungwatch.cli``, the workstation script, every command) to
    completion, stdout and stderr captured."""
    return subprocess.run(
        [sys.executable, "-m", "lungwatch.cli", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **SUBPROCESS_ENV},
    )


def start_lungwatch(config: Path, log_path: Path) -> subprocess.Popen[str]:
    """``lungwatch run --config CONFIG -v`` in the background; stdout and stderr to a file."""
    with open(log_path, "w", encoding="utf-8") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "lungwatch.cli", "run", "--config", str(config), "-v"],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **SUBPROCESS_ENV},
        )


def wait_for_text(path: Path, text: str, process: subprocess.Popen[str], timeout_s: float) -> None:
    """Until ``text`` appears in the file at ``path``; fails if the process exits first."""
    deadline_s = time.monotonic() + timeout_s
    while time.monotonic() < deadline_s:
        if text in path.read_text(encoding="utf-8", errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    tail = path.read_text(encoding="utf-8", errors="replace")[-3000:]
    pytest.fail(f"{text!r} did not appear within {timeout_s} s; log:\n{tail}")


def jsonl_events(path: Path) -> list[Event]:
    return [Event.from_json(line) for line in path.read_text(encoding="utf-8").splitlines()]


def spans(events: Sequence[Event]) -> list[tuple[str, str, int | None, int | None]]:
    """What chunk-size invariance compares: (type, state, start_sample, end_sample)."""
    return [(e.type, e.state, e.start_sample, e.end_sample) for e in events]


def write_audio(path: Path, samples: np.ndarray) -> Path:
    soundfile.write(path, samples.astype(np.float32), RATE_HZ, subtype="PCM_16")
    return path


@dataclass(frozen=True)
class Annotated:
    start_s: float
    end_s: float
    type: str


def annotated_events(record: str) -> list[Annotated]:
    """The record's annotated adventitious events (``event_annotation``, times in ms)."""
    body = json.loads(record_path(record, ".json").read_text(encoding="utf-8"))
    found = [
        Annotated(float(e["start"]) / 1000.0, float(e["end"]) / 1000.0, e["type"])
        for e in body.get("event_annotation", [])
        if e["type"] != "Normal"
    ]
    return sorted(found, key=lambda a: a.start_s)


def families(event_type: str) -> set[str]:
    """CAS and/or DAS (``Wheeze+Crackle`` is both)."""
    return set(sound_class(event_type).family.split(" & "))


def matches(start_s: float, end_s: float, type_: str, truth: Annotated) -> bool:
    """The rule of the module doc: same family, and overlap or centres within tolerance."""
    if not families(type_) & families(truth.type):
        return False
    overlap = start_s < truth.end_s and truth.start_s < end_s
    centre_gap_s = abs((start_s + end_s) / 2 - (truth.start_s + truth.end_s) / 2)
    return overlap or centre_gap_s <= MATCH_TOLERANCE_S


def match_share(
    ended: Sequence[Event], truth: Sequence[Annotated], rate_hz: int = RATE_HZ
) -> tuple[int, int]:
    """(detected events that match an annotation, detected events) among ``ended`` ones."""
    hit = 0
    for event in ended:
        start, end = sample_span(event)
        hit += any(matches(start / rate_hz, end / rate_hz, event.type, t) for t in truth)
    return hit, len(ended)


def sample_span(event: Event) -> tuple[int, int]:
    """``(start_sample, end_sample)`` of an ended event on a stream timeline."""
    if event.start_sample is None or event.end_sample is None:
        raise ValueError(f"event {event.id} has no sample span")
    return event.start_sample, event.end_sample


def physiological_ended(events: Sequence[Event]) -> list[Event]:
    return [e for e in events if e.kind == "physiological" and e.state == "ended"]


def eventually(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> bool:
    deadline_s = time.monotonic() + timeout_s
    while time.monotonic() < deadline_s:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()
