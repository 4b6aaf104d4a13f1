"""``lungwatch detect``: events in recordings, computed by the device's own path.

    lungwatch detect --audio DIR [--audio FILE ...] [--model models/sed]
                     [--config FILE] [--out events.json] [--technical FILE]
                     [--episodes FILE]
                     [--respiration FILE] [--age-band BAND|auto]

Every recording runs as one bed of the public streaming API
(:func:`edge.runtime.offline.detect_recordings`), exactly as ``lungwatch run`` runs it. The
options and the output files: docs/training.md, "detect"; ``--respiration``:
docs/respiration.md, "What a bed reports".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.bed.agebands import AGE_BAND_NAMES, age_from_sprsound_name, band_for_age
from edge.bed.breathing_state import RespirationConfig
from edge.bed.detector import DetectorConfig
from edge.bed.gate import GateConfig
from edge.bed.verdict import VerdictConfig
from edge.inference import BackendConfig
from edge.monitor import DEFAULT_MODEL, resolve_model
from edge.runtime.offline import OfflineError, RecordingEvents, detect_recordings, recordings_in
from lungwatch.cli import ArgumentParser
from lungwatch.config import from_mapping, load_yaml
from lungwatch.errors import ConfigError

USED_SECTIONS = ("detector", "gate", "backend", "verdict", "respiration")
# option -> the RecordingEvents field it writes
OUTPUTS = {"technical": "technical", "episodes": "findings", "verdicts": "verdict"}
OUTPUTS["respiration"] = "respiration"
AUTO = "auto"

#: The workstation's ``--score``: (args, config sections, recordings' events, model folder)
Scorer = Callable[[argparse.Namespace, "DetectConfig", dict[str, RecordingEvents], Path], None]


@dataclass(frozen=True)
class DetectConfig:
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    backend: BackendConfig = field(
        default_factory=lambda: BackendConfig(providers=("cpu",), max_batch=64)
    )
    verdict: VerdictConfig = field(default_factory=VerdictConfig)
    respiration: RespirationConfig = field(default_factory=RespirationConfig)


# keys of demo.run.DemoConfig a runtime config lacks (named here: the demo builds on the device)
DEMO_KEYS = ("broker", "chunk_samples", "delivery_timeout_s", "examples_dir", "hold", "out_dir",
             "realtime", "records")  # fmt: skip


def load_detect_config(path: Path) -> DetectConfig:
    data = load_yaml(path)
    from edge.runtime.config import RuntimeConfig

    known = {f.name for f in dataclasses.fields(RuntimeConfig)} | set(DEMO_KEYS)
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:  # a typo, not a section of the runtime's or the demo's: said, not skipped
        raise ConfigError(
            f"{path.name}: {unknown[0]} is not a key of a runtime or demo config "
            f"(detect uses {', '.join(USED_SECTIONS)})"
        )
    unused = sorted(k for k in data if k not in USED_SECTIONS)
    if unused:
        used = ", ".join(USED_SECTIONS)
        not_used = f"{', '.join(unused)} are the runtime's and not used here"
        print(f"lungwatch detect: {path.name}: uses {used}; {not_used}", file=sys.stderr)
    kept = {k: data[k] for k in USED_SECTIONS if k in data}
    return from_mapping(DetectConfig, kept, source=path.name)


def build_parser(prog: str = "lungwatch detect", scoring: bool = False) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description=__doc__)
    audio_help = "a recording or a folder of them (repeatable)"
    parser.add_argument("--audio", type=Path, action="append", required=True, help=audio_help)
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="model folder or an ONNX file it lists"
    )
    parser.add_argument("--config", type=Path, help="runtime YAML: detector/gate/backend")
    parser.add_argument("--out", type=Path, help="events JSON (default: standard output)")
    parser.add_argument("--technical", type=Path, help="also write technical events here")
    parser.add_argument(
        "--episodes", type=Path, help="also write each recording's finding episodes here"
    )
    parser.add_argument(
        "--verdicts", type=Path, help="also write each recording's rolling verdict at its end"
    )
    parser.add_argument(
        "--respiration", type=Path, help="also write each recording's breathing (rate, breaths)"
    )
    parser.add_argument(
        "--age-band",
        choices=(*AGE_BAND_NAMES, AUTO),
        help="every recording's age band (auto: the age in a SPRSound file name)",
    )
    score_help = "score against SPRSound annotations (sed_eval)"
    if not scoring:
        score_help = "scoring runs on the workstation: lungwatch detect --score"
    parser.add_argument("--score", action="store_true", help=score_help)
    parser.add_argument("--score-out", type=Path, help="with --score: every score as JSON here")
    return parser


def main(argv: list[str] | None = None, scorer: Scorer | None = None) -> int:
    """``lungwatch detect``; ``scorer`` (the workstation's) handles ``--score``."""
    parser = build_parser(scoring=scorer is not None)
    args = parser.parse_args(argv)
    if args.score_out is not None and not args.score:
        parser.error("--score-out needs --score")
    if args.score and scorer is None:
        parser.error("--score needs the workstation install (lungwatch detect --score)")
    recordings = recordings_in(args.audio)
    config = load_detect_config(args.config) if args.config is not None else DetectConfig()
    folder, file = resolve_model(args.model)
    options: dict[str, Any] = {section: getattr(config, section) for section in USED_SECTIONS}
    options.update(skip_unreadable=True, keep_probs=args.score)
    options["age_bands"] = age_bands(recordings, args.age_band)
    found = detect_recordings(recordings, folder, file, **options)
    unread = {name: r.error for name, r in sorted(found.items()) if r.error is not None}
    read = sorted(name for name in found if name not in unread)
    if not read:  # nothing to write: the first reason is the error
        raise OfflineError(next(iter(unread.values())))
    events = {name: found[name].physiological for name in read}
    write_json(args.out, events)
    for option, field_name in OUTPUTS.items():  # --technical FILE ...: these files too
        if getattr(args, option) is not None:
            write_json(getattr(args, option), {n: getattr(found[n], field_name) for n in read})
    if scorer is not None and args.score:
        scorer(args, config, found, folder)
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


def age_bands(recordings: dict[str, Path], choice: str | None) -> dict[str, str]:
    """Each recording's age band for ``--age-band`` (None: the config's for all)."""
    if choice is None:
        return {}
    if choice != AUTO:
        return dict.fromkeys(recordings, choice)
    ages = {name: age_from_sprsound_name(name) for name in recordings}
    return {name: band_for_age(age).name for name, age in ages.items() if age is not None}


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=1)
    if path is None:
        print(text)
        return
    if path.is_dir():
        raise OfflineError(f"{path}: is a folder; --out and --technical take a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
