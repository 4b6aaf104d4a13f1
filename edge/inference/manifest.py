"""The model manifest, read on the device: what a model folder holds and how to feed it.

One ``manifest.json`` per model folder covers every artifact in it; this module only reads
and checks it (the rules with their config dataclasses), so the device needs neither torch
nor onnx. Every key: docs/export.md, "manifest.json (schema version 2)"; the streaming model
it describes: docs/runtime.md, "The streaming model"."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from edge.bed.rules import ClassThreshold, PhaseRule
from edge.features import FEATURE_KINDS, FeatureSpec, require_same_spec
from edge.inference.base import INPUT_NAME, PROBS_NAME, STATE_NAME, STATE_OUT_NAME
from lungwatch.config import from_mapping, json_object
from lungwatch.errors import ConfigError, FeatureSpecMismatchError, LungwatchError

SCHEMA_VERSION = 2  # 1 was the window classifier's (retired)
MANIFEST_NAME = "manifest.json"
REFERENCE = "reference"  # the precision the verify gate's reference file is listed with
HASH_PREVIEW_CHARS = 12  # hex characters of a sha256 shown in messages
READ_CHUNK_BYTES = 1 << 20
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
T = TypeVar("T")


class ManifestError(LungwatchError):
    """A manifest is missing, malformed, of another schema, or disagrees with a file."""


@dataclass(frozen=True)
class FileEntry:
    name: str
    sha256: str
    bytes: int
    precision: str  # fp32 | int8 | fp16 | ...
    extra: Mapping[str, Any]  # every other key of the entry (source, tensorrt_version, ...)


@dataclass(frozen=True)
class StreamingInfo:
    """How a streaming model is fed: ``chunk_frames`` outputs per call from
    ``chunk_frames * stride`` front-end frames, delayed by ``lookahead_frames``."""

    chunk_frames: int
    stride: int
    lookahead_frames: int
    state_size: int
    # (K, F) front-end frame fed after a stream's end so that its last frames are described
    # (the look-ahead and the last partial chunk); None: the stream ends unflushed
    flush: tuple[tuple[float, ...], ...] | None = None

    @property
    def input_frames(self) -> int:
        return self.chunk_frames * self.stride


@dataclass(frozen=True)
class Manifest:
    """A loaded, validated manifest (``raw``: the whole parsed JSON)."""

    path: Path
    model_id: str
    feature_spec: FeatureSpec
    kinds: tuple[str, ...]
    outputs: tuple[str, ...]
    streaming: StreamingInfo
    files: Mapping[str, FileEntry]
    raw: Mapping[str, Any]
    detector_rules: tuple[Mapping[str, Any], ...] = ()  # fitted per-class rules
    quality_thresholds: tuple[float, float] | None = None  # (poor_on, poor_off)
    detector_phases: PhaseRule | None = None  # fitted phase rule
    # fitted recurrence rules of the finding episodes: {"CAS": {"events", "within_s"[,
    # "resolve_s"]}, "DAS": ...} (edge.bed.findings)
    detector_findings: Mapping[str, Mapping[str, Any]] | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(n_kinds, n_bands, chunk_frames * stride)``: one call's features per bed."""
        return (len(self.kinds), self.feature_spec.n_bands, self.streaming.input_frames)

    @property
    def task_rules(self) -> Mapping[str, Any] | None:
        """The fitted Task rules (``tasks.rules``; the rolling verdict reads Task 2's)."""
        tasks = self.raw.get("tasks")
        return tasks.get("rules") if isinstance(tasks, Mapping) else None

    @property
    def runnable(self) -> tuple[str, ...]:
        """The artifacts a backend can run (the verify gate's reference is not one)."""
        return tuple(sorted(n for n, e in self.files.items() if e.precision != REFERENCE))

    def file_path(self, name: str) -> Path:
        return self.path.parent / name


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(READ_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def short_hash(hex_digest: str) -> str:
    return f"{hex_digest[:HASH_PREVIEW_CHARS]}…"


def read_json(path: Path) -> dict[str, Any]:
    """The manifest's top-level mapping; errors name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest not found") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
    return json_object(text, str(path), ManifestError)


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest; every error names the file and the key."""
    path = Path(path)
    data = read_json(path)
    _check_schema(path, data)
    spec = _feature_spec(path, data)
    kinds = _kinds(path, data)
    block = _get(path, data, "streaming")
    if not isinstance(block, dict):
        _fail(path, "streaming", block, "a mapping")
    info = StreamingInfo(
        chunk_frames=_int(path, block, "chunk_frames", 1, "streaming."),
        stride=_int(path, block, "stride", 1, "streaming."),
        lookahead_frames=_int(path, block, "lookahead_frames", 0, "streaming."),
        state_size=_int(path, block, "state_size", 1, "streaming."),
        flush=_flush(path, block, len(kinds), spec.n_bands),
    )
    outputs = _str_list(path, data, "outputs", 1)
    _check_onnx(path, data, (len(kinds), spec.n_bands), info, len(outputs))
    return Manifest(
        path=path,
        model_id=_str(path, data, "model_id"),
        feature_spec=spec,
        kinds=kinds,
        outputs=outputs,
        streaming=info,
        files=_files(path, data),
        raw=data,
        detector_rules=_detector_rules(path, data, outputs),
        quality_thresholds=_quality(path, data),
        detector_phases=_detector_phases(path, data, outputs),
        detector_findings=_detector_findings(path, data),
    )


def verify_file(manifest: Manifest, path: str | Path) -> FileEntry:
    """ManifestError unless ``path`` is listed in the manifest and its sha256 matches."""
    path = Path(path)
    entry = manifest.files.get(path.name)
    if entry is None:
        listed = ", ".join(sorted(manifest.files)) or "none"
        raise ManifestError(f"{path.name}: not listed in {manifest.path} (listed: {listed})")
    if not path.is_file():
        raise ManifestError(f"{path}: file not found (listed in {manifest.path})")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise ManifestError(
            f"{path.name}: sha256 {short_hash(actual)} does not match the manifest "
            f"({short_hash(entry.sha256)})"
        )
    return entry


def require_spec(manifest: Manifest, configured: FeatureSpec) -> None:
    """FeatureSpecMismatchError unless the configured kind is one of the model's kinds and
    every other field equals the manifest's spec."""
    if configured.kind not in manifest.kinds:
        raise FeatureSpecMismatchError(
            f"{manifest.model_id}: feature spec differs (kind: model {list(manifest.kinds)} "
            f"vs config {configured.kind!r})"
        )
    model_spec = manifest.feature_spec.replace(kind=configured.kind)
    require_same_spec(model_spec, configured, manifest.model_id)


def _fail(path: Path, key: str, value: object, allowed: str) -> NoReturn:
    raise ManifestError(f"{path}: {key} must be {allowed}, got {value!r}")


def _get(path: Path, data: Mapping[str, Any], key: str, where: str = "") -> Any:
    if key not in data:
        raise ManifestError(f"{path}: {where}{key} is missing")
    return data[key]


def _check_schema(path: Path, data: Mapping[str, Any]) -> None:
    version = _get(path, data, "schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise ManifestError(
            f"{path}: schema_version {version!r} is not supported (this lungwatch reads "
            f"version {SCHEMA_VERSION}, a streaming model)"
        )


def _str(path: Path, data: Mapping[str, Any], key: str, where: str = "") -> str:
    value = _get(path, data, key, where)
    if not isinstance(value, str) or not value:
        _fail(path, where + key, value, "a non-empty string")
    return str(value)


def _int(path: Path, data: Mapping[str, Any], key: str, minimum: int, where: str = "") -> int:
    value = _get(path, data, key, where)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        _fail(path, where + key, value, f"an integer >= {minimum}")
    return int(value)


def _str_list(path: Path, data: Mapping[str, Any], key: str, min_items: int) -> tuple[str, ...]:
    value = _get(path, data, key)
    ok = isinstance(value, list) and all(isinstance(v, str) and v for v in value)
    if not ok or len(value) < min_items or len(set(value)) != len(value):
        _fail(path, key, value, f"a list of at least {min_items} distinct non-empty strings")
    return tuple(value)


def _kinds(path: Path, data: Mapping[str, Any]) -> tuple[str, ...]:
    kinds = _str_list(path, data, "kinds", 1)
    if not set(kinds) <= set(FEATURE_KINDS):
        _fail(path, "kinds", list(kinds), f"feature kinds from {list(FEATURE_KINDS)}")
    return kinds


def _feature_spec(path: Path, data: Mapping[str, Any]) -> FeatureSpec:
    value = _get(path, data, "feature_spec")
    if not isinstance(value, dict):
        _fail(path, "feature_spec", value, "a mapping (FeatureSpec.to_dict())")
    try:
        return FeatureSpec.from_dict(value, source=f"{path} feature_spec")
    except ConfigError as exc:
        raise ManifestError(str(exc)) from None


def _file_entry(path: Path, name: str, value: Any) -> FileEntry:
    where = f"files[{name!r}]."
    if not isinstance(value, dict):
        _fail(path, f"files[{name!r}]", value, "a mapping with sha256, bytes, precision")
    sha256 = _str(path, value, "sha256", where)
    if not _SHA256_RE.fullmatch(sha256):
        _fail(path, where + "sha256", sha256, "64 lowercase hex characters")
    extra = {k: v for k, v in value.items() if k not in ("sha256", "bytes", "precision")}
    size, precision = _int(path, value, "bytes", 1, where), _str(path, value, "precision", where)
    return FileEntry(name=name, sha256=sha256, bytes=size, precision=precision, extra=extra)


def _files(path: Path, data: Mapping[str, Any]) -> dict[str, FileEntry]:
    files = _get(path, data, "files")
    if not isinstance(files, dict) or not files:
        _fail(path, "files", files, "a non-empty mapping of file name -> entry")
    return {name: _file_entry(path, name, value) for name, value in files.items()}


def _check_onnx(
    path: Path, data: Mapping[str, Any], kf: tuple[int, int], info: StreamingInfo, n_out: int
) -> None:
    onnx = _get(path, data, "onnx")
    if not isinstance(onnx, dict):
        _fail(path, "onnx", onnx, "a mapping")
    wanted = {
        "inputs": {INPUT_NAME: [*kf, info.input_frames], STATE_NAME: [info.state_size]},
        "outputs": {PROBS_NAME: [n_out, info.chunk_frames], STATE_OUT_NAME: [info.state_size]},
    }
    for key, shapes in wanted.items():
        if _get(path, onnx, key, "onnx.") != shapes:
            _fail(path, f"onnx.{key}", onnx[key], f"{shapes} (the sizes without the batch)")


def _flush(
    path: Path, block: Mapping[str, Any], kinds: int, bands: int
) -> tuple[tuple[float, ...], ...] | None:
    value = block.get("flush")
    if value is None:
        return None

    def row_ok(row: Any) -> bool:
        shaped = isinstance(row, list) and len(row) == bands
        return shaped and all(_number(v) and math.isfinite(v) for v in row)

    ok = isinstance(value, list) and len(value) == kinds and all(map(row_ok, value))
    if not ok:
        _fail(path, "streaming.flush", value, f"{kinds} lists of {bands} finite numbers (K, F)")
    return tuple(tuple(float(v) for v in row) for row in value)


RULE_KEYS = ("type", "on_threshold", "off_threshold", "min_event_ms", "merge_gap_ms")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _rule(path: Path, cls: type[T], value: Any, key: str) -> T:
    try:
        return from_mapping(cls, value, source=str(path), prefix=key)
    except ConfigError as exc:
        raise ManifestError(str(exc)) from None


def _detector_rules(
    path: Path, data: Mapping[str, Any], outputs: tuple[str, ...]
) -> tuple[Mapping[str, Any], ...]:
    block = data.get("detector")
    if block is None:
        return ()
    rules = block.get("thresholds") if isinstance(block, dict) else None
    if not isinstance(rules, list):
        _fail(path, "detector.thresholds", rules, "a list of per-class rules")
    for i, rule in enumerate(rules):
        key = f"detector.thresholds[{i}]"
        _rule(path, ClassThreshold, rule, key)
        if set(rule) != set(RULE_KEYS) or rule["type"] not in outputs:
            _fail(path, key, rule, f"a rule of {', '.join(RULE_KEYS)} for one of {list(outputs)}")
    return tuple(rules)


def _detector_findings(path: Path, data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    block = data.get("detector")
    found = block.get("findings") if isinstance(block, dict) else None
    if found is None:
        return None
    from edge.bed.findings import HELD_FAMILIES, RecurrenceRule

    if not isinstance(found, dict) or not set(found) <= set(HELD_FAMILIES):
        _fail(
            path, "detector.findings", found, f"a mapping of {' / '.join(HELD_FAMILIES)} to rules"
        )
    for family, rule in found.items():
        _rule(path, RecurrenceRule, rule, f"detector.findings.{family}")
    return found


def _detector_phases(
    path: Path, data: Mapping[str, Any], outputs: tuple[str, ...]
) -> PhaseRule | None:
    block = data.get("detector")
    phases = block.get("phases") if isinstance(block, dict) else None
    if phases is None:
        return None
    rule = _rule(path, PhaseRule, phases, "detector.phases")
    for key, names in (("output", (rule.output,)), ("frame_classes", rule.frame_classes),
                       ("box_classes", rule.box_classes)):  # fmt: skip
        if any(name not in outputs for name in names):
            _fail(path, f"detector.phases.{key}", phases[key], f"among the outputs {list(outputs)}")
    return rule


def _quality(path: Path, data: Mapping[str, Any]) -> tuple[float, float] | None:
    block = data.get("quality")
    if block is None:
        return None
    ok = isinstance(block, dict) and all(_number(block.get(k)) for k in ("poor_on", "poor_off"))
    if not ok or not 0.0 <= block["poor_off"] <= block["poor_on"] <= 1.0:
        _fail(path, "quality", block, "a mapping with 0 <= poor_off <= poor_on <= 1")
    return float(block["poor_on"]), float(block["poor_off"])
