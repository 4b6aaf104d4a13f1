"""``lungwatch verify``: the gate between the exported model and what a device runs.

    lungwatch verify --model-dir models/sed --write-reference [--audio REC.flac ...]  # export
    lungwatch verify --model-dir models/sed --reference [--model model.int8.onnx ...]  # device

Both run recordings through the device path and compare every artifact's output frames (within
:data:`TOLERANCES`) and event lists with the stored reference; a missing, unrecorded or changed
reference is an error, never a pass (docs/export.md, "Verify gate").
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference import BackendConfig
from edge.inference.manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    load_manifest,
    verify_file,
)
from edge.inference.manifest_write import publish, record_artifact
from lungwatch.cli import ArgumentParser
from lungwatch.errors import LungwatchError

PROG = "lungwatch verify"
REFERENCE_NAME = "verify_reference.npz"
REFERENCE_PRECISION = "reference"  # its ``precision`` in the manifest's ``files``
REFERENCE_FORMAT = 1
EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"  # in a source checkout
AUDIO_SUFFIXES = (".flac", ".wav")
MODEL_SUFFIXES = (".onnx", ".plan")
INT16_SCALE = 32768.0  # int16 sample <-> float in [-1, 1), as soundfile reads PCM_16
MAX_BATCH = 64  # recordings per model call: every reference recording in one batch
EVENT_LINES = 8  # missing / extra events listed per artifact
RULE_SECTIONS = ("feature_spec", "kinds", "streaming", "outputs", "detector", "quality")
Event = Mapping[str, Any]  # {"kind", "type", "start_s", "end_s", ...}


class VerifyError(LungwatchError):
    """Nothing to verify against: no, unrecorded or changed reference, no such artifact."""


@dataclass(frozen=True)
class Tolerance:
    """How far an artifact's output frames may be from the FP32 reference, and the share of the
    reference's events it may leave unmatched (missing + extra)."""

    max_abs_dp: float
    mean_abs_dp: float
    max_unmatched_share: float


# Which artifacts each bound covers and why it is that wide: docs/export.md, "Verify gate".
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs_dp=1e-4, mean_abs_dp=1e-5, max_unmatched_share=0.0),
    "int8": Tolerance(max_abs_dp=0.15, mean_abs_dp=0.01, max_unmatched_share=0.2),
}


@dataclass(frozen=True)
class Recording:
    name: str
    audio: np.ndarray  # (n_samples,) int16 at the model's rate
    probs: np.ndarray  # (n_frames, O) float32, NaN rows: frames never described
    events: list[dict[str, Any]]


@dataclass(frozen=True)
class Reference:
    path: Path
    meta: dict[str, Any]  # format, model_id, source, sample_rate_hz, outputs, recordings
    recordings: list[Recording]


@dataclass(frozen=True)
class Artifact:
    name: str
    precision: str
    backend: BackendConfig

    @property
    def stage(self) -> str:
        return f"{self.backend.kind} {self.name} ({self.precision})"

    @property
    def tolerance(self) -> str:
        """The :data:`TOLERANCES` key: fp32 only for FP32 ONNX on the CPU provider alone."""
        cpu = self.backend.kind == "onnxruntime" and self.backend.providers == ("cpu",)
        return "fp32" if cpu and self.precision == "fp32" else "int8"


