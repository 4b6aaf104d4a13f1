"""A distillation teacher: per recording, the mean logit of a design's fold models (chosen folds,
every seed) divided by ``temperature``, through the sigmoid; a mean of probabilities would
flatten them (docs/training.md, "Distillation")."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lungwatch.errors import ConfigError
from training.data.recordings import Recording

EPS = 1e-4


def fold_models(design: Path, folds: Sequence[int] | None = None) -> list[Path]:
    """The finished fold folders of ``design`` (every seed) among ``folds`` (None: all)."""
    found = sorted(
        p.parent
        for p in design.glob("seed*/fold*/done.json")
        if folds is None or int(p.parent.name.removeprefix("fold")) in folds
    )
    if not found:
        which = "any fold" if folds is None else f"folds {list(folds)}"
        raise ConfigError(f"teacher {design}: no finished fold model of {which} (cv train first)")
    return found


def teacher_outputs(
    design: Path, folds: Sequence[int] | None = None, temperature: float = 1.0
) -> dict[str, np.ndarray]:
    """``{"<set>/<record>": (n, O) float32}``: the teacher's outputs."""
    sums: dict[str, np.ndarray] = {}
    models = fold_models(design, folds)
    for folder in models:
        with np.load(folder / "outputs.npz") as stored:
            for key in stored.files:
                p = np.clip(stored[key].astype(np.float32), EPS, 1 - EPS)
                logit = np.log(p / (1 - p))
                sums[key] = sums[key] + logit if key in sums else logit
    return {key: 1.0 / (1.0 + np.exp(-s / (len(models) * temperature))) for key, s in sums.items()}


def attach(recs: Sequence[Recording], soft: dict[str, np.ndarray], prefix: str) -> int:
    """Set each recording's ``soft`` (O, N) from ``soft["<prefix>/<id>"]``; how many had one."""
    n = 0
    for r in recs:
        p = soft.get(f"{prefix}/{r.record_id}")
        if p is None:
            continue
        if p.shape[0] != r.n_frames:
            raise ConfigError(
                f"teacher output of {r.record_id}: {p.shape[0]} frames, the recording has "
                f"{r.n_frames} (another front end or grid?)"
            )
        r.soft = p.T.astype(np.float16)
        n += 1
    return n
