"""A real OpenSSH server for the deploy tests: ``/usr/sbin/sshd -D -f <tmp config> -p <port>``
on 127.0.0.1, run as the current user, with a temporary host key and an authorized key made
with ssh-keygen (``StrictModes no``, no PAM, key authentication only). :func:`require_ssh`
skips the calling test, with the reason, where sshd, ssh or ssh-keygen is missing.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.brokers import HOST, free_port

SSHD_PATHS = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")  # sshd started as root refuses to run without it
READY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SshServer:
    port: int
    user: str
    key: Path  # the client's private key (authorized on the server)
    known_hosts: Path  # holds the server's host key for [127.0.0.1]:port
    process: subprocess.Popen[bytes]


def require_ssh() -> str:
    """The sshd binary (an absolute path, as sshd requires), or skip with the reason."""
    sshd = next((p for p in SSHD_PATHS if os.access(p, os.X_OK)), None)
    missing = [name for name in ("ssh", "ssh-keygen") if shutil.which(name) is None]
    if sshd is None or missing:
        what = ", ".join((["sshd"] if sshd is None else []) + missing)
        pytest.skip(f"{what} not installed (apt-get install openssh-server openssh-client)")
    if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
        try:
            PRIVSEP_DIR.mkdir(mode=0o755)
        except OSError as exc:
            pytest.skip(f"sshd as root needs {PRIVSEP_DIR}: {exc}")
    return str(sshd)


def _keygen(path: Path) -> None:
    cmd = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lungwatch-test", "-f", str(path)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


def _config(directory: Path, port: int) -> str:
    lines = [
        f"Port {port}",
        f"ListenAddress {HOST}",
        f"HostKey {directory / 'host_key'}",
        f"AuthorizedKeysFile {directory / 'authorized_keys'}",
        f"PidFile {directory / 'sshd.pid'}",
        "StrictModes no",
        "UsePAM no",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "Subsystem sftp internal-sftp",
        "LogLevel ERROR",
    ]
    return "\n".join(lines) + "\n"


def start_sshd(directory: Path) -> SshServer:
    """Keys, config and the server; returns once a client logs in."""
    sshd = require_ssh()
    directory.mkdir(parents=True, exist_ok=True)
    _keygen(directory / "host_key")
    _keygen(directory / "client_key")
    shutil.copy(directory / "client_key.pub", directory / "authorized_keys")
    port = free_port()
    host_key = (directory / "host_key.pub").read_text().split()
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(f"[{HOST}]:{port} {host_key[0]} {host_key[1]}\n")
    config = directory / "sshd_config"
    config.write_text(_config(directory, port))
    with open(directory / "sshd.log", "ab") as log:
        process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config), "-p", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    server = SshServer(port, getpass.getuser(), directory / "client_key", known_hosts, process)
    _wait_login(server, directory / "sshd.log")
    return server


def ssh_argv(server: SshServer, *command: str) -> list[str]:
    return ["ssh", "-p", str(server.port), "-i", str(server.key), "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            f"{server.user}@{HOST}", "--", *command]  # fmt: skip


def _wait_login(server: SshServer, log: Path) -> None:
    import time

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"sshd exited: {log.read_text(errors='replace')[-2000:]}")
        done = subprocess.run(ssh_argv(server, "true"), capture_output=True, timeout=20)
        if done.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"no ssh login on port {server.port} within {READY_TIMEOUT_S} s")


def stop_sshd(server: SshServer) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        server.process.wait(timeout=10)
