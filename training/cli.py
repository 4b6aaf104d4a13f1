"""The workstation's console script ``lungwatch``: the device's commands (:mod:`edge.cli`)
and the training and export ones. Each module is imported only when its subcommand runs."""

from __future__ import annotations

from edge.cli import DEVICE_COMMANDS, WORKSTATION_SCRIPT, Commands, dispatch

WORKSTATION_COMMANDS: Commands = {
    "train": ("training.train", "train a model from a run YAML (workstation, needs torch)"),
    "predict": ("training.predict", "challenge-format predictions from a trained model"),
    "evaluate": ("training.evaluate", "score challenge predictions against annotations"),
    "export": ("export.streaming_model", "checkpoint -> streaming model.onnx + manifest"),
    "quantize": (
        "export.quantize_streaming",
        "model.onnx -> explicit Q/DQ INT8 ONNX, calibrated on audio",
    ),
}
COMMANDS: Commands = {**DEVICE_COMMANDS, **WORKSTATION_COMMANDS}


def main(argv: list[str] | None = None) -> int:
    """``lungwatch``: every command."""
    return dispatch(COMMANDS, argv, WORKSTATION_SCRIPT)


if __name__ == "__main__":
    raise SystemExit(main())
