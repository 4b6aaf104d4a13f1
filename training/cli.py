"""The workstation's console script ``lungwatch``: the device's commands (:mod:`edge.cli`)
and the training and export ones. Each module is imported only when its subcommand runs."""

from __future__ import annotations

from edge.cli import DEVICE_COMMANDS, WORKSTATION_SCRIPT, Commands, dispatch

WORKSTATION_COMMANDS: Commands = {
    "train": ("training.recipe.train", "train the detector from a run YAML (needs torch)"),
    "export": ("export.to_onnx", "checkpoint -> model folder: streaming model.onnx + manifest"),
    "quantize": ("export.quantize", "model.onnx -> explicit Q/DQ INT8 ONNX, calibrated on audio"),
    "tasks": ("training.scoring.tasks", "fit the challenge Task rules into a model's manifest"),
    "predict": ("training.scoring.predict", "challenge-format predictions from a model"),
    "evaluate": ("training.scoring.evaluate", "score challenge predictions against annotations"),
}
COMMANDS: Commands = {**DEVICE_COMMANDS, **WORKSTATION_COMMANDS}


def main(argv: list[str] | None = None) -> int:
    """``lungwatch``: every command."""
    return dispatch(COMMANDS, argv, WORKSTATION_SCRIPT)


if __name__ == "__main__":
    raise SystemExit(main())
