"""The ``lungwatch`` console script: one subcommand per package ``main(argv)``.

Each subcommand is a thin wrapper: the module is imported only when its subcommand runs,
so ``lungwatch demo`` on a device never imports training code or torch.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from edge.errors import LungwatchError

DEBUG_ENV = "LUNGWATCH_DEBUG"  # set to show the traceback of an unexpected error

# subcommand -> (module with main(argv), one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "edge.demo",
        "the whole pipeline on three recordings: broker, runtime, subscriber, PNGs",
    ),
    "features": ("edge.features.cli", "compute features of audio files and save them as .npy"),
    "bench": ("bench.frontend", "front-end throughput table (run from a source checkout)"),
    "train": ("training.train", "train a model from a run YAML (workstation, needs torch)"),
    "calibrate": ("training.calibrate", "fit Task 2 record thresholds on the validation split"),
    "report": ("training.report", "every model-card score of a checkpoint (needs the data)"),
    "crossval": ("training.crossval", "patient-grouped cross-validation of a run config"),
    "predict": ("training.predict", "challenge-format predictions from a trained checkpoint"),
    "evaluate": ("training.evaluate", "score challenge predictions against annotations"),
    "detect": ("training.detect", "events in whole recordings as JSON lines (--plot PNG)"),
    "export": ("export.to_onnx", "checkpoint -> model.onnx (opset 17, dynamic batch) + manifest"),
    "quantize": ("export.quantize", "model.onnx -> explicit Q/DQ INT8 ONNX, calibrated on audio"),
    "engine": ("export.engine", "Q/DQ ONNX -> TensorRT engine on this machine (TensorRT 10)"),
    "verify": ("export.verify", "parity gate: torch vs ONNX vs INT8 (vs TensorRT), event lists"),
    "run": ("edge.runtime", "the bedside runtime: streams -> model -> events over MQTT"),
    "dashboard": ("edge.dashboard.cli", "the ward view: a web page of every bed on the broker"),
    "bridge": ("firmware_bridge.cli", "receive a wearable stethoscope stream and report it"),
    "emulate": ("firmware_bridge.emulator", "play a recording as a wearable stethoscope would"),
}


def _usage() -> str:
    lines = ["usage: lungwatch <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run 'lungwatch <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"lungwatch: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name = SUBCOMMANDS[name][0]
    try:
        entry: Callable[[list[str]], int] = importlib.import_module(module_name).main
    except ModuleNotFoundError as exc:
        print(
            f"lungwatch {name}: cannot import {exc.name} ({module_name}); "
            "install the matching extra or run from a source checkout",
            file=sys.stderr,
        )
        return 2
    try:
        return int(entry(rest) or 0)
    except KeyboardInterrupt:
        print(f"lungwatch {name}: interrupted", file=sys.stderr)
        return 130
    except (LungwatchError, OSError) as exc:  # what the user can fix: one line, no traceback
        print(f"lungwatch {name}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, the traceback on request
        if os.environ.get(DEBUG_ENV):
            raise
        print(
            f"lungwatch {name}: unexpected error: {type(exc).__name__}: {_one_line(exc)} "
            f"(set {DEBUG_ENV}=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


def _one_line(exc: BaseException) -> str:
    """The exception's message with its line breaks folded; an OSError as ``path: reason``."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
