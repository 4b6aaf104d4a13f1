"""``lungwatch gateway``: a site's breathing readings and findings to the hospital over HL7
v2.6 MLLP (IHE PCD-01), from a durable queue (``docs/gateway.md``).

    lungwatch gateway --config gateway.yaml [--config more.yaml] [-v]
    lungwatch gateway --config gateway.yaml --status    # the queue: counts, refused messages

Runs until SIGTERM / Ctrl-C, printing one line when it is up; exits 1 when its courier's
thread stops unasked (what it queued stays in the queue for the next start).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path

from gateway.config import GatewayConfig
from lungwatch.cli import ArgumentParser
from lungwatch.config import load_config
from lungwatch.private import private_umask
from lungwatch.supervision import ThreadStoppedError


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="lungwatch gateway", description=__doc__)
    parser.add_argument("--config", type=Path, action="append", required=True,
                        help="the gateway's YAML (site, mqtt, hl7, queue, beds); given again, "
                        "each later file is merged over the ones before")  # fmt: skip
    parser.add_argument(
        "--status", action="store_true", help="print the queue's counts and refused messages"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    args = parser.parse_args(argv)
    config = load_config(GatewayConfig, args.config)
    if args.status:
        from gateway.outbox import Outbox

        outbox = Outbox(Path(config.queue))
        try:
            refused = [{"key": k, "control_id": c, "reply": r} for k, c, r in outbox.refusals()]
            print(json.dumps({"queue": outbox.counts(), "refused": refused}, indent=2))
        finally:
            outbox.close()
        return 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")  # fmt: skip
    from gateway.service import Gateway

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    before = private_umask()  # the queue holds patient observations: 0600 whatever umask
    try:
        gateway = Gateway(config).start()
        hl7 = config.hl7
        print(f"lungwatch gateway: site {config.site}, broker {config.mqtt.address} -> HL7 MLLP "
              f"{hl7.host}:{hl7.port}, queue {config.queue}", flush=True)  # fmt: skip
        try:
            while not stop.wait(1.0):
                failure = gateway.check()
                if failure is not None:
                    raise ThreadStoppedError(f"{failure}; queued messages stay for the next start")
        finally:
            queue = gateway.outbox.counts()
            gateway.stop()
    finally:
        os.umask(before)
    print(f"lungwatch gateway: stopped; queue {json.dumps(queue)}", flush=True)
    return 0
