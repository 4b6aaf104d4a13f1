"""Configuration loading: one clear line per problem, naming file, key, value, allowed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import pytest
import yaml
from pydantic import Field, PositiveInt

from edge.features import FeatureSpec
from lungwatch.config import InvalidValueError, Settings, check, load_config, to_mapping
from lungwatch.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Inner:
    on_threshold: float = 0.5
    mode: Literal["fast", "exact"] = "fast"

    def __post_init__(self) -> None:
        check(0.0 < self.on_threshold < 1.0, "on_threshold", self.on_threshold, "in (0, 1)")


@dataclass(frozen=True)
class Outer:
    name: str
    detector: Inner = field(default_factory=Inner)
    streams: tuple[int, ...] = ()
    enabled: bool = True


@dataclass(frozen=True)
class Bounded(Settings):
    window_s: Annotated[float, Field(ge=5)] = 30.0
    port: Annotated[int, Field(gt=0, lt=65536)] = 1883
    apnoea_s: Annotated[float, Field(gt=0, le=60)] | None = None
    beds: PositiveInt = 1
    low: float = 0.0
    band: tuple[float, float] = (1.0, 2.0)

    def __post_init__(self) -> None:
        check(self.low < self.window_s, "low", self.low, "< window_s")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_valid_file_loads_with_nested_defaults(tmp_path: Path) -> None:
    cfg = load_config(Outer, _write(tmp_path, "name: ward\nstreams: [1, 2]\n"))
    assert cfg == Outer(name="ward", streams=(1, 2))
    assert to_mapping(cfg)["detector"] == {"on_threshold": 0.5, "mode": "fast"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "name: a\ndetector:\n  on_threshold: 1.5\n",
            "config.yaml: detector.on_threshold must be in (0, 1), got 1.5",
        ),
        (
            "name: a\ndetector:\n  mode: slow\n",
            "config.yaml: detector.mode must be one of 'fast', 'exact', got 'slow'",
        ),
        ("name: a\ndetectr: {}\n", "config.yaml: detectr must be one of"),
        ("name: 3\n", "config.yaml: name must be a string, got 3"),
        ("name: a\nstreams: [1, x]\n", "config.yaml: streams[1] must be an integer, got 'x'"),
        ("name: a\nenabled: 1\n", "config.yaml: enabled must be true or false, got 1"),
        ("detector: {}\n", "config.yaml: name must be given (required key), got None"),
        ("name: a\ndetector: 3\n", "config.yaml: detector must be a mapping of keys, got 3"),
    ],
)
def test_invalid_value_gives_one_line_naming_file_key_value(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(Outer, _write(tmp_path, text))
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config.yaml: line 2 invalid YAML"):
        load_config(Outer, _write(tmp_path, "name: a\n\tstreams: [1]\n"))


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(Outer, tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping, got list"):
        load_config(Outer, _write(tmp_path, "- 1\n- 2\n"))


def test_overrides_apply_and_are_validated(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: a\n")
    cfg = load_config(Outer, path, ["detector.on_threshold=0.7", "streams=[3]"])
    assert cfg.detector.on_threshold == 0.7
    assert cfg.streams == (3,)
    with pytest.raises(ConfigError, match=r"detector\.on_threshold must be in"):
        load_config(Outer, path, ["detector.on_threshold=2"])
    with pytest.raises(ConfigError, match=r"must look like key\.sub=value"):
        load_config(Outer, path, ["detector.on_threshold"])


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("kind", "mfcc", "one of 'logmel', 'gammatone', 'cwt'"),
        ("hop_samples", 300, "an integer in [1, frame_samples=256]"),
        ("n_fft", 300, "a power of two >= frame_samples=256"),
        ("fmax_hz", 5000.0, "a number in (fmin_hz=50.0, nyquist=4000.0]"),
        ("n_bands", 0, "an integer >= 1"),
        ("log_offset", 0.0, "a number > 0"),
    ],
)
def test_feature_spec_validation(key: str, value: object, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        FeatureSpec.from_dict({key: value}, source="model.ckpt")
    assert str(info.value) == f"model.ckpt: {key} must be {allowed}, got {value!r}"


def test_feature_spec_round_trips_through_dict() -> None:
    spec = FeatureSpec(kind="cwt", n_bands=32, hop_samples=64)
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert spec.hop_ms == 8.0


NOT_SHIPPED = {".venv", ".venv-edge", "out", "tests", ".git"}  # environments, outputs, fixtures


def _shipped_yaml_files() -> list[Path]:
    files = REPO.glob("**/*.yaml")
    return sorted(p for p in files if not NOT_SHIPPED & set(p.relative_to(REPO).parts))


def test_shipped_yaml_files_comment_every_key() -> None:
    files = _shipped_yaml_files()
    assert files, "no shipped YAML found"
    for path in files:
        yaml.safe_load(path.read_text())
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#") or stripped.startswith("- "):
                continue
            if ":" in stripped:
                assert "#" in stripped, f"{path.name}:{number} key without a comment: {line}"


def test_later_config_files_merge_over_earlier_ones(tmp_path: Path) -> None:
    """``load_layers``: sections merged key by key, lists and values replaced whole; an error
    names every file of the stack."""
    from edge.runtime.config import load_runtime_config
    from lungwatch.config import load_layers

    base = tmp_path / "ward.yaml"
    base.write_text(
        "site: w\ndevice_id: d\nstreams: [{id: b, source: a.wav}]\n"
        "mqtt: {host: 127.0.0.2, port: 1, keepalive_s: 9}\ndetector: {latching: [high, medium]}\n"
    )
    client = tmp_path / "client.yaml"
    client.write_text("mqtt: {username: u, port: 2}\ndetector: {latching: [high]}\n")
    data, source = load_layers([base, client])
    assert source == "ward.yaml+client.yaml"
    assert data["mqtt"] == {"host": "127.0.0.2", "port": 2, "keepalive_s": 9, "username": "u"}
    assert data["detector"] == {"latching": ["high"]}
    assert data["streams"] == [{"id": "b", "source": "a.wav"}]
    config = load_runtime_config([base, client])
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.username) == ("127.0.0.2", 2, "u")
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt: {port: many}\n")
    with pytest.raises(ConfigError, match=r"ward\.yaml\+bad\.yaml: mqtt\.port"):
        load_runtime_config([base, bad])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"window_s": 2}, "window_s must be a number >= 5, got 2"),
        ({"window_s": float("inf")}, "window_s must be a number >= 5, got inf"),
        ({"window_s": float("nan")}, "window_s must be a number >= 5, got nan"),
        ({"port": 65536}, "port must be an integer in [1, 65535], got 65536"),
        ({"apnoea_s": 0.0}, "apnoea_s must be a number in (0, 60] or null, got 0.0"),
        ({"beds": 0}, "beds must be an integer >= 1, got 0"),
        ({"low": 40.0}, "low must be < window_s, got 40.0"),  # the class's own check, after
    ],
)
def test_declared_bounds_hold_in_files_and_in_code(
    tmp_path: Path, values: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidValueError) as built:
        Bounded(**values)  # type: ignore[arg-type]
    assert str(built.value) == message
    text = "".join(f"{k}: {yaml.safe_dump(v).splitlines()[0]}\n" for k, v in values.items())
    with pytest.raises(ConfigError) as loaded:
        load_config(Bounded, _write(tmp_path, text))
    assert str(loaded.value) == f"config.yaml: {message}"


def test_bounds_pass_their_edges_and_null() -> None:
    assert Bounded(window_s=5, port=65535, apnoea_s=60.0, beds=1).port == 65535
    assert Bounded(apnoea_s=None).apnoea_s is None


def test_an_infinite_number_in_a_list_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as loaded:
        load_config(Bounded, _write(tmp_path, "band: [.inf, 2.0]\n"))
    assert str(loaded.value) == "config.yaml: band[0] must be a finite number, got inf"


def test_every_config_class_with_declared_bounds_checks_them_in_code() -> None:
    """A dataclass that declares bounds but is no Settings would hold them in files only."""
    import dataclasses
    import importlib
    import pkgutil
    import typing

    from lungwatch.config import _bounds

    unchecked, seen = [], 0
    for package in ("edge", "lungwatch", "wardview", "gateway", "training", "deploy", "demo"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            if info.name.endswith("__main__"):  # runs a command when imported
                continue
            try:
                module = importlib.import_module(info.name)
            except ImportError:  # an optional dependency (TensorRT) not here
                continue
            for cls in vars(module).values():
                if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
                    continue
                if cls.__module__ != module.__name__:
                    continue
                hints = typing.get_type_hints(cls, include_extras=True)
                if any(_bounds(hints[f.name]) for f in dataclasses.fields(cls)):
                    seen += 1
                    if not issubclass(cls, Settings):
                        unchecked.append(f"{module.__name__}.{cls.__name__}")
    assert seen >= 20  # the walk found the config sections
    assert unchecked == []
