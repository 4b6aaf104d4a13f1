"""End-to-end deploys with real components: the lungwatch wheel installed into a release venv,
the runtime started by the ``process`` service manager on the shipped INT8 model (ONNX Runtime
CPU, a looping WAV), its status read on a real Mosquitto, and (SSH case) a real sshd."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

import pytest

from tests.deploy.conftest import MODELS, Env
from tests.deploy.helpers import (
    link,
    releases,
    report,
    run_cli,
    service_pid,
    wait_online,
    wait_retained_online,
)
from tests.deploy.sshd import SshServer
from tests.edge.brokers import Recorder, closed_port
from tests.export.test_verify import alter_int8_scale, copy_models

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
STEP_COUNT = 13


def deploy_ok(env: Env, name: str) -> str:
    code, out, err = run_cli(env.deploy_args(name))
    assert code == 0, f"{out}\n{err}"
    return out


def deploy_fails(env: Env, name: str) -> str:
    """The error line of a deploy that must fail (after the progress lines on stderr)."""
    code, out, err = run_cli(env.deploy_args(name))
    assert code == 1, f"{out}\n{err}"
    error = err.strip().splitlines()[-1]
    assert error.startswith("deploy: error: step "), err
    return error


def test_local_deploy_runs_and_reports_online(env: Env, recorder: Recorder) -> None:
    env.write_device("dev-local")
    prefix = env.prefix("dev-local")
    out = deploy_ok(env, "dev-local")
    release = link(prefix)
    assert release is not None
    assert releases(prefix) == [release]
    assert service_pid(prefix) is not None
    assert wait_online(recorder, env.status_topic("dev-local"))["device_id"] == "dev-local"
    runtime = (prefix / "releases" / release / "runtime.yaml").read_text()
    assert f"dir: {prefix / 'releases' / release / 'models'}" in runtime
    if not HAS_TENSORRT:
        assert "falling back to ONNX Runtime (model.int8.onnx)" in out
        assert "file: model.int8.onnx" in runtime
        assert "kind: onnxruntime" in runtime
    if (MODELS / "verify_reference.npz").is_file():
        assert "lungwatch verify --reference against verify_reference.npz: onnxruntime" in out
    else:
        assert "manifest sha256 check of model.int8.onnx, model.onnx" in out
    steps = report(env.work("dev-local"))["steps"]
    assert [s["status"] for s in steps] == ["ok"] * STEP_COUNT
    assert not (prefix / "incoming").exists()


def test_ssh_deploy(env: Env, sshd: SshServer, recorder: Recorder) -> None:
    env.write_device("dev-ssh", settings={
        "target.transport": "ssh", "target.host": "127.0.0.1", "target.user": sshd.user,
        "target.port": sshd.port, "target.key": str(sshd.key),
        "target.known_hosts": str(sshd.known_hosts), "target.host_key_checking": "yes",
    })  # fmt: skip
    prefix = env.prefix("dev-ssh")
    out = deploy_ok(env, "dev-ssh")
    assert "over ssh" in out
    assert "by rsync" in out or shutil.which("rsync") is None
    assert link(prefix) is not None
    assert service_pid(prefix) is not None
    wait_online(recorder, env.status_topic("dev-ssh"))


@pytest.mark.slow  # three full deploys: about 20 s, more on a loaded machine
def test_redeploy_is_idempotent_and_keeps_two_releases(env: Env) -> None:
    prefix = env.prefix("dev-idem")
    env.write_device("dev-idem")
    deploy_ok(env, "dev-idem")
    first, pid = link(prefix), service_pid(prefix)
    assert first is not None
    out = deploy_ok(env, "dev-idem")  # the same bundle again: health check only
    assert "was already current: nothing changed, health ok" in out
    assert (link(prefix), service_pid(prefix), releases(prefix)) == (first, pid, [first])
    env.write_device("dev-idem", variant=1)
    deploy_ok(env, "dev-idem")
    second = link(prefix)
    assert second is not None
    assert second != first
    assert link(prefix, "previous") == first
    assert releases(prefix) == sorted([first, second])
    env.write_device("dev-idem", variant=2)
    deploy_ok(env, "dev-idem")
    third = link(prefix)
    assert third is not None
    assert (link(prefix, "previous"), releases(prefix)) == (second, sorted([second, third]))


def tampered_models(directory: Path) -> Path:
    """A copy of the shipped model folder whose INT8 model no longer matches its sha256."""
    directory.mkdir()
    for name in ["manifest.json", *json.loads((MODELS / "manifest.json").read_text())["files"]]:
        shutil.copy2(MODELS / name, directory / name)
    data = bytearray((directory / "model.int8.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (directory / "model.int8.onnx").write_bytes(bytes(data))
    return directory


def test_broken_bundle_is_refused_and_the_previous_version_keeps_running(running: Env) -> None:
    prefix, topic = running.prefix("dev-run"), running.status_topic("dev-run")
    before, pid = link(prefix), service_pid(prefix)
    online = wait_retained_online(running.broker.port, topic, 0.0)
    bad = tampered_models(running.root / "bad-models")
    running.write_device("broken", device="dev-run", variant=1, models=str(bad))
    error = deploy_fails(running, "broken")
    assert "step bundle failed" in error
    assert "model.int8.onnx: sha256" in error
    assert "nothing on the device was changed" in error
    assert (link(prefix), service_pid(prefix), releases(prefix)) == (before, pid, [before])
    assert wait_retained_online(running.broker.port, topic, 0.0) == online  # untouched


def test_failed_target_step_discards_the_release(running: Env) -> None:
    prefix = running.prefix("dev-run")
    before, pid = link(prefix), service_pid(prefix)
    inventory = running.write_device("bad-config", device="dev-run", variant=1)
    config = Path(str(inventory.read_text().split("runtime_config: ")[1].split()[0]))
    config.write_text(config.read_text() + "detector: {on_threshold: 1.5}\n")
    error = deploy_fails(running, "bad-config")
    assert "step configure failed" in error
    assert "detector.on_threshold must be" in error
    assert f"the previous release ({before}) keeps running" in error
    assert (link(prefix), service_pid(prefix), releases(prefix)) == (before, pid, [before])


def test_failed_verify_gate_discards_the_release(running: Env) -> None:
    """An INT8 model that is still valid ONNX, its sha256 recorded anew, passes the bundle's
    sha256 check; the gate on the device fails it and the previous release keeps running."""
    prefix = running.prefix("dev-run")
    before, pid = link(prefix), service_pid(prefix)
    altered = copy_models(running.root / "altered-models", MODELS)
    alter_int8_scale(altered)
    running.write_device("altered", device="dev-run", variant=3, models=str(altered))
    error = deploy_fails(running, "altered")
    assert "step verify failed: lungwatch verify --reference exited 1" in error
    assert "onnxruntime model.int8.onnx (int8): frames max Δp" in error
    assert f"the previous release ({before}) keeps running" in error
    assert (link(prefix), service_pid(prefix), releases(prefix)) == (before, pid, [before])
    assert report(running.work("altered"))["failed_step"] == "verify"


def test_failing_health_check_rolls_back(running: Env) -> None:
    prefix, topic = running.prefix("dev-run"), running.status_topic("dev-run")
    before, pid = link(prefix), service_pid(prefix)
    with closed_port() as port:  # nobody listens there
        changes = {"broker.port": port, "broker.timeout_s": 2}
        running.write_device("bad-broker", device="dev-run", variant=2, settings=changes)
        started_s = time.time()
        error = deploy_fails(running, "bad-broker")
    assert "step health failed" in error
    assert "unreachable" in error
    assert f"rolled back to {before}" in error
    assert (link(prefix), releases(prefix), link(prefix, "previous")) == (before, [before], None)
    restarted = service_pid(prefix)
    assert restarted is not None
    assert restarted != pid
    wait_retained_online(running.broker.port, topic, started_s)  # the restarted previous one
    assert report(running.work("bad-broker"))["failed_step"] == "health"
