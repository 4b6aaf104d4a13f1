"""The ward view's intake fuzzer (bench/fuzz_view.py, ``make fuzz``) on a few thousand inputs:
no message escapes or is an internal error, the push thread's work never raises, the history
stores what it is given, and every kind of rejection the intake names is reached."""

from __future__ import annotations

from bench.fuzz_view import fuzz


def test_a_few_thousand_mutated_messages_break_nothing() -> None:
    record = fuzz(4000, seed=3)
    assert record["violations"] == []
    reasons = record["rejected_reasons"]
    assert isinstance(reasons, dict)
    assert {"bad_json", "invalid"} <= set(reasons)
    assert record["history_failed"] == 0
