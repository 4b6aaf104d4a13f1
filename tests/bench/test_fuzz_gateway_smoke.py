"""The gateway's intake fuzzer (bench/fuzz_gateway.py, ``make fuzz``) on a few thousand
inputs: no message escapes the intake, no tick or report fails, every queued HL7 message
keeps the IHE rules, and messages are both queued and refused for reasons the intake names."""

from __future__ import annotations

from bench.fuzz_gateway import fuzz


def test_a_few_thousand_mutated_messages_break_nothing() -> None:
    record = fuzz(4000, seed=3)
    assert record["violations"] == []
    outcomes = record["outcomes"]
    assert isinstance(outcomes, dict)
    assert {"refused:bad_json", "refused:invalid"} <= set(outcomes)
    assert record["hl7_queued"] > 0  # the valid ones went through, checked
