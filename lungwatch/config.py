"""Configuration: frozen dataclasses loaded from YAML, validated once: :func:`from_mapping`
checks the types with pydantic (strictly, as JSON's: an integer is not ``true``, a number not
a string) and the bounds fields declare (:class:`Settings`), then each class's
``__post_init__`` relates its fields with :func:`check`. Every problem is one
:class:`ConfigError` line naming the file, the dotted key, the value and what is allowed::

    demo.yaml: features.n_bands must be an integer >= 1, got 0"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import types
import typing
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from lungwatch.errors import ConfigError
from lungwatch.private import others_may_read, read_private

T = TypeVar("T")


class InvalidValueError(ConfigError, ValueError):
    """Raised inside a dataclass's validation; :func:`from_mapping` prefixes the source."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        super().__init__(f"{key} must be {allowed}, got {value!r}")
        self.key = key
        self.value = value
        self.allowed = allowed

    def under(self, prefix: str) -> InvalidValueError:
        """The same problem with its key inside the section ``prefix`` ("": as it is)."""
        if not prefix:
            return self
        return InvalidValueError(prefix if self.key == "<top>" else f"{prefix}.{self.key}",
                                 self.value, self.allowed)  # fmt: skip


def check(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise InvalidValueError(key, value, allowed)


Share = Annotated[float, Field(ge=0, le=1)]  # a share or a probability


class Settings:
    """Base: declared field bounds are checked on every construction, before ``__post_init__``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own: Callable[[Any], None] | None = cls.__dict__.get("__post_init__")
        if own is None and getattr(getattr(cls, "__post_init__", None), "checks_bounds", False):
            return  # an inherited one checks type(self)'s bounds already

        def post_init(self: Any) -> None:
            for name, hint, bounds in _bounded_fields(cast(Hashable, type(self))):
                value = getattr(self, name)
                if value is not None and not _within(value, bounds):
                    raise InvalidValueError(name, value, _bounds_text(hint))
            if own is not None:
                own(self)

        post_init.checks_bounds = True  # type: ignore[attr-defined]
        cls.__post_init__ = post_init  # type: ignore[attr-defined]


_OPS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _bounds(hint: Any) -> tuple[type, dict[str, Any]] | None:
    """(type, bounds) of ``Annotated[T, Field(...)]``, also inside ``| None``; None: no bounds."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(filter(None, map(_bounds, typing.get_args(hint))), None)
    if typing.get_origin(hint) is not Annotated:
        return None
    base, *extras = typing.get_args(hint)
    found = {}
    for extra in extras:
        for item in extra.metadata if isinstance(extra, FieldInfo) else [extra]:
            found.update({k: getattr(item, k) for k in _OPS if hasattr(item, k)})
    return (base, found) if found else None


@functools.cache
def _bounded_fields(cls: Hashable) -> list[tuple[str, Any, dict[str, Any]]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    found = [
        (f.name, hints[f.name], _bounds(hints[f.name])) for f in dataclasses.fields(cast(Any, cls))
    ]
    return [(name, hint, bounds[1]) for name, hint, bounds in found if bounds]


def _within(value: Any, b: dict[str, Any]) -> bool:
    if isinstance(value, numbers.Real) and not math.isfinite(value):
        return False
    return not (("gt" in b and value <= b["gt"]) or ("ge" in b and value < b["ge"])
                or ("lt" in b and value >= b["lt"]) or ("le" in b and value > b["le"]))  # fmt: skip


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bounds_text(hint: Any) -> str:
    """``a number > 0``, ``an integer in [1, 100] or null``: what a bounded field takes."""
    bounds = _bounds(hint)
    if bounds is None:
        return "a finite number"
    base, b = bounds
    if base is int:  # an integer > 0 is one >= 1
        b = {
            {"gt": "ge", "lt": "le"}.get(k, k): v + (k == "gt") - (k == "lt") for k, v in b.items()
        }
    lo = next(((k, b[k]) for k in ("gt", "ge") if k in b), None)
    hi = next(((k, b[k]) for k in ("lt", "le") if k in b), None)
    if lo and hi:
        left, right = "([" [lo[0] == "ge"], ")]" [hi[0] == "le"]  # fmt: skip
        text = f"in {left}{_num(lo[1])}, {_num(hi[1])}{right}"
    else:
        key, value = cast(tuple[str, Any], lo or hi)
        text = f"{_OPS[key]} {_num(value)}"
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return f"{'an integer' if base is int else 'a number'} {text}" + " or null" * optional


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
    """Files merged, later over earlier, and their name in errors (``base.yaml+client.yaml``)."""
    layers = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    if not layers:
        raise ConfigError("no config file given")
    data: dict[str, Any] = {}
    for path in layers:
        data = merge_mappings(data, load_yaml(path))
    return data, "+".join(path.name for path in layers)


def merge_mappings(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: mappings merged by key, the rest (lists too) replaced; inputs kept."""
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


def from_mapping(
    cls: type[T], data: Mapping[str, Any], source: str = "<config>", prefix: str = ""
) -> T:
    """The dataclass ``cls`` of ``data``; errors name ``source`` and the key (under ``prefix``,
    where ``data`` is a section of a larger file)."""
    try:
        return _build(cls, data)
    except InvalidValueError as exc:
        raise ConfigError(f"{source}: {exc.under(prefix)}") from None


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


def _prepare(tp: Any, seen: set[Any]) -> None:
    """Every dataclass reachable from ``tp`` refuses keys it does not have."""
    if dataclasses.is_dataclass(tp) and tp not in seen:
        seen.add(tp)
        tp.__pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)  # type: ignore[union-attr]
        for hint in typing.get_type_hints(tp).values():
            _prepare(hint, seen)
    for arg in typing.get_args(tp):
        _prepare(arg, seen)


@functools.cache
def _adapter(cls: Any) -> TypeAdapter[Any]:
    _prepare(cls, set())
    return TypeAdapter(cls)


def _plain(value: Any, key: str) -> None:
    """What JSON can carry, else the key that holds something else (a YAML date, bytes)."""
    if isinstance(value, Mapping):
        for name, item in value.items():
            _plain(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _plain(item, f"{key}[{i}]")
    elif value is not None and not isinstance(value, str | int | float):
        raise InvalidValueError(
            key or "<top>", value, "a number, string, true/false, list or mapping"
        )


def _build(cls: type[T], data: Any) -> T:
    """The first problem as one :class:`InvalidValueError` naming the dotted key."""
    if not isinstance(data, Mapping):
        raise InvalidValueError("<top>", data, "a mapping of keys")
    _plain(data, "")
    try:
        return _adapter(cast(Hashable, cls)).validate_json(json.dumps(data), strict=True)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)  # a missing key is told after a wrong one
        first = min(errors, key=lambda e: e["type"].startswith("missing"))
        raise _problem(cls, first, data) from None


_BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal",
                 "finite_number")  # fmt: skip
_WANTED = {
    "int": "an integer",
    "float": "a number",
    "string": "a string",
    "bool": "true or false",
    "tuple": "a list",
    "list": "a list",
    "dataclass": "a mapping of keys",
    "dict": "a mapping of keys",
}


def _problem(cls: Any, error: Mapping[str, Any], data: Any) -> InvalidValueError:
    loc, kind, value = error["loc"], error["type"], error.get("input")
    if kind.startswith("missing") and loc and isinstance(loc[-1], int):
        loc, kind = loc[:-1], "too_short"  # a fixed-length list one item short
    if kind in ("too_short", "too_long"):
        value = functools.reduce(lambda node, part: node[part], loc, data)
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    key = key.lstrip(".")
    inner = error.get("ctx", {}).get("error")
    if isinstance(inner, ConfigError) and not isinstance(inner, InvalidValueError):
        raise inner  # a check that words its own message (an age band's choices)
    if isinstance(inner, InvalidValueError):
        return inner.under(key)
    if kind.startswith("missing"):
        return InvalidValueError(key, None, "given (required key)")
    owner: Any = _type_at(cls, loc[:-1]) if loc else None
    if kind in _BOUND_ERRORS and isinstance(loc[-1], str) and dataclasses.is_dataclass(owner):
        hint = typing.get_type_hints(owner, include_extras=True)[loc[-1]]
        return InvalidValueError(key, value, _bounds_text(hint))
    if kind == "finite_number":  # an item of a list
        return InvalidValueError(key, value, "a finite number")
    tp = _type_at(cls, loc)
    if kind == "unexpected_keyword_argument":
        return InvalidValueError(
            key, value, f"one of {sorted(f.name for f in dataclasses.fields(owner))}"
        )
    if typing.get_origin(tp) is Literal:
        return InvalidValueError(key, value, "one of " + ", ".join(map(repr, typing.get_args(tp))))
    if kind in ("too_short", "too_long"):
        return InvalidValueError(key, value, f"a list of {len(typing.get_args(tp))}")
    wanted = _WANTED.get(kind.split("_")[0]) or str(error["msg"]).lower()
    return InvalidValueError(key or "<top>", value, wanted)


def _type_at(tp: Any, loc: Sequence[Any]) -> Any:
    """The type a config class gives the value at ``loc`` (a pydantic error's location)."""
    for part in loc:
        args = typing.get_args(_unwrap(tp))
        if isinstance(part, int):  # a tuple's item (of ``tuple[X, ...]``: an X)
            variadic = len(args) == 2 and args[1] is Ellipsis
            tp = args[0] if variadic else args[min(part, len(args) - 1)]
        elif dataclasses.is_dataclass(_unwrap(tp)):
            tp = typing.get_type_hints(_unwrap(tp)).get(part, Any)
        else:  # a mapping's value
            tp = args[-1] if args else Any
    return _unwrap(tp)


def _unwrap(tp: Any) -> Any:
    """``X`` of ``X | None``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp
