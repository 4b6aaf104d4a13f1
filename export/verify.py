"""``lungwatch verify``: the parity gate from the training checkpoint to what the device runs.

    lungwatch verify --model-dir models/edge --audio REC.flac [REC2.wav ...] [--write-reference]
    lungwatch verify --model-dir models/edge --reference        # on the device: no torch, no data

Recordings are streamed chunk-wise through the device pipeline (:class:`edge.pipeline.
StreamPipeline`, the runtime's own windows), and every stage runs on the same windows: the
torch checkpoint (when torch and the checkpoint are here), each ONNX artifact of the manifest
(FP32, INT8) through ONNX Runtime, and a TensorRT engine when one is listed and TensorRT is
importable. Each stage is compared with the reference (torch, else the FP32 ONNX model) on
the logits, the predicted class, and the **event lists** the detector makes of the
probabilities. The tolerances are printed with the results; the exit status is 1 if any stage
is beyond them. ``--write-reference`` stores the windows and reference logits
(``verify_reference.npz``) so the device can repeat the tensor checks without data or torch
(``--reference``), and records the results in the manifest (``validation.parity``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.audio import audio_files_under
from edge.backends import BackendConfig, open_backend
from edge.backends.base import softmax
from edge.detector import Detector, DetectorConfig
from edge.errors import LungwatchError
from edge.manifest import MANIFEST_NAME, Manifest, load_manifest, verify_file
from edge.pipeline import StreamPipeline
from edge.sources import FileSource, SourceEnded
from firmware_bridge.cliparse import ArgumentParser

REFERENCE_NAME = "verify_reference.npz"
REFERENCE_WINDOWS = 16  # windows stored for the device check (float16: ~400 kB)
CHUNK_SAMPLES = 1000  # an odd chunking, not aligned with the hop


class VerifyError(LungwatchError):
    """Nothing to verify (no audio, no artifacts, no reference)."""


@dataclass(frozen=True)
class Tolerance:
    max_abs_logit: float  # largest |logit - reference logit| allowed
    min_agreement: float  # share of windows with the reference's argmax class
    min_event_match: float  # share of reference events overlapped by one of the same type


TOLERANCES = {
    "fp32": Tolerance(1e-3, 1.0, 1.0),
    "fp16": Tolerance(0.05, 0.99, 0.95),
    "int8": Tolerance(1.0, 0.90, 0.80),
}


@dataclass(frozen=True)
class Recording:
    name: str
    windows: np.ndarray  # (n, K, B, T) float32
    end_samples: np.ndarray  # (n,) int64
    window_samples: int
    hop_samples: int
    sample_rate_hz: int


Stage = tuple[str, str, Any]  # (name, precision, windows -> logits)


def stream_windows(path: Path, manifest: Manifest, chunk_samples: int) -> Recording:
    """The runtime's windows of one recording, streamed in ``chunk_samples`` chunks."""
    spec = manifest.feature_spec
    pipeline = StreamPipeline(spec, manifest.kinds, manifest.window_frames, manifest.hop_frames)
    source = FileSource(path, "verify", spec.sample_rate_hz, chunk_samples=chunk_samples)
    windows, ends = [], []
    while True:
        try:
            chunk = source.read(0.0)
        except SourceEnded:
            break
        if chunk is not None:
            for ready in pipeline.push(chunk):
                windows.append(ready.features)
                ends.append(ready.end_sample)
    shape = (0, *manifest.input_shape)
    return Recording(
        path.name,
        np.stack(windows) if windows else np.zeros(shape, np.float32),
        np.array(ends, dtype=np.int64),
        pipeline.window_samples,
        pipeline.hop_samples,
        spec.sample_rate_hz,
    )


def events_of(rec: Recording, probs: np.ndarray, classes: tuple[str, ...]) -> list[tuple]:
    """``(type, start_sample, end_sample)`` of every event the detector makes of ``probs``."""
    detector = Detector(
        classes,
        DetectorConfig(),
        rec.sample_rate_hz,
        window_samples=rec.window_samples,
        hop_samples=rec.hop_samples,
    )
    transitions = []
    for end, p in zip(rec.end_samples, probs, strict=True):
        transitions += detector.update(int(end), p)
    transitions += detector.finish()
    return sorted((t.type, t.start_sample, t.end_sample) for t in transitions if t.state == "ended")


def torch_logits(checkpoint: Path) -> Any:
    """A function windows -> logits from the training checkpoint (needs torch)."""
    from training.inference import load_classifier

    classifier = load_classifier(checkpoint)
    return classifier.logits


def onnx_logits(path: Path, kind: str = "onnxruntime") -> Any:
    backend = open_backend(BackendConfig(kind=kind), path)  # type: ignore[arg-type]
    return backend.infer


def compare(
    name: str,
    precision: str,
    reference: list[np.ndarray],
    candidate: list[np.ndarray],
    events: tuple[list[list[tuple]], list[list[tuple]]],
) -> dict[str, Any]:
    ref, got = np.concatenate(reference), np.concatenate(candidate)
    tol = TOLERANCES.get(precision, TOLERANCES["int8"])
    max_abs = float(np.abs(ref - got).max()) if ref.size else 0.0
    agreement = float((ref.argmax(1) == got.argmax(1)).mean()) if ref.size else 1.0
    pairs = list(zip(*events, strict=True))
    ref_events = [e for rec in events[0] for e in rec]
    missing = [e for rec_r, rec_c in pairs for e in rec_r if e not in rec_c]
    extra = [e for rec_r, rec_c in pairs for e in rec_c if e not in rec_r]
    overlapping = sum(_overlaps(e, rec_c) for rec_r, rec_c in pairs for e in rec_r)
    match = overlapping / len(ref_events) if ref_events else float(not extra)
    ok = (
        max_abs <= tol.max_abs_logit
        and agreement >= tol.min_agreement
        and match >= tol.min_event_match
    )
    return {
        "stage": name,
        "precision": precision,
        "windows": int(ref.shape[0]),
        "max_abs_logit": max_abs,
        "class_agreement": agreement,
        "reference_events": len(ref_events),
        "events_identical": len(ref_events) - len(missing),
        "event_match": match,
        "events_missing": [list(e) for e in missing],
        "events_extra": [list(e) for e in extra],
        "tolerance": vars(tol),
        "ok": bool(ok),
    }


def _overlaps(event: tuple, others: list[tuple]) -> bool:
    """Whether ``others`` has an event of the same type whose span overlaps ``event``'s."""
    kind, start, end = event
    return any(o[0] == kind and o[1] < end and start < o[2] for o in others)


def stages(manifest: Manifest, folder: Path, use_torch: bool) -> list[Stage]:
    """``(name, precision, logits_fn)`` of every stage present here; the first is the
    reference."""
    out = []
    checkpoint = manifest.raw.get("checkpoint", {}).get("file")
    if use_torch and checkpoint and (folder / checkpoint).is_file():
        out.append(("torch " + checkpoint, "fp32", torch_logits(folder / checkpoint)))
    for name, entry in sorted(manifest.files.items(), key=lambda kv: kv[1].precision != "fp32"):
        path = folder / name
        verify_file(manifest, path)
        if name.endswith(".onnx"):
            out.append((f"onnxruntime {name}", entry.precision, onnx_logits(path)))
        elif name.endswith(".plan") and _has_tensorrt():
            out.append((f"tensorrt {name}", entry.precision, onnx_logits(path, "tensorrt")))
    if not out:
        raise VerifyError(f"{folder / MANIFEST_NAME}: lists no model this machine can run")
    return out


def _has_tensorrt() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def verify_recordings(
    manifest: Manifest, recordings: list[Recording], found: list[Stage]
) -> list[dict[str, Any]]:
    """Every stage of ``found`` against the first (the reference) on ``recordings``."""
    n_classes = len(manifest.classes)
    outputs = [[_run(fn, r.windows, n_classes) for r in recordings] for _, _, fn in found]
    event_lists = [
        [events_of(r, softmax(o), manifest.classes) for r, o in zip(recordings, out, strict=True)]
        for out in outputs
    ]
    results = []
    for i, (name, precision, _) in enumerate(found[1:], start=1):
        pair = (event_lists[0], event_lists[i])
        results.append(compare(name, precision, outputs[0], outputs[i], pair))
    for result in results:
        result["reference"] = found[0][0]
    return results


def _run(fn: Any, windows: np.ndarray, n_classes: int) -> np.ndarray:
    if not len(windows):
        return np.zeros((0, n_classes), np.float32)
    return np.asarray(fn(windows), dtype=np.float32)


