"""Fuzz the hospital gateway's intake: no dead thread, no IHE rule broken, memory bounded.

    make fuzz             # every fuzzer; or: python -m bench.fuzz_gateway [--inputs 50000]

Mutated device messages go into real HL7 and FHIR queues; the corpus, mutators and violations
are docs/gateway.md, "Fuzzing", the HL7 rules those of ``tests/gateway/conformance.py``.
Writes bench/results/fuzz_gateway.{md,json}; exits 1 on any violation.
"""

from __future__ import annotations

import json
import logging
import platform
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench.fuzz import _checkpoint, _memory_verdict, heap_table, run_cli
from bench.fuzz_view import DEVICES, SITE, Mutator, make_corpus
from gateway.config import BedEntry, FhirConfig, GatewayConfig, Hl7Config
from gateway.outbox import Outbox
from gateway.service import Intake, fhir_route, hl7_route
from lungwatch.events import ack_payload, ack_topic

HEAP_GROWTH_LIMIT_BYTES = 4 * 1024 * 1024
TICK_EVERY = 50


def _corpus(now_s: float) -> list[tuple[str, bytes]]:
    """The view's corpus and the acks a gateway reads."""
    corpus = make_corpus(now_s)
    for device in DEVICES:
        body = ack_payload(SITE, device, "bed-1", "apnoea", "nurse.kim",
                           "2026-05-09T07:05:00.000Z", 0)  # fmt: skip
        corpus.append((ack_topic(SITE, device, "bed-1"), body.encode()))
    return corpus


def fuzz(n_inputs: int, seed: int, checkpoints: int = 10) -> dict[str, object]:
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # a line per refused message: not here
    try:
        with tempfile.TemporaryDirectory() as folder:
            return _fuzz(n_inputs, seed, checkpoints, Path(folder))
    finally:
        quiet.setLevel(level)


def _fuzz(n_inputs: int, seed: int, checkpoints: int, folder: Path) -> dict[str, object]:
    from tests.gateway.conformance import problems

    violations: list[str] = []
    points: list[dict[str, float]] = []
    hl7 = Hl7Config(host="127.0.0.1", sending_eui64="00163EFFFE000001")
    fhir = FhirConfig(base_url="http://127.0.0.1:9/r4", queue=str(folder / "fhir.sqlite"))
    config = GatewayConfig(site=SITE, hl7=hl7, fhir=fhir, queue=str(folder / "hl7.sqlite"),
                           beds=(BedEntry(DEVICES[0], "bed-1", "ICU^1^1^HOSP"),))  # fmt: skip
    hl7_box, fhir_box = Outbox(Path(config.queue)), Outbox(Path(fhir.queue))
    now = [time.time()]
    intake = Intake(config, [hl7_route(hl7, hl7_box), fhir_route(fhir_box)], clock=lambda: now[0])
    mutator = Mutator(_corpus(time.time()), seed)
    start_s = time.perf_counter()
    for i in range(n_inputs):
        topic, payload = mutator.make()
        bugs = intake.counts["refused:internal_error"]
        try:
            intake.handle(topic, payload)
        except Exception as exc:  # the MQTT thread would die
            violations.append(f"input {i}: handle raised {type(exc).__name__}: {exc}")
        if intake.counts["refused:internal_error"] > bugs:  # its last guard caught a bug
            violations.append(f"input {i}: internal_error on {topic[:80]!r}")
        if i % TICK_EVERY == TICK_EVERY - 1:
            now[0] += 60.0
            try:
                intake.tick()
            except Exception as exc:  # the alarm thread's tick would fail
                violations.append(f"input {i}: tick raised {type(exc).__name__}: {exc}")
        if (i + 1) % max(n_inputs // checkpoints, 1) == 0:
            points.append(_checkpoint(i + 1, n_inputs, start_s))
    tracemalloc.stop()
    assert intake.alarms is not None
    if intake.alarms.counts.get("report_errors"):
        violations.append(f"{intake.alarms.counts['report_errors']} alarm reports failed")
    hl7_texts = [t for (t,) in hl7_box._db.execute("SELECT message FROM outbox")]
    for text in hl7_texts:
        if wrong := problems(text, equipment=False):
            violations.append(f"a queued HL7 message breaks a rule: {wrong[0]}")
    fhir_texts = [t for (t,) in fhir_box._db.execute("SELECT message FROM outbox")]
    for text in fhir_texts:
        try:
            json.loads(text)
        except ValueError as exc:
            violations.append(f"a queued FHIR resource is not JSON: {exc}")
    hl7_box.close()
    fhir_box.close()
    violations += _memory_verdict(points, HEAP_GROWTH_LIMIT_BYTES)
    outcomes = dict(sorted(intake.counts.items()))
    return {
        "inputs": n_inputs, "seed": seed, "seconds": round(time.perf_counter() - start_s, 1),
        "outcomes": outcomes, "hl7_queued": len(hl7_texts), "fhir_queued": len(fhir_texts),
        "alarm_reports": intake.alarms.counts.get("reports", 0),
        "unreportable": intake.alarms.counts.get("unreportable", 0),
        "checkpoints": points, "violations": violations[:20], "n_violations": len(violations),
    }  # fmt: skip


def render(record: dict[str, Any]) -> str:
    lines = [
        f"Fuzz of the hospital gateway's intake: {record['inputs']:,} mutated device messages, "
        f"seed {record['seed']}, {record['seconds']} s; {platform.machine()}, Python "
        f"{platform.python_version()}",
        "",
        f"- violations: {record['n_violations']} (escaped, failed tick or report, a queued "
        "message breaking the IHE rules, memory)",
        f"- queued: {record['hl7_queued']:,} HL7 messages (all conformant unless a violation "
        f"says otherwise; {record['alarm_reports']:,} of them alarm reports, "
        f"{record['unreportable']} conditions set aside), {record['fhir_queued']:,} FHIR "
        "resources",
        "- outcomes: " + ", ".join(f"{k} {v:,}" for k, v in record["outcomes"].items()),
        "",
        *heap_table(record["checkpoints"]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_cli(argv, "fuzz_gateway", __doc__.splitlines()[0], 50_000, fuzz, render)


if __name__ == "__main__":
    raise SystemExit(main())
