"""``make deploy DEVICE=jetson [DRY_RUN=1]``: bundle, deliver, install, check, roll back.

    python -m deploy.cli --device jetson [--dry-run] [--work-dir out/deploy/jetson]

Reads ``deploy/devices/<DEVICE>.yaml`` (see ``docs/deploy.md``), then runs the steps of
:mod:`deploy.steps`, printing the deploy report. Exit status: 0 deployed (or already
current and healthy), 1 a step failed (the report names it; what was restored is said),
2 bad usage, unknown DEVICE or invalid inventory (one line on stderr).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from deploy.context import Context
from deploy.errors import DeployError
from deploy.inventory import DEVICES_DIR, check_ssh_files, load_device
from deploy.runner import deploy, print_plan, report_path
from deploy.target import open_target

TRUE_WORDS = ("1", "yes", "true", "on")


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="deploy", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        default=os.environ.get("DEVICE"),
        help="inventory name: deploy/devices/DEVICE.yaml (default: $DEVICE)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        default=os.environ.get("DRY_RUN", "").lower() in TRUE_WORDS,
        help="print the plan, do nothing (default: $DRY_RUN)",
    )
    parser.add_argument(
        "--devices-dir",
        type=Path,
        default=DEVICES_DIR,
        help="folder of the inventories (default: deploy/devices)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where the bundle and report go (default: out/deploy/DEVICE)",
    )
    parser.add_argument(
        "--wheel", type=Path, default=None, help="ship this lungwatch wheel instead of building one"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return parser.parse_args(argv)


def _log_to_stderr(level: int) -> None:
    """``deploy: ...`` lines on the current stderr (replacing this function's earlier handler)."""
    logger = logging.getLogger("lungwatch.deploy")
    for handler in [h for h in logger.handlers if getattr(h, "deploy_cli", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("deploy: %(message)s"))
    handler.deploy_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    if not args.device:
        print(
            "deploy: error: no DEVICE given (make deploy DEVICE=NAME or --device NAME)",
            file=sys.stderr,
        )
        return 2
    _log_to_stderr(logging.WARNING if args.quiet else logging.INFO)
    try:
        device = load_device(args.device, args.devices_dir)
        if args.wheel is not None and not args.wheel.is_file():
            raise DeployError(f"--wheel {args.wheel}: no such file")
        if not args.dry_run:  # a plan can be shown on a machine without the device's key
            check_ssh_files(device)
    except DeployError as exc:
        print(f"deploy: error: {exc}", file=sys.stderr)
        return 2
    work_dir = args.work_dir or Path("out") / "deploy" / device.name
    ctx = Context(device, open_target(device), work_dir, args.wheel, dry_run=args.dry_run)
    if args.dry_run:
        try:
            print_plan(ctx, sys.stdout)
        except DeployError as exc:
            print(f"deploy: error: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        report = deploy(ctx)
    finally:
        ctx.target.close()
    report.write(sys.stdout)
    print(f"report: {report_path(ctx)}")
    if report.error is not None:
        print(f"deploy: error: {report.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
