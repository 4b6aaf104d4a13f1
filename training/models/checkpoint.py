"""The checkpoint: the network's sizes beside its weights (as whisper keeps them) and all else
``lungwatch export`` needs (it reads nothing but this file). Only plain data is stored, so
:func:`load_checkpoint` reads it with ``weights_only=True`` (a checkpoint cannot run code).
Fields: docs/training.md, "Checkpoint format"."""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edge.features import FEATURE_KINDS, FeatureSpec
from lungwatch.errors import ConfigError, LungwatchError
from training.models.sed import SedConfig, SedNet

FORMAT = "lungwatch-sednet/1"
DEVICE_COLOUR_KEYS = (
    "device_prob",
    "device_gain_db",
    "device_eq_db",
    "device_lowpass_hz",
    "device_noise_db",
)
# retired options (docs/models/sed-lab.md) and their off values; runs with them off still load
RETIRED: dict[str, dict[str, Any]] = {
    "sizes": {"stem_channels": 0},
    "model": {"stem_channels": 0},
    "data": {"icbhi_repeat": 1},
    "loss": {"phase_pooling": "mean"},
    "features": {"band_norm": "mean"},
}
# retired switched options: (section, switch, its off value, its keys; none: the whole section)
RETIRED_SWITCHED: list[tuple[str, str, Any, tuple[str, ...]]] = [
    ("augment", "device_prob", 0.0, DEVICE_COLOUR_KEYS),
    ("mixtures", "count", 0, ()),
]


class CheckpointError(LungwatchError):
    """A file is not a lungwatch checkpoint, or one that cannot be used (the message says)."""


@dataclass
class Checkpoint:
    model: SedNet
    spec: FeatureSpec
    kinds: tuple[str, ...]
    outputs: tuple[str, ...]
    name: str = "sed"  # the run's name: the prefix of the exported model's id
    epoch: int = -1
    run: Mapping[str, Any] = field(default_factory=dict)  # the resolved run config
    detector: Mapping[str, Any] | None = None  # fitted rules (edge.inference.manifest's "detector")
    quality: Mapping[str, float] | None = None  # {"poor_on", "poor_off"}
    validation: Mapping[str, Any] = field(default_factory=dict)  # the kept epoch's scores
    # the ICBHI patients whose recordings trained it; None: not recorded (older checkpoints)
    icbhi_patients: tuple[str, ...] | None = None

    @property
    def mean(self) -> torch.Tensor:
        """The (K, F) training mean: the input normalisation's zero and the flush frame."""
        return self.model.input_mean


def save_checkpoint(path: Path, ckpt: Checkpoint) -> Path:
    data = {
        "format": FORMAT,
        "weights": ckpt.model.state_dict(),
        "sizes": dataclasses.asdict(ckpt.model.config),
        "feature_spec": ckpt.spec.to_dict(),
        "kinds": list(ckpt.kinds),
        "outputs": list(ckpt.outputs),
        "name": ckpt.name,
        "epoch": ckpt.epoch,
        "run": _plain(ckpt.run),
        "detector": _plain(ckpt.detector),
        "quality": _plain(ckpt.quality),
        "validation": _plain(ckpt.validation),
        "icbhi_patients": None if ckpt.icbhi_patients is None else sorted(ckpt.icbhi_patients),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    torch.save(data, temp)
    temp.replace(path)
    return path


def load_checkpoint(path: Path) -> Checkpoint:
    """The network in eval mode; :class:`CheckpointError` names the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, OSError, EOFError, pickle.UnpicklingError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a lungwatch checkpoint ({reason})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(
            f"{path}: not a lungwatch checkpoint (format {found!r}, expected {FORMAT!r})"
        )
    try:
        return _rebuild(data)
    except (KeyError, TypeError, ValueError, RuntimeError, ConfigError) as exc:
        raise CheckpointError(f"{path}: {_one_line(exc)}") from None


def without_retired(run: Mapping[str, Any]) -> dict[str, Any]:
    """``run`` (a stored run config, or ``{"sizes": ...}``) less the retired keys that are off;
    one that is on is refused (:class:`ConfigError` naming it: this code cannot rebuild it)."""
    out: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in run.items()}
    for section, offs in RETIRED.items():
        for key, off in offs.items():
            if isinstance(out.get(section), dict):
                _refuse_on(section, key, out[section].pop(key, off), off)
    for section, switch, off, keys in RETIRED_SWITCHED:
        part = out.get(section)
        if isinstance(part, dict):
            _refuse_on(section, switch, part.get(switch, off), off)
            for key in keys:
                part.pop(key, None)
            if not keys:
                del out[section]
    return out


def _refuse_on(section: str, key: str, value: Any, off: Any) -> None:
    if value != off:
        raise ConfigError(
            f"{section}.{key} is {value!r}: a retired option (docs/models/sed-lab.md), which "
            f"this lungwatch runs only at {off!r}; use the release that trained it"
        )


def _rebuild(data: Mapping[str, Any]) -> Checkpoint:
    sizes = without_retired({"sizes": data["sizes"]})["sizes"]
    for key in ("dilations", "kernel_widths"):
        sizes[key] = tuple(sizes[key])
    model = SedNet(SedConfig(**sizes))
    model.load_state_dict(data["weights"], strict=True)
    kinds = tuple(data["kinds"])
    if len(kinds) != model.config.n_kinds or not set(kinds) <= set(FEATURE_KINDS):
        raise ValueError(
            f"kinds {list(kinds)} do not fit a model of {model.config.n_kinds} kinds from "
            f"{FEATURE_KINDS}"
        )
    outputs = tuple(data["outputs"])
    if len(outputs) != model.config.n_outputs:
        raise ValueError(f"outputs {list(outputs)} but the model has {model.config.n_outputs}")
    spec = FeatureSpec.from_dict(data["feature_spec"], source="feature_spec")
    if spec.n_bands != model.config.n_bands:
        raise ValueError(
            f"feature_spec.n_bands {spec.n_bands} but the model reads {model.config.n_bands} bands"
        )
    return Checkpoint(
        model=model.eval(),
        spec=spec,
        kinds=kinds,
        outputs=outputs,
        name=str(data["name"]),
        epoch=int(data["epoch"]),
        run=without_retired(data["run"]),
        detector=data["detector"],
        quality=data["quality"],
        validation=dict(data["validation"]),
        icbhi_patients=_patients(data.get("icbhi_patients")),
    )


def _patients(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"icbhi_patients: expected a list of patient ids, got {value!r:.60}")
    return tuple(value)


def _plain(value: Any) -> Any:
    """JSON types (numpy numbers as floats, tuples as lists): what ``torch.load`` reads back."""
    return None if value is None else json.loads(json.dumps(value, default=float))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
