"""``lungwatch detect``: events in recordings, computed by the device's own path.

    lungwatch detect --audio DIR [--audio FILE ...] [--model models/sed/model.int8.onnx]
                     [--config edge/configs/ward.yaml] [--out events.json] [--technical FILE]
                     [--score [--score-out scores.json]]

Every recording (a file, or every ``.flac`` / ``.wav`` below a folder) runs as one bed through
:func:`edge.runtime.offline.detect_recordings`: the file source, the streaming front end, the
streaming model on ONNX Runtime with its state carried, the quality gate and
:class:`edge.bed.detector.FrameDetector` with the manifest's fitted per-class rules, exactly as
``lungwatch run`` runs them. The result is one JSON object::

    {"<record>": [{"start_s": 1.23, "end_s": 2.01, "type": "Fine Crackle",
                   "confidence": 0.91}, ...], ...}

keyed by file stem, with every recording present (an empty list when nothing was detected)
and types spelled as SPRSound spells them. ``--technical FILE`` writes the technical events
(``poor_signal``, ``silence``, ``clipping``, ...) in the same shape, without confidence.
``--score`` (folders of SPRSound recordings with their ``.json`` annotations) also prints the
detection scores of :mod:`training.scoring.detection` (sed_eval: event and segment F1,
CAS/DAS families and 4 classes, false adventitious events per hour on Normal records) and the
share of good and of Poor Quality records with a ``poor_signal`` event; also the threshold-free
scores of :mod:`training.scoring.threshold_free` (sed_scores_eval: PSDS in DCASE's two
scenarios and the best event F1 over thresholds, for the detector's phases and for the bare
frame outputs) and the operating points (the device's detector with every class's
on-threshold at 0.3 ... 0.9: event F1, segment F1 and false events per hour at each), computed
on the output frames the device's detector saw. ``--score-out FILE`` writes every score as
JSON.

``--model`` is one of:

- an artifact a manifest lists (``model.onnx``, ``model.int8.onnx``): runs as is;
- a model folder: its ``model.int8.onnx`` if the manifest lists one, else ``model.onnx``.

A checkpoint (``.pt``) is refused with the command that exports it (``lungwatch export``).

``--config`` takes the ``detector``, ``gate`` and ``backend`` sections of a runtime config
(a rule there for a class overrides the manifest's, as on the device).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from edge.bed.detector import DetectorConfig, FrameGrid
from edge.bed.gate import POOR_SIGNAL
from edge.errors import ConfigError
from edge.inference.manifest import Manifest, load_manifest
from edge.labels import POOR_QUALITY
from edge.runtime.offline import OfflineError, RecordingEvents, detect_recordings, recordings_in
from firmware_bridge.cliparse import ArgumentParser

DEFAULT_MODEL = Path("models/sed/model.int8.onnx")
PREFERRED_FILES = ("model.int8.onnx", "model.onnx")
MANIFEST = "manifest.json"


def read_manifest(folder: Path) -> dict[str, Any]:
    """A model folder's ``manifest.json`` as JSON; a missing or broken one is named."""
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no manifest (export the model first)") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise ConfigError(f"{path}: no 'files' table")
    return data


def resolve_model(model: Path) -> tuple[Path, str]:
    """``--model`` -> (folder with the manifest, artifact file name)."""
    if model.suffix == ".pt":
        raise ConfigError(
            f"{model}: a training checkpoint; export it first (lungwatch export --checkpoint "
            f"{model} --out DIR) and give DIR"
        )
    if model.is_dir():
        files = read_manifest(model)["files"]
        for name in PREFERRED_FILES:
            if name in files:
                return model, name
        raise ConfigError(f"{model / MANIFEST}: lists none of {', '.join(PREFERRED_FILES)}")
    if not model.is_file():
        raise ConfigError(f"{model}: no such model file or folder")
    files = read_manifest(model.parent)["files"]
    if model.name not in files:
        raise ConfigError(
            f"{model}: not listed in {model.parent / MANIFEST} (lists {', '.join(sorted(files))})"
        )
    return model.parent, model.name


