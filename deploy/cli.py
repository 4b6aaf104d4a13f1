"""``python -m deploy``: the workstation-side commands the Ansible playbook calls.

Each prints one JSON line (``bundle``'s ``new`` is false when the same release was built
before and its archive kept). Errors are one line on stderr; exit 1 when the work failed, 2
for bad arguments. The rollout itself is ``make deploy`` (docs/deploy.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from deploy.bundle import BundleSpec, build_bundle
from deploy.errors import BundleError, HealthError
from deploy.health import BrokerConfig, wait_online
from lungwatch.config import from_mapping, json_object
from lungwatch.errors import ConfigError, LungwatchError


def bundle_spec(data: dict[str, Any]) -> BundleSpec:
    known = set(BundleSpec.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"lungwatch_bundle: unknown key(s) {unknown}; known: {sorted(known)}")
    if "models" not in data:
        raise ConfigError("lungwatch_bundle.models is required (the model folder)")
    values = dict(data)
    for key in ("extras", "requirements", "platforms", "index_urls"):  # absent: () as default
        items = values.get(key, [])
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise ConfigError(f"lungwatch_bundle.{key} must be a list of strings")
        values[key] = tuple(items)
    values["models"] = Path(str(values["models"])).expanduser()
    return BundleSpec(**values)


def _bundle(args: argparse.Namespace) -> dict[str, Any]:
    spec = bundle_spec(json_object(args.spec, "--spec"))
    built = build_bundle(spec, Path(args.work_dir), Path(args.wheel) if args.wheel else None)
    return {"release": built.release, "version": built.version, "archive": str(built.archive),
            "sha256": built.sha256, "wheel": built.wheel, "new": built.new}  # fmt: skip


def _health(args: argparse.Namespace) -> dict[str, Any]:
    broker = from_mapping(BrokerConfig, json_object(args.broker, "--broker"), "--broker")
    ca_file = Path(broker.ca_file).expanduser() if broker.ca_file else None
    since = float(args.since) if args.since not in (None, "") else None
    return wait_online(broker, args.topic, since, ca_file=ca_file)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("bundle", help="build the release's archive (once per rollout)")
    p.add_argument("--spec", required=True, help="the inventory's lungwatch_bundle, as JSON")
    p.add_argument("--work-dir", required=True, help="where the bundle and its archive go")
    p.add_argument("--wheel", default=None, help="a lungwatch wheel (default: built here)")
    p = sub.add_parser("health", help="wait for the device's status online")
    p.add_argument("--topic", required=True, help="lungwatch/v1/SITE/DEVICE/status")
    p.add_argument("--broker", required=True, help="the inventory's lungwatch_health_broker")
    p.add_argument("--since", default=None, help="device clock (s) at the restart: older fails")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = _bundle(args) if args.command == "bundle" else _health(args)
    except (BundleError, HealthError) as exc:
        print(f"deploy {args.command}: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, LungwatchError, ValueError, TypeError) as exc:
        print(f"deploy {args.command}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
