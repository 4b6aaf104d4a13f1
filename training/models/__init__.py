"""The frame-level streaming network (:mod:`training.models.sed`); it exports to standard ONNX
(opset 17, static shapes except the batch) with its context as explicit state."""
