"""The workstation's console script ``lungwatch``: the device's commands (:mod:`edge.cli`)
and the training and export ones. Each module is imported only when its subcommand runs."""

from __future__ import annotations

from edge.cli import DEVICE_COMMANDS, WORKSTATION_SCRIPT, Commands, dispatch

WORKSTATION_COMMANDS: Commands = {
    "train": ("training.train", "train a model from a run YAML (workstation, needs torch)"),
    "calibrate": ("training.calibrate", "fit Task 2 record thresholds on the validation split"),
    "report": ("training.report", "every model-card score of a checkpoint (needs the data)"),
    "crossval": ("training.crossval", "patient-grouped cross-validation of a run config"),
    "predict": ("training.predict", "challenge-format predictions from a trained checkpoint"),
    "evaluate": ("training.evaluate", "score challenge predictions against annotations"),
    "export": ("export.to_onnx", "checkpoint -> model.onnx (opset 17, dynamic batch) + manifest"),
    "quantize": ("export.quantize", "model.onnx -> explicit Q/DQ INT8 ONNX, calibrated on audio"),
}
COMMANDS: Commands = {**DEVICE_COMMANDS, **WORKSTATION_COMMANDS}


def main(argv: list[str] | None = None) -> int:
    """``lungwatch``: every command."""
    return dispatch(COMMANDS, argv, WORKSTATION_SCRIPT)


if __name__ == "__main__":
    raise SystemExit(main())
