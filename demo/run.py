"""``lungwatch demo``: the whole bedside pipeline on three real recordings (``make demo``).

    lungwatch demo [--config demo/demo.yaml] [--broker HOST:PORT] [--seconds N]
                   [--realtime] [--hold] [--set key=value ...]

In one process: a broker, a subscriber printing ``mqtt>`` lines, the ward view, the runtime
on one bed per recording, a PNG per recording and a summary (docs/demo.md, "What runs"). Exit
status 0 when every published event and the ``offline`` status were delivered, else 1.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import NonNegativeFloat, PositiveInt

from demo.subscriber import Subscriber
from edge.audio import read_audio
from edge.bed.detector import DetectorConfig
from edge.bed.gate import GateConfig
from edge.datapaths import PROJECT_ROOT, sprsound_root
from edge.features import extract
from edge.inference import BackendConfig
from edge.monitor import Monitor
from edge.runtime.config import ModelConfig, RuntimeConfig, SinksConfig, StreamConfig
from edge.runtime.loop import (
    Runtime,
    add_run_options,
    install_signal_handlers,
    open_model,
    serve,
    setup_logging,
)
from lungwatch.cli import ArgumentParser
from lungwatch.config import Settings, check, load_config
from lungwatch.errors import AnnotationError, LungwatchError
from lungwatch.events import FINDING_TYPES, PHYSIOLOGICAL_TYPES
from lungwatch.labels import NORMAL, sound_class
from lungwatch.mqtt import MqttConfig
from wardview.config import DashboardConfig
from wardview.plot import Span, render

DEFAULT_CONFIG = Path(__file__).parent / "demo.yaml"
DEFAULT_RECORDS: tuple[str, ...] = (
    "intra_test/64913238_0.6_1_p3_2175",  # CAS: wheezes
    "intra_test/41161556_1.7_0_p2_3062",  # CAS & DAS: wheezes and fine crackles
    "intra_test/65099422_0.5_0_p3_2599",  # DAS: fine crackles
)
MS_PER_S = 1000.0
log = logging.getLogger("lungwatch.demo")


class DemoError(LungwatchError):
    """The demo cannot run (a recording or the broker is missing); the message says which."""


@dataclass(frozen=True)
class DemoConfig(Settings):
    """``demo/demo.yaml`` (every key is commented there)."""

    records: tuple[str, ...] = DEFAULT_RECORDS
    examples_dir: str = "examples"
    realtime: bool = False
    chunk_samples: PositiveInt = 800
    max_run_s: NonNegativeFloat = 0.0
    out_dir: str = "out/demo"
    broker: str | None = None
    delivery_timeout_s: float = 10.0
    site: str = "demo-ward"
    device_id: str = "demo-edge"
    model: ModelConfig = field(default_factory=ModelConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    dashboard: DashboardConfig = field(default_factory=lambda: DashboardConfig(True, port=0))
    hold: bool = False  # keep the broker and the dashboard up after the run, until Ctrl-C

    def __post_init__(self) -> None:
        check(len(self.records) >= 1, "records", self.records, "a list of at least one record")
        ok = self.delivery_timeout_s > 0
        check(ok, "delivery_timeout_s", self.delivery_timeout_s, "a number > 0")
        check(self.broker is None or _is_address(self.broker), "broker", self.broker, "HOST:PORT")


def _is_address(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


@dataclass(frozen=True)
class Recording:
    record: str  # SPRSound record id, the file's stem
    path: Path
    origin: str  # where it was found, for people
    label: str  # SPRSound record label ("" without an annotation file)
    annotated: tuple[Span, ...]


def find_recordings(cfg: DemoConfig) -> list[Recording]:
    """Each record from ``../shared/data`` when present, else from ``examples_dir``."""
    data, examples = sprsound_root(), _project_path(cfg.examples_dir)
    found = []
    for record in cfg.records:
        in_data, in_examples = data / f"{record}.flac", examples / f"{Path(record).name}.flac"
        if in_data.is_file():
            path, origin = in_data, f"SPRSound {data}"
        elif in_examples.is_file():
            path, origin = in_examples, f"shipped copy in {cfg.examples_dir}/"
        else:
            raise DemoError(f"record {record}: neither {in_data} nor {in_examples} exists")
        label, spans = read_annotation(path.with_suffix(".json"))
        found.append(Recording(path.stem, path, origin, label, spans))
    return found


def read_annotation(path: Path) -> tuple[str, tuple[Span, ...]]:
    """SPRSound ``record_annotation`` and ``event_annotation`` (ms -> s); none if absent."""
    if not path.is_file():
        return "", ()
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
        label = str(body.get("record_annotation", body.get("recording_annotation", "")))
        spans = []
        for i, item in enumerate(body.get("event_annotation", [])):
            start_s, end_s = float(item["start"]) / MS_PER_S, float(item["end"]) / MS_PER_S
            if not (0.0 <= start_s <= end_s) or item["type"] in ("", None):
                raise AnnotationError(f"{path}: event_annotation[{i}] is not a valid span")
            spans.append(Span(start_s, end_s, str(item["type"])))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AnnotationError(f"{path}: not an SPRSound annotation ({exc})") from None
    return label, tuple(sorted(spans))


def _project_path(path: str) -> Path:
    given = Path(path)
    return given if given.is_absolute() or given.exists() else PROJECT_ROOT / given


def runtime_config(
    cfg: DemoConfig, recordings: list[Recording], address: str, spool_dir: Path
) -> RuntimeConfig:
    host, port = address.rsplit(":", 1)
    streams = tuple(
        StreamConfig(f"bed-{i + 1}", str(rec.path), cfg.realtime, chunk_samples=cfg.chunk_samples)
        for i, rec in enumerate(recordings)
    )
    model = dataclasses.replace(cfg.model, dir=str(_project_path(cfg.model.dir)))
    mqtt = MqttConfig(host=host, port=int(port), spool_path=str(spool_dir / "events.sqlite"))
    return RuntimeConfig(
        streams=streams,
        site=cfg.site,
        device_id=cfg.device_id,
        model=model,
        backend=cfg.backend,
        detector=cfg.detector,
        gate=cfg.gate,
        sinks=SinksConfig(stdout=True, jsonl=None, mqtt=True, embedded_broker=False),
        mqtt=mqtt,
        max_run_s=cfg.max_run_s,
    )


def delivered_spans(events: list[dict[str, Any]], rate_hz: int, end_sample: int) -> list[Span]:
    """Episodes of one stream as spans in seconds (an episode never ended runs to the end)."""
    episodes: dict[str, dict[str, Any]] = {}
    for event in events:
        if event.get("start_sample") is None:
            continue
        episode = episodes.setdefault(event["episode_id"], {"type": event["type"], "end": None})
        episode["start"] = event["start_sample"]
        if event["state"] == "ended":
            episode["end"] = event["end_sample"]
    return sorted(
        Span(e["start"] / rate_hz, (e["end"] if e["end"] is not None else end_sample) / rate_hz,
             e["type"])
        for e in episodes.values()
    )  # fmt: skip


def window_probabilities(model: Monitor, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Output frames of a whole recording, end included: centres (samples), ``(n, O)`` probs."""
    bed = model.open_bed("picture")
    first, last = bed.push(samples), bed.close()
    probs = np.concatenate([first.probs, last.probs]) if len(first.probs) else last.probs
    start = first.first_frame if len(first.probs) else last.first_frame
    grid = model.grid
    centres = (start + np.arange(probs.shape[0])) * grid.frame_samples + grid.offset_samples
    return centres + grid.frame_samples // 2, probs


