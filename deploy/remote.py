"""The device side of ``make deploy``: the commands the Ansible playbook runs on a device as

    python3 -I PREFIX/incoming/remote.py unpack ...                 (before the release exists)
    PREFIX/releases/R/venv/bin/python -I PREFIX/releases/R/remote.py engine|configure|gate ...

Standard library only for ``unpack``, ``site-dirs`` and ``proc-*`` (they run before the
release's venv exists or without it). Each action prints one JSON line on success; on failure
one line on stderr, exit 1 (``proc-status``: exit 3 when the service is not running).
``proc-*`` keep the runtime running where systemd does not (the loopback tests). The roles
and the layout under PREFIX: docs/deploy.md, "A rollout".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

BUNDLE_MANIFEST = "bundle.json"
ENGINE_FILE = "model.plan"  # the engine lungwatch engine builds on the device
ENGINE_TIMEOUT_S = 3600.0  # an INT8 build on a Jetson takes minutes
VERIFY_TIMEOUT_S = 1800.0  # every model on the reference's recordings
REFERENCE_FILE = "verify_reference.npz"
PASSED = "within tolerance"
PTH_NAME = "lungwatch-extra-sites.pth"
STARTUP_CHECK_S = 0.5  # proc-start: a runtime that dies this fast is reported
NOT_RUNNING = 3


class RemoteError(Exception):
    """One line for the deploy report."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_archive(archive: Path) -> None:
    expected = (archive.parent / f"{archive.name}.sha256").read_text().split()[0]
    actual = sha256_file(archive)
    if actual != expected:
        raise RemoteError(
            f"{archive.name}: sha256 {actual[:12]}… differs from its .sha256 "
            f"({expected[:12]}…); the copy is damaged"
        )


def safe_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for member in members:
        parts = Path(member.name).parts
        if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
            raise RemoteError(f"archive member {member.name!r} is not a plain relative path")
    return members


def check_files(folder: Path) -> int:
    listed = json.loads((folder / BUNDLE_MANIFEST).read_text())["files"]
    for name, sha256 in sorted(listed.items()):
        path = folder / name
        if not path.is_file():
            raise RemoteError(f"{name}: listed in {BUNDLE_MANIFEST} but missing from the bundle")
        if sha256_file(path) != sha256:
            raise RemoteError(f"{name}: sha256 does not match {BUNDLE_MANIFEST}; bundle refused")
    return len(listed)


def unpack(root: Path, archive: Path, release: str) -> dict[str, object]:
    current = root / "current"
    if current.is_symlink() and Path(os.readlink(current)).name == release:
        raise RemoteError(f"release {release} is current; it is not unpacked again")
    check_archive(archive)
    releases = root / "releases"
    partial, dest = releases / f"{release}.partial", releases / release
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(partial, members=safe_members(tar))  # members checked above
    count = check_files(partial)
    old = releases / f"{release}.old"
    if dest.exists():
        os.replace(dest, old)
    os.replace(partial, dest)
    shutil.rmtree(old, ignore_errors=True)
    return {"release": release, "files": count}


def site_dirs(venv: Path, dirs: list[str]) -> dict[str, object]:
    """Append ``dirs`` to the venv's import path with a .pth file (inventory extra_site_dirs)."""
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    argv = [str(venv / "bin" / "python"), "-c", code]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
    pth = Path(out.stdout.strip()) / PTH_NAME
    pth.write_text("".join(f"{d}\n" for d in dirs))
    return {"pth": str(pth), "dirs": dirs}


def proc_identity(pid: int) -> str | None:
    """The process's start time (from /proc), or None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def running_pid(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` if that very process (same start time) is still alive."""
    try:
        pid_text, started = pidfile.read_text().split()
    except (OSError, ValueError):
        return None
    pid = int(pid_text)
    return pid if proc_identity(pid) == started else None


