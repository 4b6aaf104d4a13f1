"""Threads a process depends on, watched: a :class:`Worker` is the net under a long-lived
loop's own guards. A loop that still ends unasked is logged at CRITICAL and reported by
:meth:`Worker.failure`; its owner then restarts it (:meth:`Worker.restart`, bounded) or stops
the process (:class:`ThreadStoppedError`), so nothing runs on half its threads unseen."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable

from lungwatch.errors import LungwatchError

log = logging.getLogger("lungwatch.supervision")

RESTARTS = 3  # a worker started again at most this often ...
RESTART_WINDOW_S = 600.0  # ... within this time; then its failure is final


def stop_on_signals(
    stop: threading.Event, signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
) -> None:
    """``signums`` (SIGTERM and SIGINT) set ``stop``, through a thread. A Python signal handler
    runs in the main thread between two of its bytecodes: had it set ``stop`` itself while the
    main thread was inside ``stop.wait()`` holding the event's lock, it would wait for that lock
    forever (a SIGTERM that hangs the process). The handler only writes the signal's number to
    a pipe; the thread reads it, logs it and sets ``stop``. Main thread only."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def handler(signum: int, frame: object) -> None:
        with contextlib.suppress(BlockingIOError):  # the pipe full: a stop is on its way
            os.write(write_fd, bytes([signum]))

    def relay() -> None:
        while data := os.read(read_fd, 64):
            for signum in data:
                log.info("signal %s: stopping", signal.Signals(signum).name)
            stop.set()

    threading.Thread(target=relay, name="lungwatch-signals", daemon=True).start()
    for signum in signums:
        signal.signal(signum, handler)


class ThreadStoppedError(LungwatchError):
    """A thread the process depends on stopped; the process stops."""


class Worker:
    """``target`` on a daemon thread; ``stopping()``: its owner asked it to end."""

    def __init__(self, target: Callable[[], None], name: str, stopping: Callable[[], bool]):
        self.target, self.name, self.stopping = target, name, stopping
        self.error: str | None = None
        self.restarts: deque[float] = deque()
        self._thread: threading.Thread | None = None

    def start(self) -> Worker:
        self.error = None
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    @property
    def started(self) -> bool:
        return self._thread is not None

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def failure(self) -> str | None:
        """Why the thread ended unasked (None: it did not)."""
        if self._thread is None or self._thread.is_alive() or self.stopping():
            return None
        return f"thread {self.name} stopped: {self.error or 'its loop returned'}"

    def restart(self, now_s: float | None = None) -> bool:
        """Start again after a failure; False: :data:`RESTARTS` used up, the failure is final."""
        now_s = time.monotonic() if now_s is None else now_s
        while self.restarts and now_s - self.restarts[0] > RESTART_WINDOW_S:
            self.restarts.popleft()
        if len(self.restarts) >= RESTARTS:
            return False
        self.restarts.append(now_s)
        log.warning("starting thread %s again (%d of %d within %g s)", self.name,
                    len(self.restarts), RESTARTS, RESTART_WINDOW_S)  # fmt: skip
        self.start()
        return True

    def _run(self) -> None:
        try:
            self.target()
        except BaseException as exc:  # the net under the loop's own guards: said loudly
            self.error = f"{type(exc).__name__}: {exc}"
            log.critical("thread %s stopped: %s", self.name, self.error, exc_info=True)
            return
        if not self.stopping():
            log.critical("thread %s stopped: its loop returned", self.name)


def first_failure(checks: list[Callable[[], str | None]]) -> str | None:
    for check in checks:
        why = check()
        if why is not None:
            return why
    return None