def write_pictures(
    cfg: DemoConfig, config: RuntimeConfig, recordings: list[Recording], spans: list[list[Span]]
) -> list[Path]:
    model = open_model(config)
    try:
        m = model.manifest
        rate_hz, hop_samples = m.feature_spec.sample_rate_hz, m.feature_spec.hop_samples
        paths = []
        for rec, detected in zip(recordings, spans, strict=True):
            samples = read_audio(rec.path, target_rate_hz=rate_hz).samples
            centres, probs = window_probabilities(model, samples)
            picture = render(
                title=f"{rec.record}  {rec.label}".strip(),
                spectrogram=extract(samples, m.feature_spec.replace(kind="logmel")),
                frames_per_s=rate_hz / hop_samples,
                freq_range_hz=(m.feature_spec.fmin_hz, m.feature_spec.fmax_hz),
                classes=m.outputs,
                window_centres_s=centres / rate_hz,
                window_hop_s=model.grid.hop_ms / 1000.0,
                probabilities=probs,
                detected=detected,
                annotated=list(rec.annotated),
            )
            path = Path(cfg.out_dir) / f"{rec.record}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            picture.save(path)
            paths.append(path)
        return paths
    finally:
        model.close()


def summarise(
    runtime: Runtime, recordings: list[Recording], spans: list[list[Span]], pictures: list[Path]
) -> list[str]:
    lines = []
    for stream, rec, detected, png in zip(
        runtime.streams, recordings, spans, pictures, strict=True
    ):
        audio_s = stream.counters["samples"] / stream.rate_hz
        physio = [s for s in detected if s.type in PHYSIOLOGICAL_TYPES]
        episodes = [s for s in detected if s.type in FINDING_TYPES]
        technical = [s for s in detected if s.type not in (*PHYSIOLOGICAL_TYPES, *FINDING_TYPES)]
        findings = [s for s in rec.annotated if s.type != NORMAL]
        matched = sum(any(_same_family(a, d) for d in physio) for a in findings)
        lines += [
            f"  {stream.id}  {rec.record}  ({rec.label or 'no annotation'}, {audio_s:.1f} s)",
            f"      detected:  {_counts(physio)}"
            + (f"; finding episodes: {_counts(episodes)}" if episodes else "")
            + (f"; technical: {_counts(technical)}" if technical else ""),
            f"      annotated: {_counts(findings)}; {matched}/{len(findings)} overlapped by a "
            "detection of the same family",
            f"      picture:   {png}",
        ]
    return lines


