"""FeatureSpec as a contract: framing arithmetic and the refusal of a mismatched model."""

from __future__ import annotations

import pytest

from edge.features import FeatureSpec, n_frames, require_same_spec
from lungwatch.errors import FeatureSpecMismatchError


@pytest.mark.parametrize(
    ("n_samples", "lookahead", "expected"),
    [
        (0, 0, 0),
        (255, 0, 0),
        (256, 0, 1),
        (335, 0, 1),
        (336, 0, 2),
        (8000, 0, 97),
        (8000, 100, 96),
        (300, 100, 0),
    ],
)
def test_n_frames(n_samples: int, lookahead: int, expected: int) -> None:
    assert n_frames(FeatureSpec(), n_samples, lookahead) == expected


def test_require_same_spec_lists_every_difference() -> None:
    ours = FeatureSpec()
    require_same_spec(FeatureSpec(), ours, "model.onnx")
    with pytest.raises(FeatureSpecMismatchError) as info:
        require_same_spec(ours.replace(n_bands=32, hop_samples=160), ours, "model.onnx")
    message = str(info.value)
    assert message.startswith("model.onnx: feature spec differs")
    assert "hop_samples: model 160 vs config 80" in message
    assert "n_bands: model 32 vs config 64" in message
