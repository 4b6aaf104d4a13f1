"""Configuration: frozen dataclasses loaded from YAML, validated once.

A config class's ``__post_init__`` checks its own values with :func:`check`;
:func:`from_mapping` checks types field by field. Every problem is one :class:`ConfigError`
line naming the file, the dotted key, the value and what is allowed::

    demo.yaml: features.n_bands must be an integer >= 1, got 0
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from lungwatch.errors import ConfigError
from lungwatch.private import others_may_read, read_private

T = TypeVar("T")


class InvalidValueError(ConfigError):
    """Raised inside a dataclass's validation; :func:`from_mapping` prefixes the source."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        super().__init__(f"{key} must be {allowed}, got {value!r}")
        self.key = key
        self.value = value
        self.allowed = allowed


def check(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise InvalidValueError(key, value, allowed)


def read_secret_line(path: str | Path, what: str) -> str:
    """The first line of a secret file; ConfigError when it cannot be read, others may read
    it (the mode of the very file read) or the line is empty. ``what`` names it in errors."""
    path = Path(path)
    try:
        text, mode = read_private(path, "utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the {what} is not UTF-8 text") from None
    if others_may_read(mode):
        raise ConfigError(f"{path}: others may read this {what} (chmod 600 {path})")
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise ConfigError(f"{path}: the {what}'s first line is empty")
    return lines[0]


def json_object(text: str, where: str, error: type[Exception] = ConfigError) -> dict[str, Any]:
    """The JSON object in ``text``; ``error`` names ``where`` and the line otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(value, dict):
        raise error(f"{where}: top level must be a JSON object, got {type(value).__name__}")
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping at the top level."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a YAML text file (not UTF-8: {exc.reason} at byte {exc.start})"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(exc, 'problem', exc)})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_layers(paths: str | Path | Sequence[str | Path]) -> tuple[dict[str, Any], str]:
    """One mapping from YAML files, each merged over the ones before (:func:`merge_mappings`),
    and the name errors give it (``base.yaml+client.yaml``)."""
    layers = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    if not layers:
        raise ConfigError("no config file given")
    data: dict[str, Any] = {}
    for path in layers:
        data = merge_mappings(data, load_yaml(path))
    return data, "+".join(path.name for path in layers)


def merge_mappings(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: mappings merged key by key, anything else (a list too) replaced;
    neither argument changes."""
    out = _deep_copy(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_mappings(out[key], value)
        else:
            out[key] = _deep_copy(value) if isinstance(value, Mapping) else value
    return out


def load_config(
    cls: type[T], path: str | Path | Sequence[str | Path], overrides: list[str] | None = None
) -> T:
    """``cls`` from YAML files (:func:`load_layers`) and ``key.sub=value`` overrides."""
    data, source = load_layers(path)
    if overrides:
        data = apply_overrides(data, overrides, source=source)
    return from_mapping(cls, data, source=source)


def from_mapping(cls: type[T], data: Mapping[str, Any], source: str = "<config>") -> T:
    """The dataclass ``cls`` of ``data``; errors name ``source`` and the key."""
    try:
        return _build(cls, data, prefix="")
    except InvalidValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def to_mapping(obj: Any) -> dict[str, Any]:
    """The plain-data (YAML/JSON-safe) form of a config dataclass."""
    result = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            value = to_mapping(value)
        elif isinstance(value, tuple):
            value = list(value)
        result[f.name] = value
    return result


def apply_overrides(data: Mapping[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """A copy of ``data`` with ``a.b=value`` overrides (values parsed as YAML)."""
    out: dict[str, Any] = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{source}: override {item!r} must look like key.sub=value")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: override {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def _build(cls: type[T], data: Mapping[str, Any], prefix: str) -> T:
    if not isinstance(data, Mapping):
        raise InvalidValueError(prefix.rstrip(".") or "<top>", data, "a mapping of keys")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidValueError(
            prefix + str(unknown[0]), data[unknown[0]], f"one of {sorted(fields)}"
        )
    kwargs = {name: _convert(hints[name], data[name], prefix + name) for name in data}
    try:
        return cls(**kwargs)
    except InvalidValueError as exc:
        raise InvalidValueError(prefix + exc.key, exc.value, exc.allowed) from None
    except TypeError:  # a required key is missing
        missing = [n for n, f in fields.items() if n not in data and _is_required(f)]
        if missing:
            raise InvalidValueError(prefix + missing[0], None, "given (required key)") from None
        raise


def _is_required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")  # type: ignore[arg-type]
    if origin is Literal:
        allowed = typing.get_args(tp)
        check(value in allowed, key, value, "one of " + ", ".join(map(repr, allowed)))
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            check(len(args) < len(typing.get_args(tp)), key, value, "given (not null)")
            return None
        return _convert(args[0], value, key)
    if origin is tuple:
        item_type = typing.get_args(tp)[0]
        check(isinstance(value, list | tuple), key, value, "a list")
        return tuple(_convert(item_type, v, f"{key}[{i}]") for i, v in enumerate(value))
    return _SCALARS.get(tp, _any)(value, key)


def _to_int(value: Any, key: str) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool)
    check(ok, key, value, "an integer")
    return int(value)


def _to_float(value: Any, key: str) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    check(ok, key, value, "a number")
    return float(value)


def _to_str(value: Any, key: str) -> str:
    check(isinstance(value, str), key, value, "a string")
    return str(value)


def _to_bool(value: Any, key: str) -> bool:
    check(isinstance(value, bool), key, value, "true or false")
    return bool(value)


def _any(value: Any, key: str) -> Any:
    return value


_SCALARS: dict[Any, Callable[[Any, str], Any]] = {
    int: _to_int,
    float: _to_float,
    str: _to_str,
    bool: _to_bool,
}
