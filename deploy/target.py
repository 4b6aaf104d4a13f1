"""Where deploy commands run: this machine (``transport: local``) or a device over SSH.

A command is always an argument list. Locally it runs as is; over SSH it is joined with
:func:`shlex.join` into the one string ssh hands to the remote shell, so every argument
arrives unchanged (no value is ever pasted into shell code). Copies use rsync when both ends
have it, else ``ssh ... cat`` (one file at a time, written to ``.tmp`` then renamed).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import TargetError
from deploy.inventory import Device

DEFAULT_TIMEOUT_S = 600.0
SSH_FAILED = 255  # ssh's own exit status (connection, authentication)
CONTROL_PERSIST_S = 120  # the shared connection outlives a pause between steps
_CAT_TO_FILE = 'cat > "$1.tmp" && mv -f "$1.tmp" "$1"'


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def last_line(self) -> str:
        """The last non-empty line of stderr (else stdout), for one-line messages."""
        for text in (self.stderr, self.stdout):
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            if lines:
                return lines[-1]
        return "no output"


class Target:
    """Runs argument lists on the device and copies files to it."""

    description = "target"

    def wrap(self, argv: list[str]) -> list[str]:
        """The local command line that runs ``argv`` on the target."""
        return list(argv)

    def run(
        self, argv: list[str], *, timeout_s: float = DEFAULT_TIMEOUT_S, check: bool = True
    ) -> Result:
        """Run ``argv`` on the target; :class:`TargetError` when ``check`` and it fails."""
        shown = shlex.join(argv)
        try:
            done = subprocess.run(
                self.wrap(argv), capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            raise TargetError(f"`{shown}` timed out after {timeout_s:g} s") from None
        except OSError as exc:
            raise TargetError(f"`{shown}` could not start: {exc.strerror or exc}") from None
        result = Result(tuple(argv), done.returncode, done.stdout, done.stderr)
        if check and done.returncode != 0:
            raise TargetError(f"`{shown}` exited {done.returncode}: {result.last_line()}")
        return result

    def copy(self, files: list[Path], dest_dir: str) -> str:
        """Copy ``files`` into the folder ``dest_dir`` (which exists); the method used."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (idempotent)."""


class LocalTarget(Target):
    """``transport: local``: the device is this machine."""

    description = "this machine (transport: local)"

    def copy(self, files: list[Path], dest_dir: str) -> str:
        for path in files:
            shutil.copy2(path, Path(dest_dir) / path.name)
        return "local copy"


class SshTarget(Target):
    """``transport: ssh``: every command through ``ssh -p PORT [-i KEY] USER@HOST``, over one
    multiplexed connection (ControlMaster) that :meth:`close` ends."""

    def __init__(self, device: Device) -> None:
        target = device.inventory.target
        self.host, self.user, self.port = target.host, target.user, target.port
        self.copy_mode = target.copy
        self._control_dir: str | None = None  # made on first use (a dry run makes none)
        self.base_options = ["-p", str(target.port), "-o", "BatchMode=yes"]
        self.base_options += ["-o", f"ConnectTimeout={target.connect_timeout_s}"]
        self.base_options += ["-o", f"StrictHostKeyChecking={target.host_key_checking}"]
        if target.key is not None:
            key = str(device.path_of(target.key))
            self.base_options += ["-i", key, "-o", "IdentitiesOnly=yes"]
        if target.known_hosts is not None:
            known = device.path_of(target.known_hosts)
            self.base_options += ["-o", f"UserKnownHostsFile={known}"]
        self.description = f"{self.user}@{self.host}:{self.port} over ssh"

    @property
    def options(self) -> list[str]:
        """ssh options: the inventory's, plus the shared connection's control socket."""
        if self._control_dir is None:
            self._control_dir = tempfile.mkdtemp(prefix="lw-ssh-")
        control = ["-o", "ControlMaster=auto", "-o", f"ControlPath={self._control_dir}/%C"]
        return [*self.base_options, *control, "-o", f"ControlPersist={CONTROL_PERSIST_S}"]

    def close(self) -> None:
        if self._control_dir is None:
            return
        exit_master = ["ssh", *self.options, "-O", "exit", self.login]
        subprocess.run(exit_master, capture_output=True, timeout=30, check=False)
        shutil.rmtree(self._control_dir, ignore_errors=True)
        self._control_dir = None

    @property
    def login(self) -> str:
        return f"{self.user}@{self.host}"

    def wrap(self, argv: list[str]) -> list[str]:
        return ["ssh", *self.options, self.login, "--", shlex.join(argv)]

    def run(
        self, argv: list[str], *, timeout_s: float = DEFAULT_TIMEOUT_S, check: bool = True
    ) -> Result:
        result = super().run(argv, timeout_s=timeout_s, check=False)
        if result.returncode == SSH_FAILED:
            raise TargetError(f"ssh {self.description}: {result.last_line()}")
        if check and result.returncode != 0:
            raise TargetError(
                f"`{shlex.join(argv)}` exited {result.returncode}: {result.last_line()}"
            )
        return result

    def use_rsync(self) -> bool:
        if self.copy_mode != "auto":
            return self.copy_mode == "rsync"
        if shutil.which("rsync") is None:
            return False
        return self.run(["sh", "-c", "command -v rsync"], check=False).returncode == 0

    def copy(self, files: list[Path], dest_dir: str) -> str:
        if self.use_rsync():
            remote_shell = shlex.join(["ssh", *self.options])
            argv = ["rsync", "-t", "--partial", "-e", remote_shell, *map(str, files)]
            _run_local([*argv, f"{self.login}:{dest_dir}/"], "rsync")
            return "rsync"
        for path in files:
            remote = shlex.join(["sh", "-c", _CAT_TO_FILE, "sh", f"{dest_dir}/{path.name}"])
            with open(path, "rb") as handle:
                _run_local(["ssh", *self.options, self.login, "--", remote], "ssh cat", handle)
        return "ssh cat"


def _run_local(argv: list[str], what: str, stdin: object = None) -> None:
    try:
        done = subprocess.run(
            argv, stdin=stdin, capture_output=True, timeout=DEFAULT_TIMEOUT_S, check=False
        )  # type: ignore[call-overload]
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TargetError(f"{what} failed: {exc}") from None
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        raise TargetError(f"{what} exited {done.returncode}: {err[-1] if err else 'no output'}")


def open_target(device: Device) -> Target:
    """The transport the inventory names."""
    if device.inventory.target.transport == "local":
        return LocalTarget()
    return SshTarget(device)
