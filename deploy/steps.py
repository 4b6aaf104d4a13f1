"""The deploy steps, in order (see :mod:`deploy.context` for what a step is):

    bundle -> probe -> copy -> unpack -> venv -> install -> engine -> configure -> verify
           -> switch -> service -> health -> prune

Until ``switch`` nothing the running service uses has changed; from ``switch`` on, a failure
is rolled back by :mod:`deploy.runner` (links restored, previous service restarted).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from deploy.bundle import REFERENCE_FILE, build_bundle
from deploy.context import Context, Step, on_target
from deploy.errors import TargetError
from deploy.health import status_topic_of, wait_online

log = logging.getLogger("lungwatch.deploy")
ENGINE_FILE = "model.plan"
NO_TENSORRT = "no TensorRT here"  # what `lungwatch engine` says when TensorRT is absent
ENGINE_TIMEOUT_S = 3600.0  # an INT8 build on a Jetson takes minutes
VERIFY_TIMEOUT_S = 1800.0  # every model on the reference's recordings (seconds on a CPU)
SERVICE_MARGIN_S = 30.0  # on top of the stop timeout


# -- bundle / probe / copy / unpack -----------------------------------------------------------
def bundle_commands(ctx: Context) -> list[str]:
    inv = ctx.device.inventory
    models = ctx.device.path_of(inv.models)
    lines = [f"[local] check sha256 of every file {models}/manifest.json lists; refuse a mismatch"]
    lines.append(
        "[local] pip wheel --no-deps (a clean copy of the checkout) -> wheels/"
        if ctx.wheel is None
        else f"[local] use the wheel {ctx.wheel}"
    )
    if inv.install.deps == "bundle":
        lines.append(
            "[local] pip download --only-binary=:all: the dependencies -> wheels/ "
            f"(platforms: {', '.join(inv.install.platforms) or 'this machine'})"
        )
    lines.append(
        f"[local] copy {ctx.device.path_of(inv.runtime_config)} -> config/runtime.yaml; "
        "render lungwatch.service; write bundle.json (sha256 of every file)"
    )
    lines.append(f"[local] write {ctx.work_dir}/{ctx.archive_name} and its .sha256")
    return lines


def run_bundle(ctx: Context) -> None:
    ctx.bundle = build_bundle(ctx.device, ctx.work_dir, ctx.wheel)
    ctx.release = ctx.bundle.release
    ctx.notes["bundle"] = f"{ctx.bundle.archive.name} (version {ctx.bundle.version})"


def probe_commands(ctx: Context) -> list[str]:
    return on_target(_python_check(ctx), ["readlink", ctx.layout.current])


def _python_check(ctx: Context) -> list[str]:
    code = 'import sys; print("%d.%d" % sys.version_info[:2])'
    return [ctx.device.inventory.python, "-c", code]


def run_probe(ctx: Context) -> None:
    version = ctx.target.run(_python_check(ctx), timeout_s=60).stdout.strip()
    current = ctx.target.run(["readlink", ctx.layout.current], check=False).stdout.strip()
    ctx.noop = Path(current).name == ctx.release
    ctx.before = Path(current).name or None
    ctx.notes["probe"] = f"python {version}; current release: {Path(current).name or 'none'}"
    if ctx.noop:
        ctx.notes["probe"] += " (this release: nothing to change)"


def copy_commands(ctx: Context) -> list[str]:
    layout = ctx.layout
    lines = on_target(["mkdir", "-p", layout.incoming, layout.state, f"{layout.root}/releases"])
    files = f"{ctx.archive_name}, {ctx.archive_name}.sha256, remote.py"
    return [*lines, f"[copy] {files} -> {layout.incoming}/ (rsync if both ends have it)"]


def run_copy(ctx: Context) -> None:
    layout, bundle = ctx.layout, ctx.bundle
    if bundle is None:
        raise TargetError("no bundle was built")
    ctx.target.run(["mkdir", "-p", layout.incoming, layout.state, f"{layout.root}/releases"])
    files = [bundle.archive, Path(f"{bundle.archive}.sha256"), bundle.staging / "remote.py"]
    method = ctx.target.copy(files, layout.incoming)
    size_mib = bundle.archive.stat().st_size / 2**20
    ctx.notes["copy"] = f"{size_mib:.1f} MiB by {method}"


def unpack_argv(ctx: Context) -> list[str]:
    archive = f"{ctx.layout.incoming}/{ctx.archive_name}"
    return [
        *ctx.tool,
        "unpack",
        "--root",
        ctx.layout.root,
        "--archive",
        archive,
        "--release",
        ctx.release,
    ]


def run_unpack(ctx: Context) -> None:
    result = ctx.remote_json(unpack_argv(ctx))
    ctx.notes["unpack"] = f"{result['files']} files sha256-checked into {ctx.rdir}"


# -- venv / install ---------------------------------------------------------------------------
def venv_argvs(ctx: Context) -> list[list[str]]:
    install = ctx.device.inventory.install
    argv = [ctx.device.inventory.python, "-m", "venv"]
    argv += ["--system-site-packages"] if install.system_site_packages else []
    argv += [] if install.with_pip else ["--without-pip"]
    argvs = [[*argv, f"{ctx.rdir}/venv"]]
    if install.extra_site_dirs:
        venv = ["--venv", f"{ctx.rdir}/venv"]
        argvs.append([*ctx.tool, "site-dirs", *venv, *install.extra_site_dirs])
    return argvs


def run_venv(ctx: Context) -> None:
    for argv in venv_argvs(ctx):
        ctx.target.run(argv)
    ctx.notes["venv"] = " ".join(venv_argvs(ctx)[0][1:])


def install_argv(ctx: Context) -> list[str]:
    install = ctx.device.inventory.install
    wheels = f"{ctx.rdir}/wheels"
    wheel = f"{wheels}/{ctx.bundle.wheel if ctx.bundle else '<wheel>'}"
    argv = [
        f"{ctx.rdir}/venv/bin/python",
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "-q",
        "--no-index",
        "--find-links",
        wheels,
    ]
    if install.deps == "none":
        return [*argv, "--no-deps", wheel]
    extras = f"[{','.join(install.extras)}]" if install.extras else ""
    return [*argv, f"{wheel}{extras}", *install.requirements]


def run_install(ctx: Context) -> None:
    ctx.target.run(install_argv(ctx), timeout_s=1800)
    mode = ctx.device.inventory.install.deps
    ctx.notes["install"] = (
        "--no-deps (deps from the system site)"
        if mode == "none"
        else ("offline from the bundle's wheels")
    )


# -- engine / configure / verify --------------------------------------------------------------
def engine_argv(ctx: Context) -> list[str]:
    inv, models = ctx.device.inventory, f"{ctx.rdir}/models"
    return [
        f"{ctx.rdir}/venv/bin/lungwatch-edge",
        "engine",
        f"{models}/{inv.onnx_model}",
        "--precision",
        inv.precision,
        "--out",
        f"{models}/{ENGINE_FILE}",
        "--timing-cache",
        f"{ctx.layout.state}/timing.cache",
    ]


def engine_commands(ctx: Context) -> list[str]:
    inv = ctx.device.inventory
    if inv.engine == "off":
        return [f"(engine: off) ONNX Runtime will run {inv.onnx_model}"]
    fallback = (
        f"if TensorRT is absent: ONNX Runtime runs {inv.onnx_model} (said in the report)"
        if inv.engine == "auto"
        else "TensorRT is required (engine: required)"
    )
    return [*on_target(engine_argv(ctx)), fallback]


def run_engine(ctx: Context) -> None:
    inv = ctx.device.inventory
    ctx.model = (inv.onnx_model, "onnxruntime")
    if inv.engine == "off":
        ctx.notes["engine"] = f"off in the inventory: ONNX Runtime runs {inv.onnx_model}"
        return
    result = ctx.target.run(engine_argv(ctx), timeout_s=ENGINE_TIMEOUT_S, check=False)
    if result.returncode == 0:
        ctx.model = (ENGINE_FILE, "tensorrt")
        ctx.notes["engine"] = result.last_line()
        if inv.tensorrt and f"TensorRT {inv.tensorrt}" not in ctx.notes["engine"]:
            ctx.notes["engine"] += f" (the inventory expects TensorRT {inv.tensorrt})"
        return
    if NO_TENSORRT in result.stderr and inv.engine == "auto":
        note = f"TensorRT is absent on the target: falling back to ONNX Runtime ({inv.onnx_model})"
        log.warning("engine: %s", note)
        ctx.notes["engine"] = note
        return
    raise TargetError(f"lungwatch engine exited {result.returncode}: {result.last_line()}")


def configure_argv(ctx: Context) -> list[str]:
    model_file, backend = ctx.model if ctx.model[0] else (ENGINE_FILE, "tensorrt")
    return [
        *ctx.venv_tool,
        "configure",
        "--release",
        ctx.rdir,
        "--model-file",
        model_file,
        "--backend",
        backend,
    ]


def configure_commands(ctx: Context) -> list[str]:
    onnx = ctx.device.inventory.onnx_model
    note = f"(with the ONNX Runtime fallback: --model-file {onnx} --backend onnxruntime)"
    return [*on_target(configure_argv(ctx)), note]


def run_configure(ctx: Context) -> None:
    result = ctx.remote_json(configure_argv(ctx))
    ctx.notes["configure"] = f"runtime.yaml runs {result['model']} on {result['backend']}"


def has_reference(ctx: Context) -> bool:
    if ctx.bundle is not None:
        return (ctx.bundle.staging / "models" / REFERENCE_FILE).is_file()
    return (ctx.device.path_of(ctx.device.inventory.models) / REFERENCE_FILE).is_file()


def verify_argv(ctx: Context) -> list[str]:
    models = f"{ctx.rdir}/models"
    if has_reference(ctx):
        tool = f"{ctx.rdir}/venv/bin/lungwatch-edge"
        return [tool, "verify", "--model-dir", models, "--reference"]
    return [*ctx.venv_tool, "check-models", "--models", models]


def verify_rows(stdout: str) -> list[tuple[str, str]]:
    """``(stage, verdict)`` of each row of ``lungwatch verify``'s table
    (``| stage | frames max/mean Δp | events matched | verdict |``)."""
    rows = [line for line in stdout.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    return [(c[0], c[-1]) for c in cells if c[0] != "stage" and len(c) >= 2]


def run_verify(ctx: Context) -> None:
    if has_reference(ctx):
        result = ctx.target.run(verify_argv(ctx), timeout_s=VERIFY_TIMEOUT_S, check=False)
        if result.returncode != 0:  # its last line names each failed artifact and why
            raise TargetError(
                f"lungwatch verify --reference exited {result.returncode}: {result.last_line()}"
            )
        rows = verify_rows(result.stdout)
        passed = [stage for stage, verdict in rows if verdict == "within tolerance"]
        # the model the service will run must be one that passed (stage: "BACKEND FILE (P)")
        if ctx.model[0] not in [stage.split()[1] for stage in passed if len(stage.split()) > 1]:
            raise TargetError(
                f"lungwatch verify --reference did not check {ctx.model[0]}, the model the "
                f"service would run: {'; '.join(' '.join(r) for r in rows) or 'no table'}"
            )
        skipped = [f"{stage} {verdict}" for stage, verdict in rows if stage not in passed]
        ctx.notes["verify"] = (
            f"lungwatch verify --reference against {REFERENCE_FILE}: "
            f"{', '.join(passed)} within tolerance"
            + (f" ({'; '.join(skipped)})" if skipped else "")
        )
        return
    checked = ctx.remote_json(verify_argv(ctx))["checked"]
    ctx.notes["verify"] = (
        f"manifest sha256 check of {', '.join(checked)} (no {REFERENCE_FILE} in the model folder)"
    )


# -- switch / service / health / prune --------------------------------------------------------
def switch_argv(ctx: Context) -> list[str]:
    return [*ctx.tool, "switch", "--root", ctx.layout.root, "--release", ctx.release]


def run_switch(ctx: Context) -> None:
    ctx.links = ctx.remote_json(switch_argv(ctx))
    ctx.switched = True
    ctx.since_utc = float(ctx.links["utc"])
    ctx.notes["switch"] = f"current -> {ctx.release} (previous: {ctx.links['current'] or 'none'})"


def service_argvs(ctx: Context) -> list[list[str]]:
    manager = ctx.manager
    return [*manager.install(), *manager.restart()]


def run_service(ctx: Context) -> None:
    timeout_s = ctx.device.inventory.service.stop_timeout_s + SERVICE_MARGIN_S
    for argv in service_argvs(ctx):
        ctx.target.run(argv, timeout_s=timeout_s)
    ctx.notes["service"] = f"{ctx.device.inventory.service.manager}: restarted"


def health_commands(ctx: Context) -> list[str]:
    broker = ctx.device.inventory.broker
    topic = status_topic_of(ctx.device.path_of(ctx.device.inventory.runtime_config))
    return [
        f"[local] wait up to {broker.timeout_s:g} s for the retained status online on "
        f"{topic} at {broker.host}:{broker.port} (newer than the restart)",
        *on_target(ctx.manager.status()),
    ]


def run_health(ctx: Context) -> None:
    inv = ctx.device.inventory
    topic = status_topic_of(ctx.device.path_of(inv.runtime_config))
    ca_file = ctx.device.path_of(inv.broker.ca_file) if inv.broker.ca_file else None
    since = None if ctx.noop else ctx.since_utc
    status = wait_online(inv.broker, topic, since, ca_file=ca_file)
    ctx.target.run(ctx.manager.status(), timeout_s=60)
    ctx.notes["health"] = f"status online at {status.get('utc')} on {topic}; service running"


def prune_argv(ctx: Context) -> list[str]:
    return [*ctx.tool, "prune", "--root", ctx.layout.root]


def run_prune(ctx: Context) -> None:
    result = ctx.remote_json(prune_argv(ctx))
    ctx.notes["prune"] = (
        f"kept {', '.join(result['kept'])}; removed {', '.join(result['removed']) or 'nothing'}"
    )


def _plain(build: Callable[[Context], list[str]]) -> Callable[[Context], list[str]]:
    return lambda ctx: on_target(build(ctx))


STEPS: tuple[Step, ...] = (
    Step("bundle", "build and check the bundle", bundle_commands, run_bundle),
    Step("probe", "target Python and the current release", probe_commands, run_probe),
    Step("copy", "deliver the archive", copy_commands, run_copy),
    Step("unpack", "check sha256s, unpack into releases/", _plain(unpack_argv), run_unpack),
    Step(
        "venv", "the release's virtual environment", lambda c: on_target(*venv_argvs(c)), run_venv
    ),
    Step("install", "pip install the wheel offline", _plain(install_argv), run_install),
    Step("engine", "TensorRT engine from the Q/DQ ONNX", engine_commands, run_engine),
    Step("configure", "runtime.yaml for this release", configure_commands, run_configure),
    Step("verify", "model check on the device", _plain(verify_argv), run_verify),
    Step("switch", "current -> this release", _plain(switch_argv), run_switch),
    Step(
        "service",
        "install and restart the service",
        lambda c: on_target(*service_argvs(c)),
        run_service,
    ),
    Step("health", "status online on the broker", health_commands, run_health),
    Step("prune", "keep the last two releases", _plain(prune_argv), run_prune),
)
NOOP_STEPS = ("bundle", "probe", "health")  # what runs when the release is already current
