"""The fuzz harness itself (bench/fuzz.py, `make fuzz`) on a few thousand inputs: both protocol
versions, the decrypting decoder's refusals included."""

from __future__ import annotations

from bench.fuzz import fuzz


def test_fuzz_harness_finds_no_violation_on_a_short_run() -> None:
    record = fuzz(3000, seed=5, checkpoints=4)
    assert record["n_violations"] == 0, record["violations"]
    assert record["decoded_frames"] > 1000  # type: ignore[operator]
    link = record["link"]
    assert isinstance(link, dict)
    assert link["bad_crc"] > 0
    assert link["bad_header"] > 0
    assert record["decoded_v2"] > 500  # type: ignore[operator]
    for refusal in ("auth_failed", "replayed", "stale_session", "bad_tag"):
        assert link[refusal] > 0, refusal