@dataclass
class Comparison:
    """One artifact against the reference; no ``problems``: within tolerance."""

    max_abs_dp: float = 0.0
    mean_abs_dp: float = 0.0
    reference_events: int = 0
    matched: int = 0
    missing: list[tuple[str, Event]] = field(default_factory=list)  # (recording, event)
    extra: list[tuple[str, Event]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StageResult:
    artifact: Artifact
    comparison: Comparison | None = None  # None: refused, or skipped, before it ran
    refused: str = ""  # sha256 mismatch, a model that does not load
    skipped: str = ""  # not runnable here (an engine without TensorRT)

    @property
    def ok(self) -> bool:
        if self.skipped:
            return True
        return not self.refused and self.comparison is not None and not self.comparison.problems

    @property
    def verdict(self) -> str:
        if self.skipped:
            return f"skipped: {self.skipped}"
        if self.ok:
            return "within tolerance"
        return f"FAIL: {self.refused or '; '.join(self.comparison.problems)}"  # type: ignore[union-attr]


def events_of(found: Any) -> list[dict[str, Any]]:
    physiological = [{"kind": "physiological", **e} for e in found.physiological]
    return physiological + [{"kind": "technical", **e} for e in found.technical]


def same_event(a: Event, b: Event) -> bool:
    same = (a["kind"], a["type"]) == (b["kind"], b["type"])
    return same and a["start_s"] < b["end_s"] and b["start_s"] < a["end_s"]


def match_events(
    reference: Sequence[Event], candidate: Sequence[Event]
) -> tuple[int, list[Event], list[Event]]:
    """One to one, in order: (matched, reference events missing, candidate events extra)."""
    used = [False] * len(candidate)
    missing = []
    for event in reference:
        j = next((j for j, c in enumerate(candidate) if not used[j] and same_event(event, c)), -1)
        if j < 0:
            missing.append(event)
        else:
            used[j] = True
    extra = [c for j, c in enumerate(candidate) if not used[j]]
    return len(reference) - len(missing), missing, extra


def frame_diffs(rec: Recording, probs: np.ndarray | None) -> tuple[np.ndarray, str]:
    none = np.zeros(0, np.float32)
    if probs is None or probs.shape != rec.probs.shape:
        shape = None if probs is None else probs.shape
        return none, f"{rec.name}: output frames {shape}, reference {rec.probs.shape}"
    described = ~np.isnan(rec.probs)
    if not np.array_equal(described, ~np.isnan(probs)):
        return none, f"{rec.name}: the frames described differ from the reference's"
    return np.abs(probs[described] - rec.probs[described]), ""


def compare(reference: Reference, found: Mapping[str, Any], tol: Tolerance) -> Comparison:
    """Every recording's output frames and events (``found``: name -> RecordingEvents)."""
    out, diffs = Comparison(), [np.zeros(0, np.float32)]
    for rec in reference.recordings:
        got = found.get(rec.name)
        if got is None or got.error:
            out.problems.append(f"{rec.name}: not run ({got.error if got else 'no result'})")
            continue
        d, problem = frame_diffs(rec, got.probs)
        diffs.append(d)
        out.problems += [problem] if problem else []
        matched, missing, extra = match_events(rec.events, events_of(got))
        out.matched += matched
        out.reference_events += len(rec.events)
        out.missing += [(rec.name, e) for e in missing]
        out.extra += [(rec.name, e) for e in extra]
    d = np.concatenate(diffs)
    out.max_abs_dp = float(d.max()) if d.size else 0.0
    out.mean_abs_dp = float(d.mean(dtype=np.float64)) if d.size else 0.0
    out.problems += beyond(out, tol)
    return out


def beyond(c: Comparison, tol: Tolerance) -> list[str]:
    problems = []
    if c.max_abs_dp > tol.max_abs_dp:
        problems.append(f"frames max Δp {c.max_abs_dp:.3g} > {tol.max_abs_dp:g}")
    if c.mean_abs_dp > tol.mean_abs_dp:
        problems.append(f"frames mean Δp {c.mean_abs_dp:.3g} > {tol.mean_abs_dp:g}")
    unmatched = len(c.missing) + len(c.extra)
    share = unmatched / c.reference_events if c.reference_events else float(unmatched > 0)
    if share > tol.max_unmatched_share:
        problems.append(
            f"events: {unmatched} unmatched ({len(c.missing)} missing, {len(c.extra)} extra) "
            f"of {c.reference_events} > {tol.max_unmatched_share:.0%}"
        )
    return problems


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """A compressed .npz, written atomically, with fixed member dates: same arrays, same bytes."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle, zipfile.ZipFile(handle, "w") as archive:
            for key, array in arrays.items():
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                archive.writestr(info, buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
        publish(Path(temp), path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def load_reference(manifest: Manifest) -> Reference:
    path = manifest.file_path(REFERENCE_NAME)
    if not path.is_file():
        raise VerifyError(
            f"{path}: no verify reference; write it at export time with "
            f"`lungwatch verify --model-dir {path.parent} --write-reference`"
        )
    if REFERENCE_NAME not in manifest.files:
        raise VerifyError(
            f"{path}: not recorded in {manifest.path}; an unrecorded reference is refused"
        )
    try:
        verify_file(manifest, path)
    except ManifestError as exc:
        raise VerifyError(f"{path}: changed since it was recorded, refused ({exc})") from None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"].item()))
            recordings = [
                Recording(r["name"], data[f"audio_{i}"], data[f"probs_{i}"], r["events"])
                for i, r in enumerate(meta["recordings"])
            ]
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise VerifyError(f"{path}: not a readable verify reference ({exc})") from None
    expected = {"format": REFERENCE_FORMAT, "model_id": manifest.model_id,
                "outputs": list(manifest.outputs), "rules_sha256": rules_sha256(manifest),
                "sample_rate_hz": manifest.feature_spec.sample_rate_hz}  # fmt: skip
    for key, value in expected.items():
        if meta.get(key) != value:
            differs = f"{key} {meta.get(key)!r} is not {manifest.path}'s ({value!r})"
            if key == "rules_sha256":
                differs = f"{manifest.path}'s {', '.join(RULE_SECTIONS)} changed since"
            raise VerifyError(f"{path}: {differs}; write the reference again (--write-reference)")
    return Reference(path, meta, recordings)


def audio_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise VerifyError(f"{path}: no such file or folder (--audio)")
    if not files:
        raise VerifyError(f"no .flac / .wav recordings in {', '.join(map(str, paths))}")
    stems = [p.stem for p in files]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise VerifyError(f"two recordings named {twice[0]!r} (--audio): names must be unique")
    return files


def read_int16(path: Path, rate_hz: int) -> np.ndarray:
    from edge.audio import read_audio

    samples = read_audio(path, target_rate_hz=rate_hz).samples
    return np.clip(np.round(samples * INT16_SCALE), -32768, 32767).astype(np.int16)


@contextmanager
def stored_audio(audio: Mapping[str, np.ndarray], rate_hz: int) -> Iterator[dict[str, Path]]:
    import soundfile as sf

    with tempfile.TemporaryDirectory(prefix="lungwatch-verify-") as tmp:
        paths = {name: Path(tmp) / f"{name}.wav" for name in audio}
        for name, samples in audio.items():
            sf.write(paths[name], samples, rate_hz, subtype="PCM_16")
        yield paths


def rules_sha256(manifest: Manifest) -> str:
    """sha256 of the manifest sections besides the model that the reference's events depend on."""
    sections = {key: manifest.raw.get(key) for key in RULE_SECTIONS}
    return hashlib.sha256(json.dumps(sections, sort_keys=True).encode()).hexdigest()


def fp32_model(manifest: Manifest) -> str:
    """The FP32 ONNX file the reference is computed with (``model.onnx`` when listed)."""
    names = sorted(n for n, e in manifest.files.items() if e.precision == "fp32")
    names = [n for n in names if n.endswith(".onnx")]
    if not names:
        raise VerifyError(f"{manifest.path}: lists no FP32 ONNX model to write a reference with")
    return "model.onnx" if "model.onnx" in names else names[0]


def write_reference(folder: Path, audio_paths: Sequence[Path]) -> Path:
    from edge.runtime.offline import detect_recordings

    manifest = load_manifest(folder / MANIFEST_NAME)
    source, rate = fp32_model(manifest), manifest.feature_spec.sample_rate_hz
    verify_file(manifest, folder / source)
    files = audio_files(audio_paths)
    audio = {p.stem: read_int16(p, rate) for p in files}
    with stored_audio(audio, rate) as paths:
        found = detect_recordings(
            paths, folder, source, keep_probs=True, backend=onnx_backend(("cpu",))
        )
    meta = {"format": REFERENCE_FORMAT, "model_id": manifest.model_id, "source": source,
            "source_sha256": manifest.files[source].sha256, "sample_rate_hz": rate,
            "outputs": list(manifest.outputs), "rules_sha256": rules_sha256(manifest),
            "recordings": [{"name": p.stem, "file": p.name, "events": events_of(found[p.stem])}
                           for p in files]}  # fmt: skip
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta, sort_keys=True))}
    for i, p in enumerate(files):
        probs = found[p.stem].probs
        if probs is None or not np.isfinite(probs).any():
            raise VerifyError(f"{p}: the model described no output frame of it (too short?)")
        arrays[f"audio_{i}"], arrays[f"probs_{i}"] = audio[p.stem], probs
    path = folder / REFERENCE_NAME
    save_npz(path, arrays)
    record_artifact(manifest.path, path, precision=REFERENCE_PRECISION, extra=entry_of(meta))
    return path


