"""The SSH transport against a real sshd: arguments arrive unchanged (no shell word splitting
or expansion of values), copies by rsync and by ``ssh cat`` land byte for byte, and an
unreachable target is one line naming it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from deploy.errors import TargetError
from deploy.inventory import load_device
from deploy.target import SshTarget
from tests.deploy.sshd import SshServer
from tests.edge.brokers import closed_port


def ssh_target(tmp_path: Path, sshd: SshServer, **changes: object) -> SshTarget:
    target = {"transport": "ssh", "host": "127.0.0.1", "user": sshd.user, "port": sshd.port,
              "key": str(sshd.key), "known_hosts": str(sshd.known_hosts),
              "host_key_checking": "yes", **changes}  # fmt: skip
    data = {"target": target, "prefix": "/opt/x", "models": str(Path(__file__).parents[2] /
            "models" / "sed"), "runtime_config": str(tmp_path / "rt.yaml")}  # fmt: skip
    (tmp_path / "rt.yaml").write_text("streams: [{id: b, source: x.wav}]\n")
    (tmp_path / "dev.yaml").write_text(yaml.safe_dump(data))
    return SshTarget(load_device("dev", tmp_path))


def test_arguments_arrive_unchanged(tmp_path: Path, sshd: SshServer) -> None:
    target = ssh_target(tmp_path, sshd)
    try:
        words = ["a b", "$HOME", "x; touch pwned", "'q'", "*"]
        result = target.run(["printf", "%s\\n", *words], timeout_s=30)
        assert result.stdout.splitlines() == words
        assert not (Path.home() / "pwned").exists()
        failed = target.run(["sh", "-c", "echo bad >&2; exit 3"], check=False)
        assert (failed.returncode, failed.last_line()) == (3, "bad")
        with pytest.raises(TargetError, match=r"exited 3: bad"):
            target.run(["sh", "-c", "echo bad >&2; exit 3"])
    finally:
        target.close()


@pytest.mark.parametrize("mode", ["rsync", "cat"])
def test_copy(tmp_path: Path, sshd: SshServer, mode: str) -> None:
    if mode == "rsync" and shutil.which("rsync") is None:
        pytest.skip("rsync is not installed")
    target = ssh_target(tmp_path, sshd, copy=mode)
    files = [tmp_path / "one.bin", tmp_path / "two words.txt"]
    files[0].write_bytes(bytes(range(256)) * 64)
    files[1].write_text("hello\n")
    dest = tmp_path / "dest dir"
    dest.mkdir()
    try:
        assert target.copy(files, str(dest)) == ("rsync" if mode == "rsync" else "ssh cat")
    finally:
        target.close()
    for path in files:
        assert (dest / path.name).read_bytes() == path.read_bytes()
    assert not list(dest.glob("*.tmp"))


def test_unreachable_target_is_one_line(tmp_path: Path, sshd: SshServer) -> None:
    with closed_port() as port:
        target = ssh_target(tmp_path, sshd, port=port, connect_timeout_s=2)
        try:
            with pytest.raises(TargetError, match=r"^ssh \S+@127\.0\.0\.1:\d+ over ssh: .*refused"):
                target.run(["true"], timeout_s=30)
        finally:
            target.close()
