"""Checkpoint to ONNX, explicit INT8 (Q/DQ), TensorRT engine and parity verification: one module
per step, each with ``main(argv)``."""
