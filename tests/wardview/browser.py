"""Test helpers for the ward dashboard: a real headless Chromium driven by Selenium, the
dashboard as a ``lungwatch dashboard`` subprocess, and users with hashed passwords.

Chromium is Debian's (``/usr/bin/chromium``) and the driver Debian's ``/usr/bin/chromedriver``,
named explicitly in a Selenium ``Service`` so Selenium Manager never looks for (or downloads)
anything; ``SE_OFFLINE`` keeps it offline should it run at all. :func:`require_chromium` skips
a test, with the reason, where the packages are missing (``make test`` installs them).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lungwatch.passwords import hash_password

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
TEST_ITERATIONS = 100_000  # the minimum the config accepts: keeps the tests quick
# The first snapshot painted (not only applied): until a frame has drawn them, the cards'
# ``content-visibility: auto`` skips their content and ``innerText`` reads "" there.
SNAPSHOT_SHOWN = "return window.lwReadyMs !== null"


def require_chromium() -> None:
    """Skip the calling test, with the reason, without Chromium, its driver or Selenium."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} missing: apt-get install chromium chromium-driver "
            "(make test installs them)"
        )
    pytest.importorskip("selenium", reason="selenium is not installed (the dev extra)")


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium session (closed, with its processes, on exit)."""
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the tests may run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def authorise(driver: Any, user: str, password: str) -> None:
    """Send HTTP Basic credentials with every request of this session (page, SSE, fetch), as
    the browser does after a person typed them into its login prompt."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )


def user_entry(name: str, role: str, password: str) -> dict[str, str]:
    """A ``dashboard.users`` entry with a salted hash of ``password``."""
    return {"name": name, "role": role, "password_hash": hash_password(password, TEST_ITERATIONS)}


def wait_until(
    condition: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something true; AssertionError naming ``what``."""
    deadline_s = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline_s:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


class DashboardProcess:
    """``lungwatch dashboard --config FILE --port 0`` in a subprocess; :attr:`url` from its
    first stdout line."""

    def __init__(self, config: Path, *args: str) -> None:
        self.command = [
            sys.executable, "-m", "lungwatch.cli", "dashboard", "--config", str(config),
            "--port", "0", "-v", *args,
        ]  # fmt: skip
        self.log = config.with_suffix(".dashboard.log")
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> DashboardProcess:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=REPO_ROOT
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith(("dashboard: http://", "dashboard: https://")):
            self.stop()
            raise RuntimeError(f"dashboard did not start: {line!r} {self.log.read_text()[-2000:]}")
        self.url = line.split()[1]
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def __enter__(self) -> DashboardProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def chromium_available() -> bool:
    return all(os.access(p, os.X_OK) for p in (CHROMIUM, CHROMEDRIVER)) and bool(
        shutil.which("python3")
    )
