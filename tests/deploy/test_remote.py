"""The target-side helper (deploy/remote.py), action by action: unpack refuses a damaged
archive, a file that differs from bundle.json and unsafe member paths; the links keep the
last two releases; the process manager starts, checks and stops a real process."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from deploy import remote
from deploy.bundle import BundleSpec, build_bundle
from tests.deploy.conftest import MODELS


def act(*argv: str) -> tuple[int, dict[str, object] | None, str]:
    """remote.py ACTION ... in this process: (exit status, its JSON result, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = remote.main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
    text = out.getvalue().strip()
    return code, json.loads(text) if text else None, err.getvalue().strip()


@pytest.fixture
def delivered(tmp_path: Path, wheel: Path) -> tuple[Path, Path, str]:
    """(root, archive in root/incoming, release) of a freshly built bundle."""
    bundle = build_bundle(BundleSpec(models=MODELS, deps="none"), tmp_path / "work", wheel)
    root = tmp_path / "root"
    (root / "incoming").mkdir(parents=True)
    for path in (bundle.archive, Path(f"{bundle.archive}.sha256")):
        shutil.copy2(path, root / "incoming" / path.name)
    return root, root / "incoming" / bundle.archive.name, bundle.release


def test_unpack_checks_every_file(delivered: tuple[Path, Path, str]) -> None:
    root, archive, release = delivered
    code, result, err = act("unpack", "--root", str(root), "--archive", str(archive),
                            "--release", release)  # fmt: skip
    assert code == 0, err
    assert result is not None
    assert (root / "releases" / release / "models" / "model.int8.onnx").is_file()
    assert result["files"] == len(json.loads((root / "releases" / release / "bundle.json")
                                             .read_text())["files"])  # fmt: skip


def test_unpack_refuses_a_damaged_copy(delivered: tuple[Path, Path, str]) -> None:
    root, archive, release = delivered
    archive.write_bytes(archive.read_bytes()[:-10])
    code, _, err = act("unpack", "--root", str(root), "--archive", str(archive),
                       "--release", release)  # fmt: skip
    assert code == 1
    assert "differs from its .sha256" in err
    assert not (root / "releases" / release).exists()


def repack(archive: Path, change: str) -> None:
    """Rewrite the archive with one changed member (and a matching .sha256)."""
    work = archive.parent / "x"
    with tarfile.open(archive) as tar:
        tar.extractall(work)
    if change == "model":
        model = work / "models" / "model.int8.onnx"
        model.write_bytes(model.read_bytes()[::-1])
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            tar.add(path, arcname=path.relative_to(work).as_posix(), recursive=False)
        if change == "escape":
            info = tarfile.TarInfo("../escaped.txt")
            info.size = 0
            tar.addfile(info, io.BytesIO(b""))
    digest = remote.sha256_file(archive)
    Path(f"{archive}.sha256").write_text(f"{digest}  {archive.name}\n")


@pytest.mark.parametrize(("change", "message"), [
    ("model", "models/model.int8.onnx: sha256 does not match bundle.json; bundle refused"),
    ("escape", "archive member '../escaped.txt' is not a plain relative path"),
])  # fmt: skip
def test_unpack_refuses_a_bundle_that_was_changed(
    delivered: tuple[Path, Path, str], change: str, message: str
) -> None:
    root, archive, release = delivered
    repack(archive, change)
    code, _, err = act("unpack", "--root", str(root), "--archive", str(archive),
                       "--release", release)  # fmt: skip
    assert code == 1
    assert message in err
    assert not (root / "releases" / release).exists()
    assert not (root / "escaped.txt").exists()


def test_unpack_refuses_the_running_release(delivered: tuple[Path, Path, str]) -> None:
    root, archive, release = delivered
    assert (
        act("unpack", "--root", str(root), "--archive", str(archive), "--release", release)[0] == 0
    )
    (root / "current").symlink_to(Path("releases") / release)
    code, _, err = act("unpack", "--root", str(root), "--archive", str(archive),
                       "--release", release)  # fmt: skip
    assert code == 1
    assert "is current; it is not unpacked again" in err


def test_engine_off_runs_the_onnx_model(tmp_path: Path) -> None:
    code, result, _ = act("engine", "--release", str(tmp_path), "--onnx-model", "model.int8.onnx",
                          "--mode", "off", "--timing-cache", str(tmp_path / "t"))  # fmt: skip
    assert code == 0
    assert result is not None
    assert (result["model_file"], result["backend"]) == ("model.int8.onnx", "onnxruntime")
    assert result["note"] == "engine off in the inventory: ONNX Runtime runs model.int8.onnx"


def test_process_manager_starts_checks_and_stops(tmp_path: Path) -> None:
    pidfile, log = tmp_path / "state" / "x.pid", tmp_path / "state" / "x.log"
    start = ["proc-start", "--pidfile", str(pidfile), "--log", str(log), "--cwd",
             str(tmp_path / "state"), "--env", "LW_TEST=42", "--"]  # fmt: skip
    script = ("import os, time; open('spool.db', 'w').close(); "
              "print(os.environ['LW_TEST'], flush=True); time.sleep(60)")  # fmt: skip
    before = os.umask(0o022)  # a shell's usual umask: the state stays the service user's
    try:
        code, result, err = act(*start, sys.executable, "-c", script)
    finally:
        os.umask(before)
    assert code == 0, err
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    assert oct(log.parent.stat().st_mode & 0o777) == "0o700"
    assert oct((log.parent / "spool.db").stat().st_mode & 0o777) == "0o600"
    assert result is not None
    pid = result["pid"]
    assert act("proc-status", "--pidfile", str(pidfile))[1] == {"pid": pid}
    code, _, err = act(*start, sys.executable, "-c", script)
    assert code == 1
    assert "already running" in err
    code, result, _ = act("proc-stop", "--pidfile", str(pidfile), "--timeout-s", "10")
    assert result == {"stopped": pid, "killed": False}
    assert log.read_text().strip() == "42"
    assert act("proc-status", "--pidfile", str(pidfile))[0] == remote.NOT_RUNNING
    assert act("proc-stop", "--pidfile", str(pidfile))[1] == {"stopped": None, "killed": False}


def test_process_that_dies_at_start_is_reported(tmp_path: Path) -> None:
    argv = ["proc-start", "--pidfile", str(tmp_path / "p"), "--log", str(tmp_path / "l"),
            "--cwd", str(tmp_path), "--", "sh", "-c", "echo no config; exit 1"]  # fmt: skip
    code, _, err = act(*argv)
    assert code == 1
    assert "exited 1 at start: no config" in err


def test_check_models(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(MODELS, models, ignore=shutil.ignore_patterns("*.pt", "run_config.json"))
    code, result, _ = act("check-models", "--models", str(models))
    assert code == 0
    assert result is not None
    assert "model.int8.onnx" in result["checked"]  # type: ignore[operator]
    (models / "model.onnx").write_bytes(b"not the model")
    code, _, err = act("check-models", "--models", str(models))
    assert code == 1
    assert "model.onnx: sha256" in err
