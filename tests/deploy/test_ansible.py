"""``make deploy`` on a fleet: the Ansible playbook against five real OpenSSH servers on
loopback (each its own port, keys and device root), a real Mosquitto and the real runtime.

What is replaced, and why: systemd cannot run in a test container, so the devices use the
playbook's ``process`` service manager (``remote.py proc-start``: the same runtime command the
systemd unit runs, kept in a pid file); everything else (SSH, copies, the sha256-checked
unpack, the venv and the offline install, the engine step with its ONNX Runtime fallback,
the verify gate, the links, the health check on the broker, the rollback) runs as on a ward.

The tests run in order on one fleet (a module fixture): the first rollout, a second run that
changes nothing, a dry run that touches nothing, and a rollout in which one device fails its
health check and is rolled back while the rollout stops.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.brokers import Mosquitto, closed_port
from tests.deploy.conftest import MODELS, REPO, SITE, stop_services
from tests.deploy.helpers import link, releases, service_pid, wait_retained_online
from tests.deploy.sshd import SshServer, start_sshd, stop_sshd

pytestmark = pytest.mark.slow

DEVICES = [f"dev{i}" for i in range(1, 6)]
VAULT_PASSWORD = "test-vault-password"
PLAYBOOK_TIMEOUT_S = 900


def require_ansible() -> Path:
    playbook = Path(sys.executable).with_name("ansible-playbook")
    if not playbook.is_file():
        pytest.skip("ansible-core is not installed (the dev lock has it: make test installs it)")
    return playbook


@dataclass
class Fleet:
    root: Path
    broker: Mosquitto
    servers: dict[str, SshServer]
    inventory: Path
    vault: Path
    vault_password: Path
    wav: Path

    def prefix(self, device: str) -> Path:
        return self.root / f"{device}-root" / "opt" / "lungwatch"

    def write_inventory(
        self, bed_name: str, overrides: dict[str, dict[str, Any]] | None = None
    ) -> None:
        """Five devices in group ``ward_a`` (site ``site_a``); each bed named ``bed_name``;
        ``overrides``: per device, settings merged over its host vars."""
        hosts = {}
        for device, server in self.servers.items():
            runtime: dict[str, Any] = {
                "site": SITE, "device_id": device,
                "streams": [{"id": "bed-1", "source": str(self.wav), "realtime": True,
                             "loop": True, "name": bed_name, "location": "Ward A"}],
                "sinks": {"stdout": False, "mqtt": True},
                # the password from the vault, in the file the deploy writes before it
                # validates this config (the test broker takes any login)
                "mqtt": {"host": "127.0.0.1", "port": self.broker.port,
                         "spool_path": "spool/events.sqlite", "username": device,
                         "password_file": str(self.prefix(device) / "state/secrets/mqtt-password")},
                "metrics_interval_s": 5,
            }  # fmt: skip
            host: dict[str, Any] = {
                "ansible_host": "127.0.0.1", "ansible_port": server.port,
                "ansible_user": server.user,
                "ansible_ssh_private_key_file": str(server.key),
                "ansible_ssh_common_args": f"-o UserKnownHostsFile={server.known_hosts} "
                                           "-o StrictHostKeyChecking=yes",
                "lungwatch_prefix": str(self.prefix(device)),
                "lungwatch_runtime": runtime,
            }  # fmt: skip
            for key, value in ((overrides or {}).get(device) or {}).items():
                if key == "mqtt_port":
                    runtime["mqtt"]["port"] = value
                else:
                    host[key] = value
            hosts[device] = host
        data = {"all": {
            "vars": {
                "ansible_python_interpreter": sys.executable,
                "lungwatch_python": sys.executable,
                "lungwatch_service_manager": "process",
                "lungwatch_stop_timeout_s": 10,
                "lungwatch_bundle": {"models": str(MODELS), "deps": "none"},
                "lungwatch_work_dir": str(self.root / "work"),
                "lungwatch_venv_system_site_packages": True,
                "lungwatch_venv_with_pip": False,
                "lungwatch_extra_site_dirs": site.getsitepackages(),
                "lungwatch_health_broker": {"host": "127.0.0.1", "port": self.broker.port,
                                            "timeout_s": 20},
                "lungwatch_secrets": {"mqtt-password": "{{ vault_mqtt_password }}"},
            },
            "children": {"site_a": {"children": {"ward_a": {"hosts": hosts}}}},
        }}  # fmt: skip
        self.inventory.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

    def deploy(self, *make_vars: str) -> subprocess.CompletedProcess[str]:
        """``make deploy DEVICES=ward_a INVENTORY=... VAULT=... VAULT_PASSWORD_FILE=...``."""
        argv = ["make", "--no-print-directory", "-o", f"{sys.prefix}/.installed-dev", "deploy",
                f"VENV={sys.prefix}", f"INVENTORY={self.inventory}", f"VAULT={self.vault}",
                f"VAULT_PASSWORD_FILE={self.vault_password}", *make_vars]  # fmt: skip
        env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env,
                              timeout=PLAYBOOK_TIMEOUT_S)  # fmt: skip
        (self.root / "last-deploy.log").write_text(done.stdout + done.stderr)
        return done

    def state(self) -> dict[str, tuple[str | None, str | None, int | None]]:
        """Per device: (current, previous, the service's pid)."""
        return {d: (link(self.prefix(d)), link(self.prefix(d), "previous"),
                    service_pid(self.prefix(d))) for d in DEVICES}  # fmt: skip

    def tree(self) -> dict[str, tuple[float, int]]:
        """Every path under the devices' roots but the running service's own files, with its
        mtime and size (what a dry run must not change)."""
        out = {}
        for device in DEVICES:
            for path in sorted(self.prefix(device).rglob("*")):
                if "state" in path.relative_to(self.prefix(device)).parts[:1]:
                    continue  # the runtime writes its spool and log there
                st = path.lstat()
                out[str(path)] = (st.st_mtime, st.st_size)
        return out


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP: host -> {ok, changed, unreachable, failed, skipped, rescued, ignored}."""
    rows = re.findall(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", output, re.MULTILINE)
    return {host: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
            for host, counts in rows}  # fmt: skip


def batches(output: str, task: str = "Name this rollout's release") -> list[list[str]]:
    """The hosts of each batch, in order (sorted within one: they run in parallel): the hosts
    under each banner of ``task``."""
    parts = re.split(r"^TASK \[", output, flags=re.MULTILINE)
    found = []
    for part in parts:
        if part.split("]", 1)[0].endswith(task):
            found.append(sorted(re.findall(r"^ok: \[(\S+?)\]", part, re.MULTILINE)))
    return found


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, broker: Mosquitto, loop_wav: Path
) -> Iterator[Fleet]:
    require_ansible()
    root = tmp_path_factory.mktemp("fleet")
    servers = {d: start_sshd(root / f"{d}-sshd") for d in DEVICES}
    password = root / "vault-password"
    password.write_text(VAULT_PASSWORD + "\n")
    vault = root / "secrets.vault.yml"
    vault.write_text("vault_mqtt_password: s3cret-from-the-vault\n")
    playbook = require_ansible()
    subprocess.run([str(playbook.with_name("ansible-vault")), "encrypt", str(vault),
                    "--vault-password-file", str(password)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    made = Fleet(root, broker, servers, root / "inventory.yml", vault, password, loop_wav)
    try:
        yield made
    finally:
        stop_services([made.prefix(d) for d in DEVICES])
        for server in servers.values():
            stop_sshd(server)
        shutil.rmtree(root / "work", ignore_errors=True)


def test_five_devices_updated_canary_first_then_a_batch(fleet: Fleet) -> None:
    """A first rollout to a ward of five devices: the canary alone, then the other four in
    one batch; every device runs the new release from the vault's secrets and is online."""
    assert b"s3cret" not in fleet.vault.read_bytes(), "the vault file is encrypted"
    fleet.write_inventory("Bed 1")
    done = fleet.deploy("DEVICES=ward_a", "BATCH=4")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert batches(out) == [["dev1"], ["dev2", "dev3", "dev4", "dev5"]]
    rows = recap(out)
    assert all(rows[d]["failed"] == 0 and rows[d]["changed"] > 0 for d in DEVICES), rows
    state = fleet.state()
    bundle = str(state["dev1"][0]).rsplit("-c", 1)[0]
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*-[0-9a-f]{12}", bundle)
    for device in DEVICES:
        current, previous, pid = state[device]
        # one bundle; each device's release also names its own runtime config (its device_id)
        assert current is not None
        assert re.fullmatch(re.escape(bundle) + r"-c[0-9a-f]{10}", current), current
        assert previous is None, device
        assert pid is not None, f"{device}: the runtime runs"
        assert releases(fleet.prefix(device)) == [current]
        assert not (fleet.prefix(device) / "incoming").exists()
        secret = fleet.prefix(device) / "state" / "secrets" / "mqtt-password"
        assert secret.read_text() == "s3cret-from-the-vault"
        assert secret.stat().st_mode & 0o777 == 0o600
        state_dir = fleet.prefix(device) / "state"  # spools and logs: the service user's alone
        assert state_dir.stat().st_mode & 0o777 == 0o700
        made = [p for p in state_dir.rglob("*") if p.is_file() and "numba-cache" not in p.parts]
        assert made, "the runtime wrote its state"
        assert [p.name for p in made if p.stat().st_mode & 0o077] == []
        # the verify gate compiled the front end's and the detector's Numba kernels into the
        # service's cache: the service compiled none of them (a file newer than its start is
        # its compile); only the evidence recorder's, which the gate does not run
        cache = [p for p in (state_dir / "numba-cache").rglob("*") if p.is_file()]
        assert any(p.suffix == ".nbi" for p in cache), f"{device}: the gate filled the cache"
        started = (state_dir / "lungwatch.pid").stat().st_mtime
        late = {p.name.split("-")[0] for p in cache if p.stat().st_mtime > started}
        assert late <= {"recorder._write_ring"}, (device, late)
        config = yaml.safe_load((fleet.prefix(device) / "current" / "runtime.yaml").read_text())
        assert config["device_id"] == device
        assert config["streams"][0]["name"] == "Bed 1"
        assert config["backend"]["kind"] == "onnxruntime"  # no TensorRT here: the fallback
        wait_retained_online(fleet.broker.port, f"lungwatch/v1/{SITE}/{device}/status", 0.0)
    said = " ".join(out.split())  # messages as Ansible wraps them, unwrapped
    assert "TensorRT is absent on this device: ONNX Runtime runs model.int8.onnx" in said
    assert "onnxruntime model.int8.onnx (int8) within tolerance of verify_reference.npz" in said


def test_a_second_run_changes_nothing(fleet: Fleet) -> None:
    before = fleet.state()
    done = fleet.deploy("DEVICES=ward_a", "BATCH=4")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    rows = recap(out)
    assert all(rows[d]["changed"] == 0 and rows[d]["failed"] == 0 for d in DEVICES), rows
    assert rows["localhost"]["changed"] == 0 if "localhost" in rows else True
    assert fleet.state() == before, "same releases, same running processes"


def test_the_dry_run_touches_nothing(fleet: Fleet) -> None:
    """A renamed bed, as a dry run: each device says what it would deploy and the diff of its
    runtime config; no file on any device changes, no service restarts."""
    before_state, before_tree = fleet.state(), fleet.tree()
    fleet.write_inventory("Bed 1 (window)")
    done = fleet.deploy("DEVICES=ward_a", "BATCH=4", "DRY_RUN=1")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert " ".join(out.split()).count("would deploy") == len(DEVICES)
    assert "-  name: Bed 1\n+  name: Bed 1 (window)" in out, out[-3000:]
    assert fleet.state() == before_state
    assert fleet.tree() == before_tree


def test_a_failed_health_check_rolls_back_and_stops_the_rollout(fleet: Fleet) -> None:
    """Batches of two after the canary: dev3 (second batch) reaches no broker, so its status
    never says online: it is rolled back to the release it ran and restarted; dev4 and dev5
    (the third batch) are never touched; dev1 and dev2 run the new release."""
    before = fleet.state()
    with closed_port() as nowhere:
        fleet.write_inventory("Bed 1 (window)", {"dev3": {"mqtt_port": nowhere}})
        done = fleet.deploy("DEVICES=ward_a", "BATCH=2")
    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-4000:]
    assert batches(out) == [["dev1"], ["dev2", "dev3"]], "the third batch never started"
    rows = recap(out)
    assert rows["dev3"]["failed"] == 1, rows
    said = " ".join(out.split())
    assert "dev3: Wait for the device's status online" in said
    after = fleet.state()
    for device in ("dev1", "dev2"):
        old = before[device][0]
        assert after[device][0] != old, f"{device} on the new release"
        assert after[device][1] == old, f"{device} keeps the old one as previous"
    old = before["dev3"][0]
    assert f"rolled back: running {old} again" in said
    assert after["dev3"][:2] == (old, None), "dev3 back on the release it ran"
    assert after["dev3"][2] is not None
    assert after["dev3"][2] != before["dev3"][2], "restarted"
    assert releases(fleet.prefix("dev3")) == [old], "the failed release is removed"
    for device in ("dev4", "dev5"):
        assert after[device] == before[device], f"{device} untouched"
    for device in DEVICES:
        assert after[device][2] is not None, f"{device} runs a working release"
    wait_retained_online(fleet.broker.port, f"lungwatch/v1/{SITE}/dev3/status", 0.0)