def entry_of(meta: Mapping[str, Any], checked: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The reference's manifest entry besides sha256, bytes, precision and recorded_utc."""
    extra: dict[str, Any] = {k: meta[k] for k in ("source", "source_sha256", "model_id")}
    extra["recordings"] = [r["file"] for r in meta["recordings"]]
    extra["tolerances"] = {k: asdict(t) for k, t in TOLERANCES.items()}
    if checked is not None:
        extra["checked"] = checked
    return extra


def onnx_backend(providers: tuple[str, ...]) -> BackendConfig:
    return BackendConfig(providers=providers, intra_op_threads=1, max_batch=MAX_BATCH)


def has_tensorrt() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def artifacts_of(
    manifest: Manifest, names: Sequence[str], providers: tuple[str, ...]
) -> list[Artifact]:
    """The models to check (``names``: only those), FP32 first, engines last."""
    models = {n: e for n, e in manifest.files.items() if n.endswith(MODEL_SUFFIXES)}
    for name in names:
        if name not in models:
            listed = ", ".join(sorted(models)) or "none"
            raise VerifyError(f"--model {name}: not a model listed in {manifest.path} ({listed})")
        if name.endswith(".plan") and not has_tensorrt():
            raise VerifyError(
                f"--model {name}: TensorRT is not importable here; verify an engine on the "
                "device that built it"
            )
    chosen = sorted(
        (models[n] for n in (names or models)),
        key=lambda e: (e.name.endswith(".plan"), e.precision != "fp32", e.name),
    )
    engine = BackendConfig(kind="tensorrt", max_batch=MAX_BATCH)
    return [
        Artifact(
            e.name, e.precision, engine if e.name.endswith(".plan") else onnx_backend(providers)
        )
        for e in chosen
    ]


def check_artifact(
    manifest: Manifest, reference: Reference, artifact: Artifact, audio: dict[str, Path]
) -> StageResult:
    from edge.runtime.offline import detect_recordings

    if artifact.backend.kind == "tensorrt" and not has_tensorrt():
        return StageResult(artifact, skipped="no TensorRT here")
    folder = manifest.path.parent
    try:
        verify_file(manifest, folder / artifact.name)
        found = detect_recordings(
            audio, folder, artifact.name, keep_probs=True, backend=artifact.backend
        )
    except LungwatchError as exc:
        return StageResult(artifact, refused=" ".join(str(exc).split()))
    return StageResult(artifact, compare(reference, found, TOLERANCES[artifact.tolerance]))


def verify_folder(
    folder: Path, names: Sequence[str], providers: tuple[str, ...]
) -> tuple[Reference, list[StageResult]]:
    manifest = load_manifest(folder / MANIFEST_NAME)
    reference = load_reference(manifest)
    artifacts = artifacts_of(manifest, names, providers)
    audio = {r.name: r.audio for r in reference.recordings}
    with stored_audio(audio, reference.meta["sample_rate_hz"]) as paths:
        return reference, [check_artifact(manifest, reference, a, paths) for a in artifacts]


def table_row(result: StageResult) -> str:
    tol, c = TOLERANCES[result.artifact.tolerance], result.comparison
    if c is None:
        return f"| {result.artifact.stage} | - | - | {result.verdict.replace('|', '/')} |"
    frames = (
        f"{c.max_abs_dp:.3g} / {c.mean_abs_dp:.3g} (≤ {tol.max_abs_dp:g} / {tol.mean_abs_dp:g})"
    )
    events = (
        f"{c.matched}/{c.reference_events}, {len(c.missing)} missing, {len(c.extra)} extra "
        f"(≤ {tol.max_unmatched_share:.0%} unmatched)"
    )
    verdict = result.verdict.replace("|", "/")  # one cell
    return f"| {result.artifact.stage} | {frames} | {events} | {verdict} |"


def print_results(reference: Reference, results: Sequence[StageResult]) -> None:
    recs = reference.recordings
    seconds = sum(r.audio.size for r in recs) / reference.meta["sample_rate_hz"]
    print(
        f"reference: {reference.path}: {len(recs)} recordings ({seconds:.1f} s, "
        f"{sum(r.probs.shape[0] for r in recs)} frames, {sum(len(r.events) for r in recs)} "
        f"events) from {reference.meta['source']} of {reference.meta['model_id']}"
    )
    print("| stage | frames max/mean Δp | events matched | verdict |")
    print("|---|---|---|---|")
    for result in results:
        print(table_row(result))
    for result in results:
        c = result.comparison or Comparison()
        listed = [("missing", *m) for m in c.missing] + [("extra", *e) for e in c.extra]
        for what, name, e in listed[:EVENT_LINES]:
            span = f"{e['start_s']:.2f}-{e['end_s']:.2f} s"
            print(f"  {result.artifact.stage}: {what} {e['type']} {span} in {name}")


def summary_of(results: Sequence[StageResult]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in results:
        out[r.artifact.stage] = row = {"ok": r.ok, "verdict": r.verdict}
        if r.comparison is not None:
            c = r.comparison
            row.update(tolerance=r.artifact.tolerance, max_abs_prob_diff=c.max_abs_dp,
                       mean_abs_prob_diff=c.mean_abs_dp, reference_events=c.reference_events,
                       matched=c.matched, missing=len(c.missing), extra=len(c.extra))  # fmt: skip
    return out


def finish(results: Sequence[StageResult]) -> int:
    """Exit status; a failure's last line (stderr) names every failed artifact and why."""
    failed = [r for r in results if not r.ok]
    if failed:
        what = "; ".join(f"{r.artifact.stage}: {r.verdict.removeprefix('FAIL: ')}" for r in failed)
        print(f"{PROG}: error: beyond tolerance or refused: {what}", file=sys.stderr)
        return 1
    ran = sum(1 for r in results if not r.skipped)
    print(f"verify: {ran} of {len(results)} artifacts checked, each within tolerance")
    return 0


def parse_args(argv: list[str] | None) -> Any:
    parser = ArgumentParser(prog=PROG, description="Check model artifacts against a reference.")
    parser.add_argument(
        "--model-dir", type=Path, default=Path("models/sed"),
        help="the model folder whose artifacts are checked",
    )  # fmt: skip
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--reference", action="store_true", help="check against the reference")
    mode.add_argument("--write-reference", action="store_true", help="write it (workstation)")
    parser.add_argument("--audio", type=Path, nargs="+", help="recordings (default examples/)")
    parser.add_argument("--model", action="append", default=[], help="only this file (repeat)")
    parser.add_argument("--providers", default="cpu", help="ONNX Runtime's, e.g. cuda,cpu")
    args = parser.parse_args(argv)
    if args.audio and not args.write_reference:
        parser.error("--audio goes with --write-reference (--reference uses the stored audio)")
    args.model = [Path(m).name for m in args.model]
    args.providers = tuple(p.strip() for p in args.providers.split(",") if p.strip())
    try:
        onnx_backend(args.providers)
    except LungwatchError as exc:
        parser.error(f"--providers: {exc}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder, manifest_path = args.model_dir, args.model_dir / MANIFEST_NAME
    try:
        if args.write_reference:
            path = write_reference(folder, args.audio or [EXAMPLES_DIR])
            print(f"wrote {path} ({path.stat().st_size:,} bytes), recorded in {manifest_path}")
        reference, results = verify_folder(folder, args.model, args.providers)
        if args.write_reference:
            extra = entry_of(reference.meta, summary_of(results))
            record_artifact(manifest_path, reference.path, precision="reference", extra=extra)
    except LungwatchError as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print_results(reference, results)
    return finish(results)


if __name__ == "__main__":
    sys.exit(main())
