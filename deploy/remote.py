"""The target side of ``make deploy``: small actions run on the device as

    python3 PREFIX/releases/RELEASE/remote.py ACTION [options]     (incoming/ before unpack)

Standard library only (it runs before the release's venv exists), except ``configure`` and
``check-models``, which run under the release's venv (they use edge's config and manifest
code). Each action prints one JSON line on success; on failure one line on stderr, exit 1
(``proc-status``: exit 3 when the service is not running).

Layout under PREFIX::

    incoming/                 archives being delivered (removed by prune)
    releases/RELEASE/         bundle.json, remote.py, wheels/, models/, config/, lungwatch.service,
                              then venv/ and runtime.yaml made on the device
    current -> releases/R     what the service runs
    previous -> releases/R    what a rollback restores; prune keeps only these two
    state/                    the service's working folder (spool, events, pid file, log)
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
from pathlib import Path

BUNDLE_MANIFEST = "bundle.json"
LINKS = ("current", "previous")
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


def link_release(root: Path, name: str) -> str | None:
    """The release a link (``current`` / ``previous``) points to, or None."""
    link = root / name
    return Path(os.readlink(link)).name if link.is_symlink() else None


def set_link(root: Path, name: str, release: str | None) -> None:
    """Point ``root/name`` at ``releases/release`` atomically (None removes it)."""
    link = root / name
    if release is None:
        if link.is_symlink():
            link.unlink()
        return
    tmp = root / f".{name}.tmp"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(Path("releases") / release)
    os.replace(tmp, link)


# -- unpack ----------------------------------------------------------------------------------
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
    """Every file of ``bundle.json`` is there with its sha256; the number checked."""
    listed = json.loads((folder / BUNDLE_MANIFEST).read_text())["files"]
    for name, sha256 in sorted(listed.items()):
        path = folder / name
        if not path.is_file():
            raise RemoteError(f"{name}: listed in {BUNDLE_MANIFEST} but missing from the bundle")
        if sha256_file(path) != sha256:
            raise RemoteError(f"{name}: sha256 does not match {BUNDLE_MANIFEST}; bundle refused")
    return len(listed)


def unpack(root: Path, archive: Path, release: str) -> dict[str, object]:
    if release == link_release(root, "current"):
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


# -- links -----------------------------------------------------------------------------------
def switch(root: Path, release: str) -> dict[str, object]:
    """current -> release, previous -> the old current; the old links and the device time."""
    if not (root / "releases" / release / "runtime.yaml").is_file():
        raise RemoteError(f"release {release} is not configured (no runtime.yaml)")
    old = {name: link_release(root, name) for name in LINKS}
    now = time.time()
    if old["current"] != release:
        set_link(root, "previous", old["current"])
        set_link(root, "current", release)
    return {**old, "utc": now}


def restore(root: Path, current: str, previous: str) -> dict[str, object]:
    set_link(root, "current", current or None)
    set_link(root, "previous", previous or None)
    return {"current": current or None, "previous": previous or None}


def discard(root: Path, release: str) -> dict[str, object]:
    if release in (link_release(root, name) for name in LINKS):
        raise RemoteError(f"release {release} is linked as current/previous; not removed")
    for suffix in ("", ".partial", ".old"):
        shutil.rmtree(root / "releases" / f"{release}{suffix}", ignore_errors=True)
    return {"discarded": release}


def prune(root: Path) -> dict[str, object]:
    """Remove every release but current and previous, and the delivered archives."""
    keep = {r for r in (link_release(root, name) for name in LINKS) if r is not None}
    removed = []
    releases = root / "releases"
    for path in sorted(releases.iterdir()) if releases.is_dir() else []:
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    shutil.rmtree(root / "incoming", ignore_errors=True)
    return {"kept": sorted(keep), "removed": removed}


def site_dirs(venv: Path, dirs: list[str]) -> dict[str, object]:
    """Append ``dirs`` to the venv's import path with a .pth file (inventory extra_site_dirs)."""
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    pth = Path(out.stdout.strip()) / PTH_NAME
    pth.write_text("".join(f"{d}\n" for d in dirs))
    return {"pth": str(pth), "dirs": dirs}


