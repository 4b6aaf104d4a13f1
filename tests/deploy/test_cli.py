"""The deploy CLI without deploying: unknown DEVICE and invalid inventories give one line
(exit 2), DRY_RUN prints every step and command and touches nothing, and the shipped
inventories load and have a comment on every key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from deploy.inventory import DEVICES_DIR, known_devices, load_device
from deploy.steps import STEPS
from tests.deploy.conftest import Env
from tests.deploy.helpers import run_cli


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_unknown_device_lists_the_known_ones(tmp_path: Path) -> None:
    for name in ("alpha", "beta"):
        (tmp_path / f"{name}.yaml").write_text("prefix: /opt/x\n")
    code, out, err = run_cli(["--device", "jetsn", "--devices-dir", str(tmp_path)])
    assert (code, out) == (2, "")
    line = one_line(err)
    assert "unknown DEVICE 'jetsn'" in line
    assert "known devices: alpha, beta" in line


def test_no_device_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVICE", raising=False)
    code, _, err = run_cli([])
    assert code == 2
    assert "no DEVICE given" in one_line(err)


BAD_INVENTORIES = [
    ("target.port", {"target": {"transport": "ssh", "host": "h", "user": "u", "port": 0}},
     "target.port must be an integer in 1..65535, got 0"),
    ("prefix", {"target": {"transport": "local"}, "prefix": None}, "prefix must be given"),
    ("unknown key", {"target": {"transport": "local"}, "prefix": "/x", "hots": 1},
     "hots must be one of"),
    ("service.manager", {"target": {"transport": "local"}, "prefix": "/x",
                         "service": {"manager": "upstart"}}, "service.manager must be one of"),
    ("ssh host", {"target": {"transport": "ssh", "user": "u"}, "prefix": "/x"},
     "target.host must be a non-empty string"),
    ("models", {"target": {"transport": "local"}, "prefix": "/x", "models": "nowhere"},
     "models: no such folder"),
    ("relative ssh prefix", {"target": {"transport": "ssh", "host": "h", "user": "u"},
                             "prefix": "opt/x"}, "prefix must be an absolute folder"),
    ("yaml", "target: [unclosed", "invalid YAML"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "content", "expected"), BAD_INVENTORIES, ids=[case[0] for case in BAD_INVENTORIES]
)
def test_bad_inventory_is_one_line_naming_file_and_key(
    tmp_path: Path, case: str, content: object, expected: str
) -> None:
    if isinstance(content, dict) and content.get("prefix", "") is None:
        del content["prefix"]
    text = content if isinstance(content, str) else yaml.safe_dump(content)
    (tmp_path / "dev.yaml").write_text(text)
    code, out, err = run_cli(["--device", "dev", "--devices-dir", str(tmp_path)])
    assert (code, out) == (2, "")
    line = one_line(err)
    assert line.startswith(f"deploy: error: {tmp_path / 'dev.yaml'}"), line
    assert expected in line, (case, line)


def test_ssh_key_is_checked_before_a_real_deploy(tmp_path: Path, env: Env) -> None:
    ssh = {"target.transport": "ssh", "target.host": "h", "target.user": "u"}
    env.write_device("keyless", settings={**ssh, "target.key": str(tmp_path / "none")})
    code, _, err = run_cli(env.deploy_args("keyless"))
    assert code == 2
    assert "target.key: no such file" in one_line(err)
    code, _, _ = run_cli([*env.deploy_args("keyless"), "--dry-run"])  # a plan needs no key
    assert code == 0


def snapshot(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def test_dry_run_prints_every_step_and_touches_nothing(env: Env) -> None:
    env.write_device("dev-plan")
    before = snapshot(env.root)
    code, out, err = run_cli([*env.deploy_args("dev-plan"), "--dry-run"])
    assert code == 0, err
    assert snapshot(env.root) == before  # no prefix, no work dir, no bundle
    numbered = re.findall(r"^\s*\d+\. (\w+):", out, flags=re.MULTILINE)
    assert numbered == [step.name for step in STEPS]
    prefix = env.prefix("dev-plan")
    assert f"[target] readlink {prefix}/current" in out
    assert f"remote.py proc-start --pidfile {prefix}/state/lungwatch.pid" in out
    assert "engine" in out
    assert "--no-deps" in out
    assert "on failure from switch on" in out
    assert out.rstrip().endswith("DRY_RUN: nothing was done")


def test_dry_run_from_the_environment(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.write_device("dev-env")
    monkeypatch.setenv("DRY_RUN", "1")
    monkeypatch.setenv("DEVICE", "dev-env")
    code, out, _ = run_cli(["--devices-dir", str(env.devices), "--work-dir", str(env.root / "w")])
    assert code == 0
    assert "DRY_RUN: nothing was done" in out
    assert not (env.root / "w").exists()


@pytest.mark.parametrize("name", ["jetson", "local"])
def test_shipped_inventory_plans(name: str) -> None:
    code, out, err = run_cli(["--device", name, "--dry-run"])
    assert code == 0, err
    if name == "jetson":
        assert "sudo -n systemctl restart lungwatch.service" in out
        assert "/venv/bin/lungwatch-edge' engine" in out
        assert "--precision int8" in out
        assert "pip download --only-binary=:all:" in out
    else:
        assert "proc-start" in out


def test_shipped_yaml_has_a_comment_on_every_key() -> None:
    folder = DEVICES_DIR.parent
    files = sorted((folder / "devices").glob("*.yaml")) + sorted(
        (folder / "configs").glob("*.yaml")
    )
    assert known_devices() == ["jetson", "local"]
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if re.match(r"^\s*(- )?[A-Za-z_]+:", line):
                assert "#" in line, f"{path.name}:{number}: {line}"
    for name in known_devices():
        assert load_device(name).inventory.prefix
