"""lungwatch views' judgements on hand-made device outputs: ICBHI cycles judged as
../shared/tools/device_eval.py judges them (events overlapping a cycle give its verdict, a
cycle mostly under poor_signal is not assessed), and the per-family event view of cycles."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("sed_eval", reason="sed_eval is in the train extra")

from edge.runtime.offline import RecordingEvents
from tests.streaming_fixture import tiny_checkpoint
from training.data.icbhi import IcbhiCycle, IcbhiRecording
from training.scoring.views import icbhi_training_patients, icbhi_view


def recording(name: str, cycles: list[tuple[float, float, bool, bool]]) -> IcbhiRecording:
    return IcbhiRecording(name, Path(f"{name}.flac"), name.split("_")[0], "1", "Al", "sc",
                          "Meditron", tuple(IcbhiCycle(*c) for c in cycles))  # fmt: skip


def event(start: float, end: float, type_: str) -> dict:
    return {"start_s": start, "end_s": end, "type": type_}


def test_cycles_are_judged_by_the_events_over_them() -> None:
    recs = [
        recording("101_a", [(0, 2, True, False), (2, 4, False, True), (4, 6, False, False),
                            (6, 8, True, True)]),
        recording("102_b", [(0, 3, False, False), (3, 6, True, False)]),
    ]  # fmt: skip
    found = {
        "101_a": RecordingEvents(
            physiological=[
                event(0.5, 1.0, "Fine Crackle"),
                event(2.2, 2.4, "Rhonchi"),
                event(6.5, 7.0, "Wheeze"),
            ],
            technical=[event(3.0, 4.0, "poor_signal")],
        ),
        # the second cycle lies under poor_signal for 2 of its 3 s: not assessed (normal)
        "102_b": RecordingEvents(
            physiological=[event(0.5, 1.0, "Fine Crackle"), event(4.0, 5.0, "Fine Crackle")],
            technical=[event(3.5, 6.0, "poor_signal")],
        ),
    }
    out = icbhi_view(recs, found)
    assert out["cycles"] == {"normal": 2, "crackle": 2, "wheeze": 1, "both": 1}
    # right: 101 crackle, 101 wheeze (1 of 2 s under poor signal: assessed), 101 normal;
    # wrong: 101 both (wheeze only), 102 normal (a crackle said), 102 crackle (not assessed)
    assert out["icbhi_se"] == pytest.approx(2 / 4)
    assert out["icbhi_sp"] == pytest.approx(1 / 2)
    assert out["icbhi_score"] == pytest.approx(0.5)
    assert out["unassessed"] == pytest.approx(1 / 6)
    assert out["poor_time"] == pytest.approx((1.0 + 2.5) / (8 + 6))
    assert out["cycle_se_crackle"] == pytest.approx(1 / 3)  # 101 crackle of 101 c, both, 102 c
    assert out["cycle_sp_wheeze"] == pytest.approx(4 / 4)
    assert {"f1_cas", "f1_das", "macro_f1"} <= set(out)


def test_the_icbhi_view_leaves_out_the_patients_the_checkpoint_says_it_trained_on(
    tmp_path: Path,
) -> None:
    """A model trained by ``lungwatch cv`` on ICBHI folds records its patients: the view leaves
    out exactly those, not the share its run config would draw (a different set)."""
    run = {"data": {"icbhi_fraction": 0.5, "icbhi_dir": str(tmp_path / "no-icbhi")}}
    (tmp_path / "cv").mkdir()
    tiny_checkpoint(tmp_path / "cv" / "model.pt", run=run, icbhi_patients=("107", "130"))
    assert icbhi_training_patients(tmp_path / "cv") == {"107", "130"}
    (tmp_path / "none").mkdir()
    tiny_checkpoint(tmp_path / "none" / "model.pt", icbhi_patients=())
    assert icbhi_training_patients(tmp_path / "none") == set()


@pytest.mark.requires_data
def test_the_shipped_model_has_no_icbhi_view_on_the_patients_it_trained_on() -> None:
    """The shipped model trained on every ICBHI ``train`` patient: its ICBHI view holds no
    recording and says so, rather than scoring it in sample as if held out."""
    from training.scoring.views import run_views

    shipped = Path(__file__).resolve().parents[2] / "models" / "sed"
    result = run_views(shipped, ["icbhi"], set())["icbhi"]
    assert result["recordings"] == 0
    assert len(result["patients_left_out"]) == 41
    assert "no view" in result["note"]
    assert "icbhi_score" not in result
