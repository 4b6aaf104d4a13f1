"""Whole-file throughput and detection latency of the runtime, on real recordings, one core.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 taskset -c 0 python -m bench.detection
        [--folder ../shared/data/sprsound/intra_test] [--paced-records 400] [--no-mqtt]

- **Whole file** (target >= 400x real time): every record of the folder as one bed,
  ``realtime: false``, through :func:`edge.runtime.offline.detect_recordings` (the runtime with a
  collecting sink): seconds of audio per second of wall time, for the shipped INT8 model
  (``edge/configs/ward.yaml``) and, with ``--reference-dir``, another model folder as the
  reference run in the same process (the ratio is the speed-up).
- **Detection latency** (target p99 <= 1.0 s): the records of the folder with annotated
  adventitious events, each one bed, paced in real time through the runtime with the MQTT
  sink (QoS 1 through the spool) to a local Mosquitto. For every annotated adventitious event
  that the device detects (the earliest episode of the same family, CAS or DAS, whose span
  overlaps the annotated one widened by 0.2 s on each side), the latency is the time from
  the annotated onset (the stream's sample-0 wall time + onset) to the PUBACK of that
  episode's ``onset`` message. An episode that began before the annotated event (an earlier
  phase still going on) gives a negative latency; their number is reported. Without
  Mosquitto (``--no-mqtt``) it measures to ``publish`` instead, and says so.
  Where the time goes, per detected event: the annotated onset to the start the device
  reports (``start_ms``), and, per ``onset`` message, the device's own share split three ways
  (``split_ms``): ``decision``, from the reported start to the end of the output frame whose
  arrival made the detector announce (found by feeding the bed's output frames, as the run
  produced them, one at a time to a :class:`~edge.bed.detector.FrameDetector` with the run's
  rules); ``ready``, from the end of that frame's span on the output grid to the moment the
  runtime had its output (the model's look-ahead, the wait for the chunk, inference);
  ``delivery``, from then to the PUBACK.

Results: ``bench/results/detection.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import write_results
from bench.runtime import mosquitto_broker
from bench.runtime_probes import AckProbe, TimingSink, percentiles_ms
from edge.bed.detector import DetectorConfig, FrameDetector, FrameGrid
from edge.datapaths import sprsound_root
from edge.inference import BackendConfig
from edge.runtime.config import (
    ModelConfig,
    MqttConfig,
    RuntimeConfig,
    SinksConfig,
    StreamConfig,
    load_runtime_config,
    open_sinks,
)
from edge.runtime.loop import Runtime, open_model, open_streams
from edge.runtime.offline import FrameKeeper, detect_recordings, recordings_in
from lungwatch.events import Event
from lungwatch.labels import FAMILY_CLASSES, sound_class

WARD = Path("edge/configs/ward.yaml")
FAMILY = {t: f for f, types in FAMILY_CLASSES.items() for t in types}
COLLAR_S = 0.2
TARGETS = {"whole_file_x_realtime": 400.0, "detection_latency_p99_s": 1.0}


def whole_file(folder: Path, model: ModelConfig) -> dict[str, Any]:
    import soundfile

    recordings = recordings_in([folder])
    audio_s = sum(soundfile.info(str(p)).duration for p in recordings.values())
    backend = BackendConfig(providers=("cpu",), intra_op_threads=1, max_batch=64)
    start = time.perf_counter()
    found = detect_recordings(recordings, Path(model.dir), model.file, backend=backend)
    wall = time.perf_counter() - start
    return {
        "model": f"{model.dir}/{model.file}",
        "records": len(recordings),
        "audio_s": audio_s,
        "wall_s": wall,
        "x_realtime": audio_s / wall,
        "events": sum(len(r.physiological) for r in found.values()),
    }


def annotated(folder: Path) -> dict[str, list[tuple[float, float, str]]]:
    out = {}
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        events = [
            (int(e["start"]) / 1000, int(e["end"]) / 1000, FAMILY[t])
            for e in data.get("event_annotation", [])
            for t in sound_class(e["type"]).raised_as
            if t in FAMILY
        ]
        if events:
            out[path.stem] = events
    return out


class _Recorder(TimingSink):
    """Forwards events to ``inner`` and keeps each with the time it was handed over."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner, {})
        self.events: list[tuple[Event, float]] = []

    def _note(self, event: Event, now_s: float) -> None:
        self.events.append((event, now_s))


def decision_frames(
    outputs: Sequence[str], config: DetectorConfig, grid: FrameGrid, probs: np.ndarray
) -> dict[tuple[str, int], int]:
    """(type, start sample) of each physiological onset -> the output frame that decided it.
    NaN rows (frames the model never described) are not fed, as on the device."""
    detector = FrameDetector(outputs, config, grid)
    out: dict[tuple[str, int], int] = {}
    for j in np.flatnonzero(np.isfinite(probs).all(axis=1)):
        for t in detector.update(int(j), probs[j : j + 1]):
            if t.state == "onset":
                out.setdefault((t.type, t.start_sample), int(j))
    return out


