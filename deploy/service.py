"""The install layout on the target, the systemd unit, and the two service managers.

``systemd`` (devices): the unit (``deploy/templates/lungwatch.service``) always runs
``PREFIX/current``; installing copies it to ``/etc/systemd/system`` and reloads systemd.
``process`` (tests, machines without systemd): ``remote.py proc-start`` runs the same command
detached with a pid file in ``PREFIX/state``; stop is SIGTERM, a wait, then SIGKILL.

Both are described as argument lists run on the target, so ``DRY_RUN=1`` can print them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from string import Template

from deploy.inventory import Device

TEMPLATE = Path(__file__).resolve().parent / "templates" / "lungwatch.service"
UNIT_FILE = "lungwatch.service"  # the rendered unit's name inside a release
SYSTEMD_DIR = "/etc/systemd/system"


@dataclass(frozen=True)
class Layout:
    """Paths under the inventory's prefix on the target (see ``deploy/remote.py``)."""

    root: str

    def release(self, name: str) -> str:
        return f"{self.root}/releases/{name}"

    @property
    def current(self) -> str:
        return f"{self.root}/current"

    @property
    def state(self) -> str:
        return f"{self.root}/state"

    @property
    def incoming(self) -> str:
        return f"{self.root}/incoming"

    @property
    def pidfile(self) -> str:
        return f"{self.state}/lungwatch.pid"

    @property
    def log(self) -> str:
        return f"{self.state}/lungwatch.log"

    def run_command(self) -> list[str]:
        """The runtime's command line (the unit's ExecStart, the process manager's argv)."""
        current = self.current
        return [
            f"{current}/venv/bin/lungwatch-edge",
            "run",
            "--config",
            f"{current}/runtime.yaml",
            "--verbose",
        ]


def service_environment(layout: Layout) -> dict[str, str]:
    """Environment of the runtime under either manager."""
    return {
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "NUMBA_CACHE_DIR": f"{layout.state}/numba-cache",
    }


def render_unit(device: Device, template: Path = TEMPLATE) -> str:
    """The systemd unit for ``device`` (independent of the release: it runs ``current``)."""
    inv = device.inventory
    layout = Layout(device.prefix)
    environment = "\n".join(f"Environment={k}={v}" for k, v in service_environment(layout).items())
    return Template(template.read_text(encoding="utf-8")).substitute(
        name=inv.service.name,
        device=device.name,
        user=inv.service.user,
        prefix=device.prefix,
        state_dir=layout.state,
        environment=environment,
        stop_timeout_s=f"{inv.service.stop_timeout_s:g}",
    )


class ServiceManager:
    """Commands (argument lists, run on the target) that install, restart, stop, check."""

    def __init__(self, device: Device, tool: list[str]) -> None:
        """``tool``: how to run ``remote.py`` on the target (``[python, -I, path]``)."""
        self.inventory = device.inventory
        self.layout = Layout(device.prefix)
        self.tool = tool

    def install(self) -> list[list[str]]:
        return []

    def restart(self) -> list[list[str]]:
        raise NotImplementedError

    def stop(self) -> list[list[str]]:
        raise NotImplementedError

    def status(self) -> list[str]:
        raise NotImplementedError


class SystemdManager(ServiceManager):
    def _systemctl(self, *args: str) -> list[str]:
        sudo = ["sudo", "-n"] if self.inventory.service.sudo else []
        return [*sudo, "systemctl", *args]

    @property
    def unit(self) -> str:
        return f"{self.inventory.service.name}.service"

    def install(self) -> list[list[str]]:
        sudo = ["sudo", "-n"] if self.inventory.service.sudo else []
        source = f"{self.layout.current}/{UNIT_FILE}"
        return [
            [*sudo, "install", "-m", "0644", source, f"{SYSTEMD_DIR}/{self.unit}"],
            self._systemctl("daemon-reload"),
            self._systemctl("enable", self.unit),
        ]

    def restart(self) -> list[list[str]]:
        return [self._systemctl("restart", self.unit)]

    def stop(self) -> list[list[str]]:
        return [self._systemctl("stop", self.unit)]

    def status(self) -> list[str]:
        return ["systemctl", "is-active", "--quiet", self.unit]


class ProcessManager(ServiceManager):
    def restart(self) -> list[list[str]]:
        layout = self.layout
        start = [
            *self.tool,
            "proc-start",
            "--pidfile",
            layout.pidfile,
            "--log",
            layout.log,
            "--cwd",
            layout.state,
        ]
        for key, value in service_environment(layout).items():
            start += ["--env", f"{key}={value}"]
        return [*self.stop(), [*start, "--", *layout.run_command()]]

    def stop(self) -> list[list[str]]:
        timeout = f"{self.inventory.service.stop_timeout_s:g}"
        return [[*self.tool, "proc-stop", "--pidfile", self.layout.pidfile, "--timeout-s", timeout]]

    def status(self) -> list[str]:
        return [*self.tool, "proc-status", "--pidfile", self.layout.pidfile]


def service_manager(device: Device, tool: list[str]) -> ServiceManager:
    if device.inventory.service.manager == "systemd":
        return SystemdManager(device, tool)
    return ProcessManager(device, tool)