def print_results(results: list[dict[str, Any]]) -> None:
    print(f"reference: {results[0]['reference'] if results else '-'}")
    print("| stage | windows | max abs logit diff | class agreement | events overlapped | ok |")
    print("|---|---:|---:|---:|---:|---|")
    for r in results:
        t = r["tolerance"]
        print(
            f"| {r['stage']} | {r['windows']}"
            f" | {r['max_abs_logit']:.2e} (<= {t['max_abs_logit']:g})"
            f" | {r['class_agreement']:.3f} (>= {t['min_agreement']:g})"
            f" | {r['event_match']:.3f} of {r['reference_events']} (>= {t['min_event_match']:g};"
            f" {r['events_identical']} identical)"
            f" | {'yes' if r['ok'] else 'NO'} |"
        )
        for label, key in (("missing", "events_missing"), ("extra", "events_extra")):
            for event in r[key]:
                print(f"    event {label} vs reference: {event[0]} samples {event[1]}..{event[2]}")


def write_reference(folder: Path, recordings: list[Recording], logits_fn: Any, name: str) -> Path:
    """Store up to REFERENCE_WINDOWS windows (spread over the recordings) and their logits."""
    windows = np.concatenate([r.windows for r in recordings])
    pick = np.linspace(0, len(windows) - 1, min(REFERENCE_WINDOWS, len(windows))).astype(int)
    # stored as float16; the reference logits are computed on exactly the stored values
    chosen = np.ascontiguousarray(windows[pick].astype(np.float16).astype(np.float32))
    path = folder / REFERENCE_NAME
    logits = logits_fn(chosen)
    np.savez_compressed(
        path, windows=chosen.astype(np.float16), logits=logits, reference=np.array(name)
    )
    return path


def verify_reference(manifest: Manifest, folder: Path) -> list[dict[str, Any]]:
    """Device check: every runnable artifact against the stored windows and logits."""
    path = folder / REFERENCE_NAME
    if not path.is_file():
        raise VerifyError(f"{path}: no reference; run 'lungwatch verify --write-reference'")
    data = np.load(path)
    windows, ref = data["windows"].astype(np.float32), data["logits"]
    results = []
    for name, precision, fn in stages(manifest, folder, use_torch=False):
        result = compare(name, precision, [ref], [fn(windows)], ([[]], [[]]))
        result["reference"] = f"{REFERENCE_NAME} ({data['reference']})"
        results.append(result)
    return results


def audio_files(paths: list[Path], max_files: int) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            files += audio_files_under(path)
        elif path.is_file():
            files.append(path)
        else:
            raise VerifyError(f"{path}: no such file or folder")
    if not files:
        raise VerifyError(f"no .wav/.flac recordings in {', '.join(map(str, paths))}")
    return files[:max_files]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch verify", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models/edge"))
    parser.add_argument("--audio", type=Path, nargs="*", default=[], help="recordings or folders")
    parser.add_argument("--max-files", type=int, default=16, help="at most this many recordings")
    parser.add_argument("--chunk-samples", type=int, default=CHUNK_SAMPLES)
    parser.add_argument("--no-torch", action="store_true", help="reference: the FP32 ONNX model")
    parser.add_argument("--reference", action="store_true", help="check against the stored npz")
    parser.add_argument("--write-reference", action="store_true", help="store windows + logits")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    folder = args.model_dir
    manifest = load_manifest(folder / MANIFEST_NAME)
    if args.reference:
        results = verify_reference(manifest, folder)
    else:
        files = audio_files(args.audio, args.max_files)
        recordings = [stream_windows(f, manifest, args.chunk_samples) for f in files]
        found = stages(manifest, folder, not args.no_torch)  # each model opened once
        results = verify_recordings(manifest, recordings, found)
        print(f"{len(files)} recordings, chunks of {args.chunk_samples} samples")
        if args.write_reference:
            name, _, logits_fn = found[0]
            path = write_reference(folder, recordings, logits_fn, name)
            _record(folder, results, path)
    print_results(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


def _record(folder: Path, results: list[dict[str, Any]], reference: Path) -> None:
    from export.manifest import record_artifact, set_section

    record_artifact(folder / MANIFEST_NAME, reference, precision="reference")
    summary = {
        r["stage"]: {
            k: r[k] for k in ("max_abs_logit", "class_agreement", "event_match", "windows", "ok")
        }
        for r in results
    }
    set_section(folder / MANIFEST_NAME, "parity", summary)
