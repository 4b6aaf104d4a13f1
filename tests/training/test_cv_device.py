"""lungwatch cv device: ICBHI cycles judged per patient, the paired comparison of two runs, and
the refusal of a design without its fold models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sed_eval", reason="sed_eval is in the train extra")

from edge.runtime.offline import RecordingEvents
from export.cv_device import icbhi_score, paired_bootstrap, run_device_view, score_counts
from lungwatch.errors import ConfigError
from training.data.icbhi import IcbhiCycle, IcbhiRecording
from training.scoring.views import cycle_verdicts


def recording(name: str, cycles: list[tuple[float, float, bool, bool]]) -> IcbhiRecording:
    return IcbhiRecording(name, Path(f"{name}.flac"), name.split("_")[0], "1", "Al", "sc",
                          "Meditron", tuple(IcbhiCycle(*c) for c in cycles))  # fmt: skip


def test_every_cycle_gets_its_patient_label_and_verdict() -> None:
    recs = [recording("101_a", [(0, 2, True, False), (2, 4, False, False), (4, 6, False, True)])]
    found = {
        "101_a": RecordingEvents(
            physiological=[{"start_s": 0.5, "end_s": 1.0, "type": "Fine Crackle"},
                           {"start_s": 2.5, "end_s": 3.0, "type": "Wheeze"}],
            technical=[{"start_s": 4.0, "end_s": 6.0, "type": "poor_signal"}],
        )
    }  # fmt: skip
    assert cycle_verdicts(recs, found) == [
        ("101", "crackle", "crackle"),
        ("101", "normal", "wheeze"),
        ("101", "wheeze", "normal"),  # under poor_signal: not assessed, judged normal
    ]


def test_the_score_is_the_mean_of_se_and_sp_over_patients_counts() -> None:
    rows = [("1", "crackle", "crackle"), ("1", "normal", "normal"), ("2", "wheeze", "normal"),
            ("2", "normal", "wheeze"), ("2", "normal", "normal")]  # fmt: skip
    patients, counts = score_counts(rows)
    assert patients == ["1", "2"]
    assert counts.tolist() == [[1, 1, 1, 1], [1, 0, 2, 1]]
    assert icbhi_score(counts) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_a_run_that_judges_more_cycles_right_is_ahead_with_an_interval() -> None:
    rng = np.random.default_rng(1)
    truth = [(str(p), str(rng.choice(["normal", "crackle"]))) for p in range(30) for _ in range(6)]
    right = [(p, t, t) for p, t in truth]
    blind = [(p, t, "normal") for p, t in truth]
    d = paired_bootstrap(right, blind, resamples=300)
    assert d["difference"] == pytest.approx(0.5)
    assert 0 < d["low"] <= d["difference"] <= d["high"]
    assert d["patients"] == 30
    same = paired_bootstrap(blind, blind, resamples=50)
    assert same["difference"] == same["low"] == same["high"] == 0
    with pytest.raises(ConfigError, match="did not judge the same cycles"):
        paired_bootstrap(right[1:], blind[:-1], resamples=10)


@pytest.mark.requires_data
def test_a_design_without_its_fold_models_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "cv" / "lonely" / "seed0" / "fold0").mkdir(parents=True)
    (tmp_path / "cv" / "lonely" / "seed0" / "fold0" / "done.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"'lonely' seed 0: no finished fold model of folds "
                                          r"\[1, 2, 3, 4\]"):  # fmt: skip
        run_device_view("lonely", 0, tmp_path / "cv", tmp_path / "work", fp32=True)
