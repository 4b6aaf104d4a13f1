"""Wearable stethoscope wire protocol, transports and device emulator.

Depends only on numpy (pyserial lazily). Never imports torch.
"""