def latency(folder: Path, n_records: int, broker: str | None, model: ModelConfig) -> dict:
    truth = annotated(folder)
    names = sorted(truth)[:n_records]
    files = recordings_in([folder])
    streams = tuple(
        StreamConfig(id=f"bed-{i}", source=str(files[n]), realtime=True, loop=False)
        for i, n in enumerate(names)
    )
    host, _, port = (broker or "127.0.0.1:1883").rpartition(":")
    with tempfile.TemporaryDirectory(prefix="lungwatch-bench-latency-") as tmp:
        config = RuntimeConfig(
            streams=streams,
            site="bench",
            device_id="edge-1",
            model=model,
            backend=BackendConfig(providers=("cpu",), intra_op_threads=1),
            sinks=SinksConfig(stdout=False, jsonl=None, mqtt=broker is not None),
            mqtt=MqttConfig(host=host, port=int(port), spool_path=f"{tmp}/spool.sqlite"),
        )
        loaded = open_model(config)
        grid, classes, rules = loaded.grid, loaded.outputs, loaded.settings.detector
        opened = open_streams(config, loaded)
        sink, mqtt = open_sinks(config)
        probe = AckProbe(mqtt) if mqtt is not None else None
        recorder = _Recorder(sink)
        frames = FrameKeeper()
        runtime = Runtime(config, loaded, opened, recorder, on_frames=frames)
        if mqtt is not None:
            mqtt.connect()
        offset = time.time() - time.perf_counter()  # wall clock -> perf_counter clock
        start = time.perf_counter()
        runtime.run(threading.Event())
        wall = time.perf_counter() - start
        sink.close()
        loaded.close()
    acks = probe.ack_times() if probe is not None else {}
    onsets = {e.episode_id: (e, t) for e, t in recorder.events if e.state == "onset"}
    episodes: dict[str, list[tuple[float, float, str, str]]] = {}  # stream -> spans
    rate = loaded.manifest.feature_spec.sample_rate_hz
    for e, _ in recorder.events:
        if e.kind == "physiological" and e.state == "ended" and e.type in FAMILY:
            assert e.start_sample is not None
            assert e.end_sample is not None
            span = (e.start_sample / rate, e.end_sample / rate, FAMILY[e.type], e.episode_id)
            episodes.setdefault(e.stream_id, []).append(span)
    delays, own, starts = [], [], []
    split: dict[str, list[float]] = {"decision": [], "ready": [], "delivery": []}
    unsplit = 0
    for stream, name in zip(opened, names, strict=True):
        t0 = (stream.t0_posix or 0.0) - offset  # sample 0 on the perf_counter clock
        made = frames.times(stream.id)
        deciding = decision_frames(classes, rules, grid, frames.probs(stream.id, len(classes)))
        for onset, handed_s in onsets.values():
            if onset.stream_id == stream.id and onset.kind == "physiological":
                assert onset.start_sample is not None
                when = acks.get(onset.id, handed_s)
                own.append(when - (t0 + onset.start_sample / stream.rate_hz))
                j = deciding.get((onset.type, onset.start_sample))
                if j is None or not np.isfinite(made[j]):
                    unsplit += 1
                    continue
                decided_s = grid.end_sample(j) / stream.rate_hz
                split["decision"].append(decided_s - onset.start_sample / stream.rate_hz)
                split["ready"].append(made[j] - (t0 + decided_s))
                split["delivery"].append(when - made[j])
        for start_s, end_s, family in truth[name]:
            hits = sorted(
                (s, episode)
                for s, e, f, episode in episodes.get(stream.id, [])
                if f == family and s < end_s + COLLAR_S and e > start_s - COLLAR_S
            )
            if not hits:
                continue
            onset, handed_s = onsets[hits[0][1]]
            delays.append(acks.get(onset.id, handed_s) - (t0 + start_s))
            assert onset.start_sample is not None
            starts.append(onset.start_sample / stream.rate_hz - start_s)
    n_events = sum(len(truth[n]) for n in names)
    return {
        "model": f"{model.dir}/{model.file}",
        "records": len(names),
        "wall_s": wall,
        "annotated_events": n_events,
        "detected": len(delays),
        "to": "PUBACK" if probe is not None else "publish (no broker)",
        "latency_ms": percentiles_ms(delays),
        "negative": sum(d < 0 for d in delays),
        "announce_ms": percentiles_ms(own),
        "start_ms": percentiles_ms(starts),
        "split_ms": {key: percentiles_ms(values) for key, values in split.items()},
        "unsplit": unsplit,
    }


