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
from deploy.bundle import build_bundle
from deploy.inventory import load_device
from tests.deploy.conftest import MODELS, Env


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
def delivered(env: Env, tmp_path: Path) -> tuple[Path, Path, str]:
    """(root, archive in root/incoming, release) of a freshly built bundle."""
    env.write_device("dev-r")
    bundle = build_bundle(load_device("dev-r", env.devices), env.work("dev-r"), env.wheel)
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


def fake_release(root: Path, name: str) -> None:
    (root / "releases" / name).mkdir(parents=True)
    (root / "releases" / name / "runtime.yaml").write_text("streams: []\n")


def links(root: Path) -> tuple[str | None, str | None]:
    return remote.link_release(root, "current"), remote.link_release(root, "previous")


def test_switch_restore_prune_keep_the_last_two(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for name in ("r1", "r2", "r3"):
        fake_release(root, name)
    code, result, _ = act("switch", "--root", str(root), "--release", "r1")
    assert code == 0
    assert result is not None
    assert (result["current"], result["previous"]) == (None, None)
    act("switch", "--root", str(root), "--release", "r2")
    _, result, _ = act("switch", "--root", str(root), "--release", "r3")
    assert result is not None
    assert (result["current"], result["previous"]) == ("r2", "r1")
    assert links(root) == ("r3", "r2")
    assert os.readlink(root / "current") == "releases/r3"  # relative: the prefix can move
    code, _, err = act("discard", "--root", str(root), "--release", "r2")
    assert code == 1
    assert "linked as current/previous" in err
    _, result, _ = act("prune", "--root", str(root))
    assert result == {"kept": ["r2", "r3"], "removed": ["r1"]}
    act("restore", "--root", str(root), "--current", "r2", "--previous", "")
    assert links(root) == ("r2", None)


def test_switch_refuses_an_unconfigured_release(tmp_path: Path) -> None:
    (tmp_path / "releases" / "r1").mkdir(parents=True)
    code, _, err = act("switch", "--root", str(tmp_path), "--release", "r1")
    assert code == 1
    assert "not configured" in err


def test_process_manager_starts_checks_and_stops(tmp_path: Path) -> None:
    pidfile, log = tmp_path / "state" / "x.pid", tmp_path / "state" / "x.log"
    start = ["proc-start", "--pidfile", str(pidfile), "--log", str(log), "--cwd",
             str(tmp_path / "state"), "--env", "LW_TEST=42", "--"]  # fmt: skip
    script = "import os, time; print(os.environ['LW_TEST'], flush=True); time.sleep(60)"
    code, result, err = act(*start, sys.executable, "-c", script)
    assert code == 0, err
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
