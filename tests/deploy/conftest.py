"""Fixtures of the deploy tests: a real Mosquitto, a real sshd, the lungwatch wheel (built
once), a short looping WAV, and inventories that deploy into temporary prefixes with the
``process`` service manager. The release venv is made with ``--system-site-packages
--without-pip`` and the test environment's site-packages appended (inventory
``extra_site_dirs``), so ``pip install --no-deps`` takes about a second."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml

from deploy.bundle import build_wheel
from tests.deploy.sshd import SshServer, start_sshd, stop_sshd
from tests.edge.brokers import Mosquitto, Recorder

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models" / "sed"
RATE_HZ = 8000
LOOP_S = 2.0
SITE = "test-ward"


@dataclass
class Env:
    """One test's devices folder, broker and the prefixes it deployed into."""

    root: Path
    broker: Mosquitto
    wav: Path
    wheel: Path
    prefixes: list[Path] = field(default_factory=list)

    @property
    def devices(self) -> Path:
        return self.root / "devices"

    def write_device(
        self,
        name: str,
        *,
        variant: int = 0,
        device: str | None = None,
        settings: dict[str, Any] | None = None,
        **changes: Any,
    ) -> Path:
        """An inventory ``name`` and its runtime config. ``device``: the device (prefix,
        status topic) it deploys to (default: ``name``); ``settings`` and ``changes``: dotted
        keys -> values."""
        changes = {**(settings or {}), **changes}
        device = device or name
        config = self.root / f"{name}-runtime-{variant}.yaml"
        write_runtime_config(config, self, device, variant)
        prefix = self.prefix(device)
        if prefix not in self.prefixes:
            self.prefixes.append(prefix)
        data: dict[str, Any] = {
            "target": {"transport": "local"},
            "prefix": str(prefix),
            "python": sys.executable,
            "models": str(MODELS),
            "runtime_config": str(config),
            "install": {"deps": "none", "system_site_packages": True, "with_pip": False,
                        "extra_site_dirs": site.getsitepackages()},
            "broker": {"host": "127.0.0.1", "port": self.broker.port, "timeout_s": 20},
            "service": {"manager": "process", "stop_timeout_s": 10},
        }  # fmt: skip
        for dotted, value in changes.items():
            node = data
            *parents, last = dotted.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        self.devices.mkdir(exist_ok=True)
        path = self.devices / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    def prefix(self, device: str) -> Path:
        return self.root / f"{device}-prefix"

    def work(self, name: str) -> Path:
        return self.root / f"{name}-work"

    def deploy_args(self, name: str, *extra: str) -> list[str]:
        work = self.work(name)
        return ["--device", name, "--devices-dir", str(self.devices), "--work-dir", str(work),
                "--wheel", str(self.wheel), *extra]  # fmt: skip

    def status_topic(self, name: str) -> str:
        return f"lungwatch/v1/{SITE}/{name}/status"


def write_runtime_config(path: Path, env: Env, device_id: str, variant: int) -> Path:
    """One bed looping the WAV in real time; events to the test broker (spool in state/)."""
    text = f"""# deploy test runtime, variant {variant}
site: {SITE}
device_id: {device_id}
streams:
  - id: bed-1
    source: {env.wav}
    realtime: true
    loop: true
sinks: {{stdout: false, mqtt: true}}
mqtt: {{host: 127.0.0.1, port: {env.broker.port}, spool_path: spool/events.sqlite}}
metrics_interval_s: 5
"""
    path.write_text(text, encoding="utf-8")
    return path


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


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    stop_sshd(server)


def stop_services(environment: Env) -> None:
    """Stop every service an Env deployed (process manager pid files), remove the prefixes."""
    for prefix in environment.prefixes:
        pidfile = prefix / "state" / "lungwatch.pid"
        if pidfile.is_file():
            remote = REPO / "deploy" / "remote.py"
            cmd = [sys.executable, "-I", str(remote), "proc-stop", "--pidfile", str(pidfile)]
            subprocess.run(cmd, capture_output=True, timeout=60, check=False)
        shutil.rmtree(prefix, ignore_errors=True)


@pytest.fixture
def env(tmp_path: Path, broker: Mosquitto, loop_wav: Path, wheel: Path) -> Iterator[Env]:
    """A fresh devices folder; its services are stopped at the end of the test."""
    environment = Env(tmp_path, broker, loop_wav, wheel)
    yield environment
    stop_services(environment)


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory, broker: Mosquitto, loop_wav: Path, wheel: Path
) -> Iterator[Env]:
    """Device ``dev-run`` deployed once and running, shared by the failure tests (each one
    checks that a failed deploy leaves it current and running)."""
    from tests.deploy.helpers import run_cli

    environment = Env(tmp_path_factory.mktemp("running"), broker, loop_wav, wheel)
    environment.write_device("dev-run")
    code, out, err = run_cli(environment.deploy_args("dev-run"))
    assert code == 0, f"{out}\n{err}"
    yield environment
    stop_services(environment)


@pytest.fixture
def recorder(broker: Mosquitto) -> Iterator[Recorder]:
    with Recorder(broker.port, topic="lungwatch/+/+/+/status") as rec:
        yield rec
