"""``lungwatch gateway``: a site's breathing readings, findings and alarm conditions to the
hospital, over HL7 v2.6 MLLP (IHE PCD-01 observations, IHE PCD-04 alarm reports) and/or as
FHIR R4 Observations, from durable queues (``docs/gateway.md``).

Runs until SIGTERM / Ctrl-C, printing one line when it is up; exits 1 when a courier's
thread stops unasked (what it queued stays in its queue for the next start).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.config import GatewayConfig
from lungwatch.cli import ArgumentParser
from lungwatch.config import load_config
from lungwatch.private import private_umask
from lungwatch.supervision import ThreadStoppedError, stop_on_signals

if TYPE_CHECKING:
    from gateway.outbox import Outbox


def _queues(config: GatewayConfig) -> Iterator[tuple[str, str, Outbox]]:
    from gateway.outbox import Outbox

    places = [("hl7", config.queue)] if config.hl7 is not None else []
    places += [("fhir", config.fhir.queue)] if config.fhir is not None else []
    for name, path in places:
        outbox = Outbox(Path(path))
        try:
            yield name, path, outbox
        finally:
            outbox.close()


def queue_status(config: GatewayConfig) -> dict[str, object]:
    """Each destination's queue: counts and refused messages (read from the files alone)."""
    found: dict[str, object] = {}
    for name, path, outbox in _queues(config):
        refused = [{"key": k, "control_id": c, "reply": r} for k, c, r in outbox.refusals()]
        found[name] = {"queue": path, "counts": outbox.counts(), "refused": refused}
    return found


def resend(config: GatewayConfig, which: str) -> dict[str, int]:
    return {name: outbox.resend(which) for name, _, outbox in _queues(config)}


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch gateway", description=__doc__)
    parser.add_argument("--config", type=Path, action="append", required=True,
                        help="the gateway's YAML (site, mqtt, hl7, fhir, queue, beds, alarms, "
                        "alarm_reports, adt_file); given again, each later file is merged over "
                        "the ones before")  # fmt: skip
    parser.add_argument(
        "--status", action="store_true", help="print the queue's counts and refused messages"
    )
    parser.add_argument(
        "--resend", metavar="WHICH",
        help="put refused messages back in their queues, to be sent again in their place "
        "(same bytes, same control id): 'all', or one message's control id or key",
    )  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    args = parser.parse_args(argv)
    config = load_config(GatewayConfig, args.config)
    if args.status:
        print(json.dumps(queue_status(config), indent=2))
        return 0
    if args.resend is not None:
        resent = resend(config, args.resend)
        if not any(resent.values()):
            parser.error(f"--resend {args.resend}: no refused message matches it "
                         "(--status lists them)")  # fmt: skip
        print(json.dumps({"resent": resent}))
        return 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")  # fmt: skip
    from gateway.service import Gateway

    stop = threading.Event()
    stop_on_signals(stop)  # not set in the handler: it can interrupt stop.wait() (a hang)
    before = private_umask()  # the queue holds patient observations: 0600 whatever umask
    try:
        gateway = Gateway(config).start()
        to = []
        if config.hl7 is not None:
            to.append(f"HL7 MLLP {config.hl7.host}:{config.hl7.port} (queue {config.queue})")
        if config.fhir is not None:
            to.append(f"FHIR {config.fhir.base_url} (queue {config.fhir.queue})")
        print(f"lungwatch gateway: site {config.site}, broker {config.mqtt.address} -> "
              f"{', '.join(to)}", flush=True)  # fmt: skip
        try:
            while not stop.wait(1.0):
                failure = gateway.check()
                if failure is not None:
                    raise ThreadStoppedError(f"{failure}; queued messages stay for the next start")
        finally:
            queues = gateway.queues()
            gateway.stop()
    finally:
        os.umask(before)
    print(f"lungwatch gateway: stopped; queues {json.dumps(queues)}", flush=True)
    return 0
