"""``lungwatch features``: compute one front-end kind for audio files and save ``.npy``.

    lungwatch features rec.flac --kind gammatone --set n_bands=32 --out feats/

Each output ``<stem>.<kind>.npy`` holds a (n_frames, n_bands) float32 array; the spec used
is written beside it as ``<stem>.<kind>.spec.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edge.audio import read_audio
from edge.features import FEATURE_KINDS, FeatureSpec, extract
from lungwatch.cli import ArgumentParser
from lungwatch.config import apply_overrides, from_mapping


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch features", description=__doc__)
    parser.add_argument("audio", nargs="+", help="WAV or FLAC files")
    parser.add_argument(
        "--kind", choices=FEATURE_KINDS, default="logmel", help="the front end to compute"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a FeatureSpec field, e.g. n_bands=32",
    )
    parser.add_argument("--out", default=".", help="output folder")
    args = parser.parse_args(argv)
    fields = apply_overrides({"kind": args.kind}, args.set, source="--set")
    spec = from_mapping(FeatureSpec, fields, source="--set")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in args.audio:
        audio = read_audio(path, target_rate_hz=spec.sample_rate_hz)
        frames = extract(audio.samples, spec)
        name = f"{Path(path).stem}.{spec.kind}"
        np_path = out / f"{name}.npy"
        np.save(np_path, frames)
        (out / f"{name}.spec.json").write_text(json.dumps(spec.to_dict(), indent=2))
        print(f"{path}: {frames.shape[0]} frames x {frames.shape[1]} bands -> {np_path}")
    return 0
