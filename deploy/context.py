"""The state of one deploy (:class:`Context`) and the shape of a step (:class:`Step`).

A step has a name, a one-line summary, ``commands`` (printable lines, what ``DRY_RUN=1``
shows) and ``run``, which does the work and records what it found in the context (the
release, the links before the switch, the backend, a note for the report).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.bundle import Bundle
from deploy.errors import TargetError
from deploy.inventory import Device
from deploy.service import Layout, ServiceManager, service_manager
from deploy.target import Target


@dataclass
class Context:
    """One deploy: inputs, and what the steps found out (for later steps and the report)."""

    device: Device
    target: Target
    work_dir: Path
    wheel: Path | None = None
    dry_run: bool = False
    bundle: Bundle | None = None
    release: str = "<release>"
    noop: bool = False  # the release is already current: only the health check runs
    links: dict[str, Any] = field(default_factory=dict)  # current/previous before the switch
    before: str | None = None  # the current release the probe found
    reached: list[str] = field(default_factory=list)  # names of the steps started
    switched: bool = False
    since_utc: float | None = None  # the device's clock just before the restart
    model: tuple[str, str] = ("", "")  # (model file, backend kind) the runtime will use
    notes: dict[str, str] = field(default_factory=dict)  # step -> what the report says

    @property
    def layout(self) -> Layout:
        return Layout(self.device.prefix)

    @property
    def rdir(self) -> str:
        return self.layout.release(self.release)

    @property
    def archive_name(self) -> str:
        return f"lungwatch-{self.release}.tar.gz"

    @property
    def tool(self) -> list[str]:
        """remote.py under the system Python: the delivered copy (current's in a no-op)."""
        where = self.layout.current if self.noop else self.layout.incoming
        return [self.device.inventory.python, "-I", f"{where}/remote.py"]

    @property
    def venv_tool(self) -> list[str]:
        return [f"{self.rdir}/venv/bin/python", "-I", f"{self.rdir}/remote.py"]

    @property
    def manager(self) -> ServiceManager:
        return service_manager(self.device, self.tool)

    def remote_json(self, argv: list[str], timeout_s: float = 600.0) -> dict[str, Any]:
        """Run a remote.py action; its JSON line."""
        out = self.target.run(argv, timeout_s=timeout_s).stdout.strip().splitlines()
        try:
            return dict(json.loads(out[-1]))
        except (IndexError, ValueError):
            raise TargetError(f"`{shlex.join(argv)}` printed no JSON result") from None


@dataclass(frozen=True)
class Step:
    name: str
    summary: str
    commands: Callable[[Context], list[str]]  # printable lines: "[local] ..." / "[target] ..."
    run: Callable[[Context], None]


def on_target(*argvs: list[str]) -> list[str]:
    return [f"[target] {shlex.join(argv)}" for argv in argvs]
