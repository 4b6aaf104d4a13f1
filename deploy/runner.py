"""Run the steps of :mod:`deploy.steps`, roll back on failure, and write the deploy report.

Rollback, by where the failure happened:

- before ``unpack``: nothing on the device changed (a refused bundle never leaves this
  machine); the running service is not touched;
- from ``unpack`` to ``verify``: the half-made release is discarded; ``current`` and the
  running service were never touched, so the previous version keeps running;
- from ``switch`` on: the new service is stopped, ``current`` / ``previous`` are restored,
  the previous release's service is installed and restarted, and the new release discarded
  (with no previous release, the service is left stopped).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from deploy.context import Context, Step, on_target
from deploy.errors import DeployError, StepError
from deploy.steps import NOOP_STEPS, STEPS
from edge.errors import LungwatchError

log = logging.getLogger("lungwatch.deploy")
REPORT_NAME = "deploy-report.json"


@dataclass
class Report:
    device: str
    target: str
    release: str = ""
    version: str = ""
    steps: list[dict[str, Any]] = field(default_factory=list)
    result: str = ""
    error: StepError | None = None

    def add(self, step: str, status: str, seconds: float, detail: str) -> None:
        self.steps.append(
            {"step": step, "status": status, "seconds": round(seconds, 2), "detail": detail}
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "target": self.target,
            "release": self.release,
            "version": self.version,
            "steps": self.steps,
            "result": self.result,
            "failed_step": self.error.step if self.error else None,
        }

    def write(self, out: TextIO) -> None:
        out.write(f"deploy {self.device} -> {self.target}\n")
        out.write(f"release {self.release or '-'} (version {self.version or '-'})\n")
        for row in self.steps:
            out.write(
                f"  {row['step']:<10} {row['status']:<7} {row['seconds']:>6.1f} s  "
                f"{row['detail']}\n"
            )
        out.write(f"result: {self.result}\n")


def deploy(ctx: Context, steps: tuple[Step, ...] = STEPS) -> Report:
    """Run ``steps``; the report (``report.error`` is set when a step failed)."""
    report = Report(ctx.device.name, ctx.target.description)
    for step in steps:
        if ctx.noop and step.name not in NOOP_STEPS:
            report.add(step.name, "skipped", 0.0, "release already current")
            continue
        log.info("%s: %s", step.name, step.summary)
        ctx.reached.append(step.name)
        start = time.monotonic()
        try:
            step.run(ctx)
        except (LungwatchError, OSError, KeyboardInterrupt) as exc:
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
            report.add(step.name, "failed", time.monotonic() - start, reason)
            restored = rollback(ctx)
            report.error = StepError(step.name, f"step {step.name} failed: {reason}; {restored}")
            report.result = f"FAILED at step {step.name}; {restored}"
            break
        report.add(step.name, "ok", time.monotonic() - start, ctx.notes.get(step.name, ""))
        report.release = ctx.release
        report.version = ctx.bundle.version if ctx.bundle else ""
    else:
        report.result = _success(ctx)
    _save(ctx, report)
    return report


def _success(ctx: Context) -> str:
    if ctx.noop:
        return f"release {ctx.release} was already current: nothing changed, health ok"
    model, backend = ctx.model
    return f"deployed {ctx.release}: {backend} runs {model}; {ctx.notes.get('verify', '')}"


def _save(ctx: Context, report: Report) -> None:
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report.to_dict(), indent=2) + "\n"
    (ctx.work_dir / REPORT_NAME).write_text(text, encoding="utf-8")


def rollback(ctx: Context) -> str:
    """Restore what the failed deploy changed; one sentence for the report."""
    if ctx.noop:
        return "nothing was changed (the release was already current)"
    if "copy" not in ctx.reached:
        return "nothing on the device was changed; the running service was not touched"
    if "unpack" not in ctx.reached:
        return "only PREFIX/incoming was written; the running service was not touched"
    before = ctx.before or "none"
    try:
        if not ctx.switched:
            ctx.target.run(discard_argv(ctx), timeout_s=300)
            return f"release {ctx.release} discarded; the previous release ({before}) keeps running"
        for argv in restore_argvs(ctx):
            ctx.target.run(argv, timeout_s=ctx.device.inventory.service.stop_timeout_s + 60)
    except DeployError as exc:
        log.error("rollback failed: %s", exc)
        return f"ROLLBACK FAILED ({exc}); fix the device by hand (docs/deploy.md)"
    if ctx.before is None:
        return "rolled back: no previous release, the service is stopped"
    return f"rolled back to {ctx.before} (current link restored, its service restarted)"


def discard_argv(ctx: Context) -> list[str]:
    return [*ctx.tool, "discard", "--root", ctx.layout.root, "--release", ctx.release]


def restore_argvs(ctx: Context) -> list[list[str]]:
    """Stop the new service, restore the links, restart the previous one, discard the new."""
    planned = {"current": ctx.before or "<current before>", "previous": "<previous before>"}
    links = ctx.links if ctx.switched else planned
    manager = ctx.manager
    restore = [
        *ctx.tool,
        "restore",
        "--root",
        ctx.layout.root,
        "--current",
        links.get("current") or "",
        "--previous",
        links.get("previous") or "",
    ]
    restart = [*manager.install(), *manager.restart()] if links.get("current") else []
    return [*manager.stop(), restore, *restart, discard_argv(ctx)]


def print_plan(ctx: Context, out: TextIO, steps: tuple[Step, ...] = STEPS) -> None:
    """``DRY_RUN=1``: every step and command, the rollback, and nothing done."""
    inv = ctx.device.inventory
    out.write(
        f"plan: deploy {ctx.device.name} ({ctx.device.path}) -> {ctx.target.description}, "
        f"prefix {ctx.device.prefix}, service manager {inv.service.manager}\n"
    )
    for number, step in enumerate(steps, start=1):
        out.write(f"{number:>2}. {step.name}: {step.summary}\n")
        for line in step.commands(ctx):
            out.write(f"      {line}\n")
    out.write("on failure before switch: the new release is discarded\n")
    out.write(f"      {on_target(discard_argv(ctx))[0]}\n")
    out.write("on failure from switch on: stop, restore the links, restart the previous release\n")
    for line in on_target(*restore_argvs(ctx)):
        out.write(f"      {line}\n")
    out.write(f"a release already current runs only {', '.join(NOOP_STEPS)} (idempotent)\n")
    out.write(
        f"(<release> = <package version>-<content sha256[:12]>, known after the bundle "
        f"step; work dir {ctx.work_dir})\nDRY_RUN: nothing was done\n"
    )


def report_path(ctx: Context) -> Path:
    return ctx.work_dir / REPORT_NAME
