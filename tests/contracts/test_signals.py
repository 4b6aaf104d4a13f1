"""A stop signal reaches a process whose main thread waits on its stop event: the handler
must not set the event itself (it runs between two of the main thread's bytecodes, and inside
``Event.wait()`` the main thread holds the event's lock: a SIGTERM that hangs or crashes the
process; a Python handler that set it directly crashed this test's child after some hundred
signals, and once hung ``lungwatch demo`` in CI)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

ROUNDS = 300
CHILD = f"""
import signal
import sys
import threading
from lungwatch.supervision import stop_on_signals
sys.setswitchinterval(0.0002)  # the relay thread runs soon beside the busy main thread
stop = threading.Event()
stop_on_signals(stop)
print("ready", flush=True)
for _ in range({ROUNDS}):  # each signal ends one wait; the main thread waits again at once
    while not stop.wait(0):  # busy: it holds the lock much of the time
        pass
    stop.clear()
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the signals still on their way, while it exits
print("done", flush=True)
"""


def test_signals_stop_a_main_thread_that_waits_on_its_stop_event() -> None:
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen([sys.executable, "-c", CHILD], cwd=root, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30.0
        sent = 0
        while child.poll() is None and time.monotonic() < deadline:
            child.send_signal(signal.SIGTERM)
            sent += 1
            time.sleep(0.001)
        out, err = child.communicate(timeout=10)
    finally:
        child.kill()
    assert child.returncode == 0, (sent, err[-2000:])
    assert out.strip() == "done"
    assert sent >= ROUNDS