def score_folders(
    folders: list[Path],
    found: dict[str, RecordingEvents],
    model: tuple[Manifest, DetectorConfig | None] | None = None,
) -> dict[str, Any]:
    """sed_eval scores of the device's events against the SPRSound annotations in
    ``folders`` (every annotated record must have been run), and technical-alarm shares.
    Records that could not be read (``error`` set) have no duration and are left out. With
    ``model`` (the streaming model's manifest and the run's detector section, ``None``: the
    runtime's defaults) and every record's output frames kept, also the threshold-free scores
    and the operating points (:func:`frame_scores`) under the detector the device ran: the
    manifest's rules, overridden by the section's."""
    from edge.audio import read_audio
    from training.data.sprsound import load_sprsound
    from training.scoring.detection import score_detection

    annotated, labels, durations = {}, {}, {}
    for folder in folders:
        for record in load_sprsound(folder):
            if record.record_id not in found:
                raise ConfigError(f"{record.audio_path}: annotated but not run")
            if found[record.record_id].error is not None:
                continue
            annotated[record.record_id] = [
                (e.start_ms / 1000, e.end_ms / 1000, e.type) for e in record.events
            ]
            labels[record.record_id] = record.record_label
            durations[record.record_id] = read_audio(record.audio_path).duration_s
    if not annotated:
        raise ConfigError(f"no SPRSound annotations in {', '.join(map(str, folders))}")
    predicted = {
        r: [(e["start_s"], e["end_s"], e["type"]) for e in found[r].physiological]
        for r in annotated
    }
    report = score_detection(predicted, annotated, labels, durations)
    poor = {r for r in annotated if any(e["type"] == POOR_SIGNAL for e in found[r].technical)}
    good = [r for r in annotated if labels[r] != POOR_QUALITY]
    bad = [r for r in annotated if labels[r] == POOR_QUALITY]
    out = report.to_dict()
    out["poor_signal_on_good"] = sum(r in poor for r in good) / len(good) if good else None
    out["poor_signal_on_poor_quality"] = sum(r in poor for r in bad) / len(bad) if bad else None
    out["n_good"], out["n_poor_quality"] = len(good), len(bad)
    if model is not None:
        out.update(frame_scores(model, found, annotated, labels, durations))
    return out


def frame_scores(
    model: tuple[Manifest, DetectorConfig | None],
    found: dict[str, RecordingEvents],
    annotated: dict[str, list[tuple[float, float, str]]],
    labels: dict[str, str],
    durations: dict[str, float],
) -> dict[str, Any]:
    """The scores of the kept output frames: ``threshold_free`` and ``operating_points``
    (:mod:`training.scoring.threshold_free`), under the detector the device ran."""
    from edge.runtime.loop import detector_config_of
    from training.scoring.threshold_free import as_dict, operating_points, threshold_free

    manifest, detector = model
    probs = {}
    for record in annotated:
        kept = found[record].probs
        if kept is None:
            raise ConfigError(f"{record}: no output frames kept")
        probs[record] = kept
    spec = manifest.feature_spec
    grid = FrameGrid.of(
        spec.sample_rate_hz, spec.hop_samples, spec.frame_samples, manifest.streaming.stride
    )
    config = detector_config_of(detector or DetectorConfig(), manifest)
    outputs = manifest.outputs
    return {
        "threshold_free": as_dict(
            threshold_free(probs, annotated, durations, outputs, config, grid)
        ),
        "operating_points": operating_points(
            probs, annotated, labels, durations, outputs, config, grid
        ),
    }


