"""The device's console script ``lungwatch-edge``: one subcommand per package ``main(argv)``.

Each subcommand is a thin wrapper: the module is imported only when its subcommand runs, so
``lungwatch-edge run`` never imports training code or torch. The workstation's ``lungwatch``
(:mod:`training.cli`) carries these commands and the training and export ones.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from edge.errors import LungwatchError

DEBUG_ENV = "LUNGWATCH_DEBUG"  # set to show the traceback of an unexpected error

# subcommand -> (module with main(argv), one-line help). The device's commands only: the
# workstation's (train, export, quantize, ...) are added by training.cli, the ``lungwatch``
# console script; a device runs ``lungwatch-edge``, which never lists or imports them.
Commands = dict[str, tuple[str, str]]
DEVICE_SCRIPT = "lungwatch-edge"
WORKSTATION_SCRIPT = "lungwatch"
DEVICE_COMMANDS: Commands = {
    "demo": (
        "edge.demo.run",
        "the whole pipeline on three recordings: broker, runtime, subscriber, PNGs",
    ),
    "run": ("edge.runtime.loop", "the bedside runtime: streams -> model -> events over MQTT"),
    "dashboard": ("edge.dashboard.cli", "the ward view: a web page of every bed on the broker"),
    "detect": (
        "training.scoring.detect",
        "events in whole recordings through the device path (JSON)",
    ),
    "features": ("edge.features.cli", "compute features of audio files and save them as .npy"),
    "engine": ("export.engine", "Q/DQ ONNX -> TensorRT engine on this machine (TensorRT 10)"),
    "verify": ("export.verify", "check a model artifact against its folder's verify reference"),
    "bridge": ("firmware_bridge.cli", "receive a wearable stethoscope stream and report it"),
    "emulate": ("firmware_bridge.emulator", "play a recording as a wearable stethoscope would"),
    "bench": ("bench.frontend", "front-end throughput table (run from a source checkout)"),
}


DEVICE_NOTE = (
    f"Training and export commands (train, export, quantize, ...) are in "
    f"'{WORKSTATION_SCRIPT}' on the workstation."
)


def _usage(script: str, commands: Commands, note: str) -> str:
    lines = [f"usage: {script} <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in commands.items()]
    lines += ["", f"Run '{script} <command> --help' for a command's options."]
    return "\n".join([*lines, note] if note else lines)


def main(argv: list[str] | None = None) -> int:
    """``lungwatch-edge``: the device's commands."""
    return dispatch(DEVICE_COMMANDS, argv, DEVICE_SCRIPT, DEVICE_NOTE)


def dispatch(commands: Commands, argv: list[str] | None, script: str, note: str = "") -> int:
    """Run ``argv[0]``'s module ``main(argv[1:])``; errors as one line, ``lungwatch NAME: ...``.
    ``note`` ends the usage text."""
    args = sys.argv[1:] if argv is None else argv
    usage = _usage(script, commands, note)
    if not args or args[0] in ("-h", "--help"):
        print(usage)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in commands:
        print(f"{script}: unknown command {name!r}\n\n{usage}", file=sys.stderr)
        return 2
    module_name = commands[name][0]
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