def render(record: dict[str, Any]) -> str:
    h = record["header"]
    lines = [
        "# Whole-file throughput and detection latency (`python -m bench.detection`)",
        "",
        f"{h['when']}, {h['machine']}, Python {h['python']}, onnxruntime {h['onnxruntime']}, "
        f"one core (`taskset` / thread pools 1). Folder: `{h['folder']}`.",
        "",
        "| whole file, every record one bed, unpaced | records | audio s | wall s | x real time "
        "| events |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key in ("shipped", "reference"):
        r = record["whole_file"].get(key)
        if r:
            lines.append(
                f"| {key}: `{r['model']}` | {r['records']} | {r['audio_s']:.0f} | "
                f"{r['wall_s']:.1f} | {r['x_realtime']:.0f} | {r['events']} |"
            )
    ratio = record["whole_file"].get("speedup")
    if ratio:
        lines.append(f"\nShipped vs reference, same process: **{ratio:.2f}x**.")
    lines.append(f"\nTarget >= {TARGETS['whole_file_x_realtime']:.0f}x real time.")
    lat = record.get("latency")
    if lat:
        ms, own = lat["latency_ms"], lat["announce_ms"]
        lines += [
            "",
            "| detection latency, paced | records | annotated | detected | to | p50 ms | p99 ms "
            "| max ms |",
            "|---|---:|---:|---:|---|---:|---:|---:|",
            f"| `{lat['model']}` | {lat['records']} | {lat['annotated_events']} | "
            f"{lat['detected']} | {lat['to']} | {_ms(ms)} |",
            "",
            f"Target p99 <= {TARGETS['detection_latency_p99_s'] * 1000:.0f} ms. Latency is "
            "measured only for annotated events the device detects ({} of {}); {} of them were "
            "announced before the annotated onset (negative).".format(
                lat["detected"], lat["annotated_events"], lat["negative"]
            ),
            "",
            "The device's own share: from the start it gives an episode (its first frame) to "
            "the PUBACK of its `onset`, over all {} onsets: p50 {:.0f} ms, p99 {:.0f} ms "
            "(the model's look-ahead, the wait for the chunk, the rule's minimum "
            "duration, inference and delivery).".format(
                own["n"], own.get("p50", float("nan")), own.get("p99", float("nan"))
            ),
        ]
        split, start = lat["split_ms"], lat["start_ms"]
        lines += [
            "",
            "| where the time goes | n | p50 ms | p99 ms | max ms |",
            "|---|---:|---:|---:|---:|",
            f"| annotated onset -> the start the device reports | {start['n']} | {_ms(start)} |",
        ]
        what = {
            "decision": "reported start -> end of the frame that decided (lead, minimum "
            "phase, the class mean reaching its threshold)",
            "ready": "-> its output ready (look-ahead, wait for the chunk, inference)",
            "delivery": "-> PUBACK of the `onset` (events, spool, MQTT)",
        }
        lines += [f"| {label} | {split[k]['n']} | {_ms(split[k])} |" for k, label in what.items()]
        if lat.get("unsplit"):
            lines.append(f"\n{lat['unsplit']} onsets could not be split (no deciding frame).")
    return "\n".join(lines)


def _ms(stats: dict[str, Any]) -> str:
    return " | ".join(f"{stats.get(k, float('nan')):.0f}" for k in ("p50", "p99", "max"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.detection", description=__doc__)
    parser.add_argument("--folder", type=Path, default=None, help="SPRSound-style folder")
    parser.add_argument(
        "--paced-records", type=int, default=400,
        help="at most this many records with annotated events (400: all of intra_test's); 0: none",
    )  # fmt: skip
    parser.add_argument("--no-mqtt", action="store_true", help="latency to publish, no broker")
    parser.add_argument("--reference-dir", help="a reference model folder, same process")
    parser.add_argument("--model-dir", help="measure this model folder instead of ward.yaml's")
    parser.add_argument("--model-file", default="model.int8.onnx", help="with --model-dir")
    args = parser.parse_args(argv)
    folder = args.folder or sprsound_root() / "intra_test"
    if not folder.is_dir():
        parser.error(f"{folder}: no such folder (set LUNGWATCH_DATA_DIR or --folder)")
    shipped = load_runtime_config(WARD).model
    if args.model_dir:
        shipped = ModelConfig(dir=args.model_dir, file=args.model_file)
    import onnxruntime

    header = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "folder": str(folder),
    }
    whole: dict[str, Any] = {"shipped": whole_file(folder, shipped)}
    print(f"whole file, shipped: {whole['shipped']['x_realtime']:.0f}x real time", flush=True)
    if args.reference_dir:
        whole["reference"] = whole_file(folder, ModelConfig(dir=args.reference_dir))
        whole["speedup"] = whole["shipped"]["x_realtime"] / whole["reference"]["x_realtime"]
    record: dict[str, Any] = {"header": header, "targets": TARGETS, "whole_file": whole}
    if args.paced_records > 0:
        with mosquitto_broker(not args.no_mqtt) as broker:
            address = broker[1] if broker else None
            record["latency"] = latency(folder, args.paced_records, address, shipped)
    write_results("detection", record, render(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
