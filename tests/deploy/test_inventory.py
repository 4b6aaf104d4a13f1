"""The shipped inventory and the playbook's first checks: every device's runtime config, as
Ansible renders it from the group and host variables, is a valid runtime config that resolves
against the shipped model; a bad inventory stops the rollout before anything is built or
copied, naming the device and the setting; ``make deploy`` without a device says what it
needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge.bed.chain import resolve_detector
from edge.inference.manifest import load_manifest
from edge.runtime.config import load_runtime_config
from edge.runtime.detect import load_detect_config
from lungwatch.config import load_yaml
from tests.deploy.conftest import MODELS, REPO
from tests.deploy.test_ansible import require_ansible

INVENTORY = REPO / "deploy" / "inventory" / "ward.yml"
ANSIBLE_ENV = {"ANSIBLE_CONFIG": str(REPO / "deploy" / "ansible" / "ansible.cfg"),
               "ANSIBLE_NOCOLOR": "1"}  # fmt: skip


def rendered_runtime(host: str) -> dict[str, object]:
    """``lungwatch_runtime`` of ``host`` in the shipped inventory, templated by Ansible."""
    adhoc = Path(sys.executable).with_name("ansible")
    argv = [str(adhoc), host, "-i", str(INVENTORY), "-m", "ansible.builtin.debug",
            "-a", "var=lungwatch_runtime", "-e", f"lungwatch_repo={REPO}"]  # fmt: skip
    env = {**os.environ, **ANSIBLE_ENV, "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    head, _, body = done.stdout.partition(" => ")  # "HOST | SUCCESS => {json}"
    assert head.startswith(f"{host} | SUCCESS"), done.stdout
    return dict(json.loads(body)["lungwatch_runtime"])


@pytest.mark.parametrize("host", ["jetson", "jetson-2", "local"])
def test_each_devices_runtime_config_is_valid(
    host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validated as the device does: from its state folder, where the vault's secrets are
    files (stand-ins here, with the names the inventory gives them)."""
    require_ansible()
    runtime = rendered_runtime(host)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in ("ward-ca.pem", "mqtt-password", "command.key", "bed-1.key", "bed-2.key"):
        text = "00" * 32 + "\n" if name.endswith(".key") else "stand-in\n"  # keys: hex
        (secrets / name).write_text(text)
        (secrets / name).chmod(0o600)
    monkeypatch.chdir(tmp_path)
    assert runtime["device_id"] == host
    path = tmp_path / "runtime.yaml"
    runtime["model"] = {"dir": str(MODELS), "file": "model.int8.onnx"}
    path.write_text(yaml.safe_dump(runtime), encoding="utf-8")
    config = load_runtime_config(path)  # the device validates the same way (remote.py configure)
    assert [s.id for s in config.streams] == ["bed-1", "bed-2"][: len(config.streams)]
    assert all(s.name for s in config.streams), "every bed has a display name"
    manifest = load_manifest(MODELS / "manifest.json")
    resolve_detector(load_detect_config(path).detector, manifest, str(path))
    assert load_yaml(path)["site"]


def test_a_bad_inventory_stops_before_anything_is_built(tmp_path: Path) -> None:
    require_ansible()
    inventory = tmp_path / "bad.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"bedside-9": {
        "ansible_connection": "local", "lungwatch_prefix": "relative/folder",
        "lungwatch_runtime": {"streams": [{"id": "bed-1", "source": "x.wav"}]},
        "lungwatch_work_dir": str(tmp_path / "work"),
    }}}}))  # fmt: skip
    argv = ["make", "--no-print-directory", "-o", f"{sys.prefix}/.installed-dev", "deploy",
            f"VENV={sys.prefix}", f"INVENTORY={inventory}", "DEVICE=bedside-9"]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ANSIBLE_NOCOLOR": "1"})  # fmt: skip
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0
    assert "bedside-9: the inventory is invalid: lungwatch_prefix must be an absolute" in said
    assert "(got relative/folder)" in said
    assert not (tmp_path / "work").exists(), "no bundle was built"


def test_make_deploy_without_a_device_says_what_it_needs() -> None:
    done = subprocess.run(["make", "--no-print-directory", "-o", f"{sys.prefix}/.installed-dev",
                           "deploy", f"VENV={sys.prefix}"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0
    assert "make deploy needs DEVICE=<host> or DEVICES=<group> of deploy/inventory/ward.yml" in (
        done.stderr
    )
