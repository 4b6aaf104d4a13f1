"""firmware_bridge runs without numba (it falls back to the NumPy scanner); without pyserial
it says what to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from firmware_bridge.errors import TransportError
from firmware_bridge.transport import PYSERIAL_HINT, import_pyserial

ROOT = Path(__file__).parents[2]
WITHOUT_NUMBA = """
import sys
sys.modules["numba"] = None  # importing numba now raises ImportError
from firmware_bridge.parser import FrameParser
from firmware_bridge.protocol import audio_frame, encode_frame
import numpy as np
frame = audio_frame(1, 0, 0, 0, 8000, np.arange(100, dtype=np.int16))
parser = FrameParser(allow_v1=True)
assert parser.scanner == "numpy"
assert parser.push(b"junk" + encode_frame(frame)) == [frame]
assert "numba" not in {m.split(".")[0] for m, v in sys.modules.items() if v is not None}
print("ok")
"""


def test_works_without_numba() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_NUMBA], cwd=ROOT, capture_output=True, text=True
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_firmware_bridge_never_imports_edge() -> None:
    code = "import sys, firmware_bridge.cli, firmware_bridge.emulator; " \
           "print(any(m == 'edge' or m.startswith('edge.') for m in sys.modules))"  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def test_missing_pyserial_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "serial", None)
    with pytest.raises(TransportError, match="pip install pyserial"):
        import_pyserial()
    assert "lungwatch[serial]" in PYSERIAL_HINT
