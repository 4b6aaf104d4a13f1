"""The console scripts ``lungwatch`` (the workstation: every command) and ``lungwatch-edge`` (the
device: its commands), one subcommand per module ``main(argv)``, imported only when it runs
(``lungwatch-edge run`` never imports torch); and the argument parser every command uses,
standard library only so every package may use it."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

DEBUG_ENV = "LUNGWATCH_DEBUG"  # set to show the traceback of an unexpected error
DEVICE_SCRIPT = "lungwatch-edge"
WORKSTATION_SCRIPT = "lungwatch"

Commands = dict[str, tuple[str, str]]  # subcommand -> (module with main(argv), one-line help)
#: A device's commands (edge, firmware_bridge, on-device export); none imports torch or training.
DEVICE_COMMANDS: Commands = {
    "demo": (
        "demo.run",
        "the whole pipeline on three recordings: broker, runtime, subscriber, PNGs",
    ),
    "run": ("lungwatch.run", "the bedside runtime: streams -> model -> events over MQTT"),
    "dashboard": ("wardview.cli", "the ward view: a web page of every bed on the broker"),
    "detect": ("edge.runtime.detect", "events in whole recordings through the device path (JSON)"),
    "features": ("edge.features.cli", "compute features of audio files and save them as .npy"),
    "engine": ("export.engine", "Q/DQ ONNX -> TensorRT engine on this machine (TensorRT 10)"),
    "verify": ("export.verify", "check a model artifact against its folder's verify reference"),
    "bridge": ("firmware_bridge.cli", "receive a wearable stethoscope stream and report it"),
    "emulate": ("firmware_bridge.emulator", "play a recording as a wearable stethoscope would"),
    "bench": ("bench.frontend", "front-end throughput table (run from a source checkout)"),
}
#: The workstation's and the site servers' commands; ``detect`` is the device's plus ``--score``.
WORKSTATION_COMMANDS: Commands = {
    "detect": ("training.scoring.detect", "events in recordings (JSON); --score: sed_eval scores"),
    "train": ("training.recipe.train", "train the detector from a run YAML (needs torch)"),
    "export": ("export.to_onnx", "checkpoint -> model folder: streaming model.onnx + manifest"),
    "quantize": ("export.quantize", "model.onnx -> explicit Q/DQ INT8 ONNX, calibrated on audio"),
    "cv": ("training.cv.cli", "patient-grouped cross-validation: folds, fold models, OOF scores"),
    "rules": ("training.recipe.fit", "refit a model's detector rules on its validation split"),
    "tasks": ("training.scoring.tasks", "fit the challenge Task rules into a model's manifest"),
    "predict": ("training.scoring.predict", "challenge-format predictions from a model"),
    "evaluate": ("training.scoring.evaluate", "score challenge predictions against annotations"),
    "views": ("training.scoring.views", "a model on validation, intra_test and ICBHI, per family"),
    "respiration": (
        "training.scoring.respiration",
        "respiratory rate and apnoea judged on ICBHI and SPRSound through the device path",
    ),
    "access": ("lungwatch.access", "broker passwords, ACL and command keys for a site's clients"),
    "gateway": (
        "gateway.cli",
        "rates, findings and alarms to the hospital: HL7 v2.6 MLLP (PCD-01, PCD-04), FHIR",
    ),
}
COMMANDS: Commands = {**DEVICE_COMMANDS, **WORKSTATION_COMMANDS}
#: A command's subcommand whose module sits in a higher layer than the command's own
#: (docs/design.md): ``cv device`` runs the export steps on training's fold models.
ROUTED: dict[tuple[str, str], str] = {("cv", "device"): "export.cv_device"}
DEVICE_NOTE = (
    f"Training and export commands (train, export, quantize, ...) are in "
    f"'{WORKSTATION_SCRIPT}' on the workstation."
)


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")  # :mod:`edge.monitor`, :func:`~x.y`


def plain_summary(text: str) -> str:
    """A docstring's first paragraph on one line, ``:mod:`a.b``` -> a.b and no double backquotes."""
    first = text.strip().split("\n\n")[0]
    line = " ".join(part.strip() for part in first.splitlines())
    line = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1] if m.group(0).count("~") else
                     m.group(1), line)  # fmt: skip
    return line.replace("``", "")


class ArgumentParser(argparse.ArgumentParser):
    """Errors are one line on stderr (exit status 2), not the usage block; no abbreviations."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        if kwargs.get("description"):
            kwargs["description"] = plain_summary(kwargs["description"])
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)

    def names(self, flag: str, text: str, allowed: Sequence[str]) -> list[str]:
        """An option's comma-separated names, each one of ``allowed`` (else this parser's error)."""
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names or any(n not in allowed for n in names):
            self.error(f"{flag} takes names from {', '.join(allowed)}, got {text!r}")
        return names


def main(argv: list[str] | None = None) -> int:
    return dispatch(COMMANDS, argv, WORKSTATION_SCRIPT)


def edge_main(argv: list[str] | None = None) -> int:
    return dispatch(DEVICE_COMMANDS, argv, DEVICE_SCRIPT, DEVICE_NOTE)


def _usage(script: str, commands: Commands, note: str) -> str:
    lines = [f"usage: {script} <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in commands.items()]
    lines += ["", f"Run '{script} <command> --help' for a command's options, '{script} --version'"]
    lines += ["for the release."]
    return "\n".join([*lines, note] if note else lines)


def dispatch(commands: Commands, argv: list[str] | None, script: str, note: str = "") -> int:
    """Run ``argv[0]``'s module ``main(argv[1:])``; errors as one line."""
    args = sys.argv[1:] if argv is None else argv
    usage = _usage(script, commands, note)
    if not args or args[0] in ("-h", "--help"):
        print(usage)
        return 0 if args else 2
    if args[0] == "--version":
        from lungwatch import __version__

        print(f"{script} {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in commands:
        print(f"{script}: unknown command {name!r}\n\n{usage}", file=sys.stderr)
        return 2
    module_name = commands[name][0]
    if rest and (name, rest[0]) in ROUTED:
        module_name = ROUTED[name, rest[0]]
        name, rest = f"{name} {rest[0]}", rest[1:]
    try:
        entry: Callable[[list[str]], int] = importlib.import_module(module_name).main
    except ModuleNotFoundError as exc:
        print(
            f"lungwatch {name}: cannot import {exc.name} ({module_name}); "
            "install the matching extra or run from a source checkout",
            file=sys.stderr,
        )
        return 2
    return _run(name, entry, rest)


def _run(name: str, entry: Callable[[list[str]], int], rest: list[str]) -> int:
    from lungwatch.errors import LungwatchError

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
