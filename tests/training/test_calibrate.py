"""Task 2 record decision and its thresholds fitted on validation statistics."""

from __future__ import annotations

import numpy as np
import pytest

from edge.labels import EVENT_LABELS, POOR_QUALITY
from training.calibrate import fit_thresholds, task_score
from training.predict import RecordThresholds, record_decision, record_statistics

CLASSES = (*EVENT_LABELS, POOR_QUALITY)


def _probs(columns: dict[str, list[float]]) -> np.ndarray:
    """Window probabilities with the named classes set and the rest in Normal."""
    n = len(next(iter(columns.values())))
    probs = np.zeros((n, len(CLASSES)))
    for name, values in columns.items():
        probs[:, CLASSES.index(name)] = values
    probs[:, 0] = 1.0 - probs.sum(axis=1)
    return probs


def test_statistics_use_families_and_top_windows() -> None:
    probs = _probs(
        {
            "Wheeze": [0.1, 0.9, 0.8, 0.7, 0.0],
            "Fine Crackle": [0.0, 0.0, 0.1, 0.2, 0.3],
            "Wheeze+Crackle": [0.0, 0.1, 0.0, 0.0, 0.0],
        }
    )
    pq, cas, das = record_statistics(CLASSES, probs)
    assert pq == 0.0
    assert cas == pytest.approx(np.mean([1.0, 0.8, 0.7]))  # CAS: top three windows
    assert das == pytest.approx(np.mean([0.3, 0.2, 0.1]))  # DAS family


def test_decision_follows_thresholds() -> None:
    t = RecordThresholds(poor_quality=0.5, cas=0.6, das=0.6)
    assert record_decision(np.array([0.7, 0.9, 0.9]), t) == "Poor Quality"
    assert record_decision(np.array([0.1, 0.9, 0.9]), t) == "CAS & DAS"
    assert record_decision(np.array([0.1, 0.9, 0.2]), t) == "CAS"
    assert record_decision(np.array([0.1, 0.2, 0.7]), t) == "DAS"
    assert record_decision(np.array([0.1, 0.2, 0.2]), t) == "Normal"


def test_fitted_thresholds_separate_what_defaults_confuse() -> None:
    # Normal records have a noisy CAS score up to 0.7; real CAS records are above 0.85.
    rng = np.random.default_rng(0)
    normal = np.column_stack(
        [rng.uniform(0, 0.2, 30), rng.uniform(0.5, 0.7, 30), rng.uniform(0, 0.3, 30)]
    )
    cas = np.column_stack(
        [rng.uniform(0, 0.2, 10), rng.uniform(0.85, 1.0, 10), rng.uniform(0, 0.3, 10)]
    )
    stats = np.vstack([normal, cas])
    truth = ["Normal"] * 30 + ["CAS"] * 10
    default = task_score(stats, truth, RecordThresholds())
    fitted, score = fit_thresholds(stats, truth)
    assert default < 0.9
    assert score == 1.0
    assert normal[:, 1].max() <= fitted.cas < cas[:, 1].min()