def _same_family(a: Span, d: Span) -> bool:
    overlap = min(a.end_s, d.end_s) > max(a.start_s, d.start_s)
    families = {sound_class(a.type).family, sound_class(d.type).family}
    return overlap and (len(families) == 1 or "CAS & DAS" in families)


def _counts(spans: Iterable[Span], none: str = "none") -> str:
    counted = Counter(s.type for s in spans)
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counted.items())) or none


def run(cfg: DemoConfig, stop: threading.Event) -> int:
    recordings = find_recordings(cfg)
    for i, rec in enumerate(recordings):
        what = _counts(rec.annotated, "no annotated events")
        print(f"bed-{i + 1}: {rec.record} ({rec.label or '?'}; {what}) from {rec.origin}")
    broker = None
    if cfg.broker is None:
        from edge.sinks.broker import EmbeddedBroker

        broker = EmbeddedBroker().start()
    address = cfg.broker or broker.address  # type: ignore[union-attr]
    print(f"broker: {address} ({'embedded amqtt' if broker else 'configured'})")
    dashboards: list[Any] = []  # started once the subscriber has reached the broker
    try:
        with tempfile.TemporaryDirectory(prefix="lungwatch-demo-") as spool_dir:
            config = runtime_config(cfg, recordings, address, Path(spool_dir))
            runtime, subscriber, wall_s = _serve(cfg, config, address, stop, dashboards)
        if cfg.hold and dashboards:
            print(f"holding {dashboards[0].url} open; Ctrl-C to stop", flush=True)
            stop.wait()
    finally:
        for dashboard in dashboards:
            dashboard.stop()
        if broker is not None:
            broker.stop()
    return _report(cfg, config, runtime, subscriber, recordings, wall_s)


