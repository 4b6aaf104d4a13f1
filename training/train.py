"""``lungwatch train --config training/configs/sed.yaml [--set key=value ...]``: the frame-level
detector's trainer (:mod:`training.sed_train`), configured by one run YAML plus overrides."""

from __future__ import annotations

import json

from edge.config import load_config
from firmware_bridge.cliparse import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    from training.sed_train import Proto
    from training.sed_train import main as train_sed

    parser = ArgumentParser(prog="lungwatch train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="run YAML (training/configs/*.yaml)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key, e.g. epochs=3 (repeatable)",
    )
    args = parser.parse_args(argv)
    summary = train_sed(load_config(Proto, args.config, args.set))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