def summary_line(scores: dict[str, Any]) -> str:
    """The headline numbers of :func:`score_folders` on one line."""
    s = scores["summary"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    return (
        f"event_f1_family={s['event_f1_family']:.3f} "
        f"(P {s['event_precision_family']:.3f} R {s['event_recall_family']:.3f}) "
        f"segment_f1_family={s['segment_f1_family']:.3f} "
        f"event_f1_4class={s['event_f1_4class']:.3f} "
        f"fa_per_hour={s['false_events_per_hour']:.1f} "
        f"normal_with_fa={s['normal_records_with_false_events']:.3f} "
        f"poor_good={fmt(scores['poor_signal_on_good'])} "
        f"poor_pq={fmt(scores['poor_signal_on_poor_quality'])}"
    )


def threshold_free_line(scores: dict[str, Any]) -> str:
    """The family view's threshold-free numbers of :func:`score_folders` on one line."""
    parts = []
    for name in ("phases", "frames"):
        if "family" in scores.get(name, {}):
            tf = scores[name]["family"]
            parts.append(
                f"{name}: psds1={tf['psds1']:.3f} psds2={tf['psds2']:.3f} "
                f"best_event_f1_family={tf['best_event_f1']:.3f}"
            )
    return "; ".join(parts) or "n/a (no annotated adventitious event in the records)"


def operating_lines(rows: list[dict[str, float]]) -> list[str]:
    """The operating points of :func:`score_folders` as a small table, one line per row."""
    out = ["operating points (every class's on-threshold):  on  event_f1  segment_f1  fa/h"]
    out += [
        f"  {r['threshold']:.1f}  {r['event_f1_family']:.3f}  {r['segment_f1_family']:.3f}  "
        f"{r['false_events_per_hour']:.1f}"
        for r in rows
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch detect", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--audio",
        type=Path,
        action="append",
        required=True,
        help="a recording or a folder of them (repeatable)",
    )
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="model folder or an ONNX file it lists"
    )
    parser.add_argument("--config", type=Path, help="runtime YAML: detector/gate/backend")
    parser.add_argument("--out", type=Path, help="events JSON (default: standard output)")
    parser.add_argument("--technical", type=Path, help="also write technical events here")
    parser.add_argument(
        "--score", action="store_true", help="score against SPRSound annotations (sed_eval)"
    )
    parser.add_argument("--score-out", type=Path, help="with --score: every score as JSON here")
    args = parser.parse_args(argv)
    if args.score_out is not None and not args.score:
        parser.error("--score-out needs --score")

    recordings = recordings_in(args.audio)
    sections: dict[str, Any] = {}
    if args.config is not None:
        from edge.runtime.config import load_runtime_config

        config = load_runtime_config(args.config)
        sections = {"detector": config.detector, "gate": config.gate, "backend": config.backend}
    folder, file = resolve_model(args.model)
    manifest = load_manifest(folder / MANIFEST)
    found = detect_recordings(
        recordings, folder, file, skip_unreadable=True, keep_probs=args.score, **sections
    )
    unread = {name: r.error for name, r in sorted(found.items()) if r.error is not None}
    read = sorted(name for name in found if name not in unread)
    if not read:  # nothing to write: the first reason is the error
        raise OfflineError(next(iter(unread.values())))
    events = {name: found[name].physiological for name in read}
    _write(args.out, events)
    if args.technical is not None:
        _write(args.technical, {name: found[name].technical for name in read})
    if args.score:
        model = (manifest, sections.get("detector"))
        scores = score_folders([p for p in args.audio if p.is_dir()], found, model)
        print(f"lungwatch detect: {summary_line(scores)}", file=sys.stderr)
        if "threshold_free" in scores:
            line = threshold_free_line(scores["threshold_free"])
            print(f"lungwatch detect: threshold-free {line}", file=sys.stderr)
            for row in operating_lines(scores["operating_points"]):
                print(f"lungwatch detect: {row}", file=sys.stderr)
        if args.score_out is not None:
            _write(args.score_out, scores)
    n = sum(len(v) for v in events.values())
    where = args.out if args.out is not None else "standard output"
    print(f"lungwatch detect: {n} events in {len(events)} recordings -> {where}", file=sys.stderr)
    if unread:  # the others' events are written; these have none, and the exit status says so
        for error in unread.values():
            print(f"lungwatch detect: skipped {error}", file=sys.stderr)
        print(
            f"lungwatch detect: {len(unread)} of {len(found)} recordings could not be read "
            "(left out of the events and the scores)",
            file=sys.stderr,
        )
        return 1
    return 0


def _write(path: Path | None, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=1)
    if path is None:
        print(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