def _serve(
    cfg: DemoConfig,
    config: RuntimeConfig,
    address: str,
    stop: threading.Event,
    dashboards: list[Any],
) -> tuple[Runtime, Subscriber, float]:
    subscriber = Subscriber(address, cfg.site, cfg.device_id).start()
    try:
        if cfg.dashboard.enabled:
            from wardview.server import DashboardServer

            host, port = address.rsplit(":", 1)
            mqtt = MqttConfig(host=host, port=int(port), site=cfg.site, device_id=cfg.device_id)
            dashboards.append(DashboardServer(cfg.dashboard, mqtt, cfg.site).start())
            print(dashboards[-1].describe(), flush=True)
        pace = "paced in real time" if cfg.realtime else "as fast as possible"
        print(f"streaming {len(config.streams)} recordings {pace}; runtime lines (stdout sink) "
              "and mqtt> lines (what the broker delivered)\n", flush=True)  # fmt: skip
        start_s = time.monotonic()
        runtime = serve(config, stop)
        wall_s = time.monotonic() - start_s
        published = sum(s.counters["events"] for s in runtime.streams)
        if not subscriber.wait_for(published, cfg.delivery_timeout_s):
            log.warning("not everything was delivered within %g s", cfg.delivery_timeout_s)
    finally:
        subscriber.stop()
    return runtime, subscriber, wall_s


def _report(
    cfg: DemoConfig,
    config: RuntimeConfig,
    runtime: Runtime,
    subscriber: Subscriber,
    recordings: list[Recording],
    wall_s: float,
) -> int:
    events = list(subscriber.events.values())
    spans = [
        delivered_spans(
            [e for e in events if e["stream_id"] == s.id], s.rate_hz, s.counters["samples"]
        )
        for s in runtime.streams
    ]
    pictures = write_pictures(cfg, config, recordings, spans)
    published = sum(s.counters["events"] for s in runtime.streams)
    acked = _acked(runtime)
    audio_s = sum(s.counters["samples"] / s.rate_hz for s in runtime.streams)
    print(f"\nsummary: {len(runtime.streams)} streams, {audio_s:.1f} s of audio in {wall_s:.1f} s")
    print("\n".join(summarise(runtime, recordings, spans, pictures)))
    same, offline = len(events) == published, subscriber.offline.is_set()
    print(
        f"events: published {published}, acknowledged by the broker {acked}, delivered "
        f"{len(events)} ({subscriber.duplicates} duplicates dropped): "
        + ("delivered == published" if same else "DELIVERED != PUBLISHED")
    )
    print(f"status offline delivered: {'yes' if offline else 'NO'}")
    return 0 if same and offline else 1


def _acked(runtime: Runtime) -> int | str:
    for sink in getattr(runtime.sink, "sinks", ()):
        if hasattr(sink, "stats"):
            return int(sink.stats()["acked"])
    return "?"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch demo", description=__doc__)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="demo YAML file")
    parser.add_argument("--broker", metavar="HOST:PORT", help="use this broker (no embedded one)")
    parser.add_argument("--seconds", type=float, metavar="N", help="stop after N s (max_run_s)")
    parser.add_argument("--realtime", action="store_true", help="pace the recordings at 8 kHz")
    parser.add_argument(
        "--hold", action="store_true", help="keep the dashboard up after the run, until Ctrl-C"
    )
    add_run_options(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    overrides = list(args.set)
    overrides += [f"broker={json.dumps(args.broker)}"] if args.broker is not None else []
    overrides += [f"max_run_s={args.seconds}"] if args.seconds is not None else []
    overrides += ["realtime=true"] if args.realtime else []
    overrides += ["hold=true"] if args.hold else []
    cfg = load_config(DemoConfig, args.config, overrides)
    stop = threading.Event()
    install_signal_handlers(stop)
    return run(cfg, stop)


if __name__ == "__main__":
    raise SystemExit(main())
