"""Fixtures of the deploy tests: a real Mosquitto, the lungwatch wheel (built once) and a
short looping WAV; :func:`stop_services` stops what a test deployed (the ``process`` service
manager's pid files) and removes the device folders."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from deploy.bundle import build_wheel
from tests.brokers import Mosquitto, Recorder

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models" / "sed"
RATE_HZ = 8000
LOOP_S = 2.0
SITE = "test-ward"


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lungwatch wheel, built once (`pip wheel --no-deps` of a copy of the checkout)."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def loop_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s at 8 kHz: a 200 Hz tone in light noise (looped by the runtime)."""
    path = tmp_path_factory.mktemp("audio") / "loop.wav"
    t = np.arange(int(RATE_HZ * LOOP_S)) / RATE_HZ
    noise = np.random.default_rng(0).normal(0.0, 0.01, t.size)
    sf.write(path, (0.1 * np.sin(2 * np.pi * 200 * t) + noise).astype(np.float32), RATE_HZ)
    return path


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path_factory.mktemp("broker")) as mosquitto:
        yield mosquitto


def stop_services(prefixes: list[Path]) -> None:
    """Stop the service of every prefix (process manager pid files), remove the prefixes."""
    for prefix in prefixes:
        pidfile = prefix / "state" / "lungwatch.pid"
        if pidfile.is_file():
            remote = REPO / "deploy" / "remote.py"
            cmd = [sys.executable, "-I", str(remote), "proc-stop", "--pidfile", str(pidfile)]
            subprocess.run(cmd, capture_output=True, timeout=60, check=False)
        shutil.rmtree(prefix, ignore_errors=True)


@pytest.fixture
def recorder(broker: Mosquitto) -> Iterator[Recorder]:
    with Recorder(broker.port, topic="lungwatch/+/+/+/status") as rec:
        yield rec