def proc_start(
    pidfile: Path, log: Path, cwd: Path, command: list[str], env: list[str]
) -> dict[str, object]:
    """Start ``command`` (argparse's remainder: a leading ``--`` is dropped) detached."""
    argv = command[1:] if command[:1] == ["--"] else command
    if not argv:
        raise RemoteError("proc-start: no command given after --")
    pid = running_pid(pidfile)
    if pid is not None:
        raise RemoteError(f"already running (pid {pid}, {pidfile}); stop it first")
    cwd.mkdir(mode=0o700, parents=True, exist_ok=True)
    inherited = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    environment = {**inherited, **dict(item.split("=", 1) for item in env)}
    # the log and everything the runtime writes (spools of patient events and audio) are the
    # service user's alone: 0600 files under umask 077, whatever the caller's umask was
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "ab") as out:
        child = subprocess.Popen(
            argv,
            cwd=cwd,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            umask=0o077,
        )
    started = proc_identity(child.pid)
    fd = os.open(pidfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out_pid:
        out_pid.write(f"{child.pid} {started}\n")
    time.sleep(STARTUP_CHECK_S)
    if child.poll() is not None:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise RemoteError(f"{argv[0]} exited {child.returncode} at start: {tail[0]}")
    return {"pid": child.pid}


def proc_stop(pidfile: Path, timeout_s: float) -> dict[str, object]:
    pid = running_pid(pidfile)
    killed = False
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while running_pid(pidfile) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if running_pid(pidfile) is not None:
            os.kill(pid, signal.SIGKILL)
            killed = True
    pidfile.unlink(missing_ok=True)
    return {"stopped": pid, "killed": killed}


def proc_status(pidfile: Path) -> dict[str, object]:
    pid = running_pid(pidfile)
    if pid is None:
        print(f"not running ({pidfile})", file=sys.stderr)
        raise SystemExit(NOT_RUNNING)
    return {"pid": pid}


def configure(release: Path, model_file: str, backend: str) -> dict[str, object]:
    """runtime.yaml from config/runtime.yaml, validated by the runtime's own loader."""
    import yaml

    from edge.runtime.config import load_runtime_config
    from lungwatch.config import load_yaml
    from lungwatch.errors import LungwatchError

    source = release / "config" / "runtime.yaml"
    out = release / "runtime.yaml"
    try:
        data = load_yaml(source)
        data["model"] = {**(data.get("model") or {}), "dir": str(release / "models")}
        data["model"]["file"] = model_file
        data["backend"] = {**(data.get("backend") or {}), "kind": backend}
        header = f"# written by deploy from {source.name}: edit that file, not this one\n"
        out.write_text(header + yaml.safe_dump(data, sort_keys=False))
        state = release.parent.parent / "state"  # the service's working folder: its paths
        state.mkdir(parents=True, exist_ok=True)  # (secrets/, spool/) resolve from there
        here = Path.cwd()
        os.chdir(state)
        try:
            load_runtime_config(out)
        finally:
            os.chdir(here)
    except (LungwatchError, TypeError) as exc:
        raise RemoteError(f"runtime config: {exc}") from None
    return {"runtime_config": str(out), "model": model_file, "backend": backend}


def check_models(models: Path) -> dict[str, object]:
    """Every artifact the manifest lists has its sha256 (no reference outputs to compare)."""
    from edge.inference.manifest import load_manifest, verify_file
    from lungwatch.errors import LungwatchError

    try:
        manifest = load_manifest(models / "manifest.json")
        checked = [verify_file(manifest, models / name).name for name in sorted(manifest.files)]
    except LungwatchError as exc:
        raise RemoteError(str(exc)) from None
    return {"checked": checked}


def _tool(release: Path) -> str:
    return str(release / "venv" / "bin" / "lungwatch-edge")


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def engine(
    release: Path,
    onnx_model: str,
    precision: str,
    mode: str,
    timing_cache: Path,
    tensorrt: str | None,
) -> dict[str, object]:
    """Build the engine of ``onnx_model`` here; the service runs it on TensorRT, or
    ``onnx_model`` on ONNX Runtime with ``mode`` off or auto without TensorRT (note: why)."""
    from export.engine import NO_TENSORRT

    if mode == "off":
        return {"model_file": onnx_model, "backend": "onnxruntime",
                "note": f"engine off in the inventory: ONNX Runtime runs {onnx_model}"}  # fmt: skip
    models = release / "models"
    argv = [_tool(release), "engine", str(models / onnx_model), "--precision", precision,
            "--out", str(models / ENGINE_FILE), "--timing-cache", str(timing_cache)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=ENGINE_TIMEOUT_S)
    if done.returncode == 0:
        note = _last_line(done.stdout)
        if tensorrt and f"TensorRT {tensorrt}" not in note:
            note += f" (the inventory expects TensorRT {tensorrt})"
        return {"model_file": ENGINE_FILE, "backend": "tensorrt", "note": note}
    if NO_TENSORRT in done.stderr and mode == "auto":
        note = f"TensorRT is absent on this device: ONNX Runtime runs {onnx_model}"
        return {"model_file": onnx_model, "backend": "onnxruntime", "note": note}
    raise RemoteError(f"lungwatch engine exited {done.returncode}: {_last_line(done.stderr)}")


def verify_rows(stdout: str) -> list[tuple[str, str]]:
    rows = [line for line in stdout.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    return [(c[0], c[-1]) for c in cells if c[0] != "stage" and len(c) >= 2]


def gate(release: Path, model_file: str) -> dict[str, object]:
    """``lungwatch verify --reference`` must pass ``model_file`` (the engine or the ONNX
    fallback); without a verify reference, every file's manifest sha256 is checked."""
    models = release / "models"
    if not (models / REFERENCE_FILE).is_file():
        checked = check_models(models)["checked"]
        return {"verify": f"manifest sha256 of {checked} (no {REFERENCE_FILE})"}
    argv = [_tool(release), "verify", "--model-dir", str(models), "--reference"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=VERIFY_TIMEOUT_S)
    if done.returncode != 0:  # its last line names each failed artifact and why
        raise RemoteError(
            f"lungwatch verify --reference exited {done.returncode}: "
            f"{_last_line(done.stderr or done.stdout)}"
        )
    rows = verify_rows(done.stdout)
    passed = [stage for stage, verdict in rows if verdict == PASSED]
    # the model the service will run must be one that passed (stage: "BACKEND FILE (P)")
    if model_file not in [stage.split()[1] for stage in passed if len(stage.split()) > 1]:
        raise RemoteError(
            f"lungwatch verify --reference did not pass {model_file}, the model the service "
            f"would run: {'; '.join(' '.join(r) for r in rows) or 'no table'}"
        )
    return {"verify": f"{', '.join(passed)} {PASSED} of {REFERENCE_FILE}"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="remote.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("unpack", help="check the archive, extract into releases/RELEASE")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--archive", type=Path, required=True)
    p.add_argument("--release", required=True)
    p = sub.add_parser("site-dirs", help="append folders to a venv's import path")
    p.add_argument("--venv", type=Path, required=True)
    p.add_argument("dirs", nargs="+")
    p = sub.add_parser("proc-start", help="start COMMAND detached with a pid file")
    p.add_argument("--pidfile", type=Path, required=True)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--cwd", type=Path, required=True)
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p = sub.add_parser("proc-stop", help="SIGTERM, wait, SIGKILL")
    p.add_argument("--pidfile", type=Path, required=True)
    p.add_argument("--timeout-s", type=float, default=20.0)
    p = sub.add_parser("proc-status", help="exit 0 if running, 3 if not")
    p.add_argument("--pidfile", type=Path, required=True)
    p = sub.add_parser("configure", help="write runtime.yaml (run with the release's venv)")
    p.add_argument("--release", type=Path, required=True)
    p.add_argument("--model-file", required=True)
    p.add_argument("--backend", choices=("onnxruntime", "tensorrt"), required=True)
    p = sub.add_parser("check-models", help="manifest sha256 of every model file")
    p.add_argument("--models", type=Path, required=True)
    p = sub.add_parser("engine", help="build the engine here; say what the service runs")
    p.add_argument("--release", type=Path, required=True)
    p.add_argument("--onnx-model", required=True)
    p.add_argument("--precision", choices=("int8", "fp16", "best"), default="int8")
    p.add_argument("--mode", choices=("auto", "required", "off"), default="auto")
    p.add_argument("--timing-cache", type=Path, required=True)
    p.add_argument("--tensorrt", default=None, help="the TensorRT version expected")
    p = sub.add_parser("gate", help="the verify gate on the model the service will run")
    p.add_argument("--release", type=Path, required=True)
    p.add_argument("--model-file", required=True)
    return parser


ACTIONS: dict[str, Callable[[argparse.Namespace], dict[str, object]]] = {
    "unpack": lambda a: unpack(a.root, a.archive, a.release),
    "site-dirs": lambda a: site_dirs(a.venv, a.dirs),
    "proc-start": lambda a: proc_start(a.pidfile, a.log, a.cwd, a.command, a.env),
    "proc-stop": lambda a: proc_stop(a.pidfile, a.timeout_s),
    "proc-status": lambda a: proc_status(a.pidfile),
    "configure": lambda a: configure(a.release, a.model_file, a.backend),
    "check-models": lambda a: check_models(a.models),
    "engine": lambda a: engine(
        a.release, a.onnx_model, a.precision, a.mode, a.timing_cache, a.tensorrt
    ),
    "gate": lambda a: gate(a.release, a.model_file),
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = ACTIONS[args.action](args)
    except (RemoteError, OSError, tarfile.TarError, ValueError, KeyError) as exc:
        print(f"remote.py {args.action}: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"remote.py {args.action}: {exc.cmd[0]} exited {exc.returncode}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired as exc:
        print(f"remote.py {args.action}: {exc.cmd[0]} ran past {exc.timeout:g} s", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