# -- process service manager ---------------------------------------------------------------
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
    pidfile: Path, log: Path, cwd: Path, argv: list[str], env: list[str]
) -> dict[str, object]:
    """Start ``argv`` detached (own session, output to ``log``) with ``env`` (KEY=VALUE)."""
    pid = running_pid(pidfile)
    if pid is not None:
        raise RemoteError(f"already running (pid {pid}, {pidfile}); stop it first")
    cwd.mkdir(parents=True, exist_ok=True)
    inherited = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    environment = {**inherited, **dict(item.split("=", 1) for item in env)}
    with open(log, "ab") as out:
        child = subprocess.Popen(
            argv,
            cwd=cwd,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = proc_identity(child.pid)
    pidfile.write_text(f"{child.pid} {started}\n")
    time.sleep(STARTUP_CHECK_S)
    if child.poll() is not None:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise RemoteError(f"{argv[0]} exited {child.returncode} at start: {tail[0]}")
    return {"pid": child.pid}


def proc_stop(pidfile: Path, timeout_s: float) -> dict[str, object]:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL; the pid file is removed."""
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


# -- under the release's venv ----------------------------------------------------------------
def configure(release: Path, model_file: str, backend: str) -> dict[str, object]:
    """runtime.yaml = config/runtime.yaml with this release's model folder, file and backend,
    validated by the runtime's own loader (errors name the file and the key)."""
    import yaml

    from edge.config import load_yaml
    from edge.errors import LungwatchError
    from edge.runtime.config import load_runtime_config

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
    from edge.errors import LungwatchError
    from edge.inference.manifest import load_manifest, verify_file

    try:
        manifest = load_manifest(models / "manifest.json")
        checked = [verify_file(manifest, models / name).name for name in sorted(manifest.files)]
    except LungwatchError as exc:
        raise RemoteError(str(exc)) from None
    return {"checked": checked}


# -- command line ----------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="remote.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("unpack", help="check the archive, extract into releases/RELEASE")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--archive", type=Path, required=True)
    p.add_argument("--release", required=True)
    p = sub.add_parser("switch", help="current -> RELEASE, previous -> the old current")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--release", required=True)
    p = sub.add_parser("restore", help="set current and previous (empty: remove the link)")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--current", default="")
    p.add_argument("--previous", default="")
    for name in ("discard", "prune"):
        p = sub.add_parser(name, help=f"{name} releases")
        p.add_argument("--root", type=Path, required=True)
        if name == "discard":
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
    return parser


def _dispatch(args: argparse.Namespace) -> dict[str, object]:
    action = args.action
    if action == "unpack":
        return unpack(args.root, args.archive, args.release)
    if action == "switch":
        return switch(args.root, args.release)
    if action == "restore":
        return restore(args.root, args.current, args.previous)
    if action == "discard":
        return discard(args.root, args.release)
    if action == "prune":
        return prune(args.root)
    if action == "site-dirs":
        return site_dirs(args.venv, args.dirs)
    if action == "proc-start":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            raise RemoteError("proc-start: no command given after --")
        return proc_start(args.pidfile, args.log, args.cwd, command, args.env)
    if action == "proc-stop":
        return proc_stop(args.pidfile, args.timeout_s)
    if action == "proc-status":
        return proc_status(args.pidfile)
    if action == "configure":
        return configure(args.release, args.model_file, args.backend)
    return check_models(args.models)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = _dispatch(args)
    except (RemoteError, OSError, tarfile.TarError, ValueError, KeyError) as exc:
        print(f"remote.py {args.action}: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"remote.py {args.action}: {exc.cmd[0]} exited {exc.returncode}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
