"""One MQTT payload of the site to a JSON object, within limits, or :class:`MessageError`: a
reader of the site's messages (the ward view, the gateway) must keep reading whatever a client
of the broker publishes, so a payload raises nothing else here. Its ``reason`` is one of
:data:`REASONS` (docs/dashboard.md, "Hardening", says what each means)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from lungwatch.events import SCHEMA_VERSION

REASONS = (
    "too_large",
    "too_deep",
    "bad_json",
    "bad_number",
    "invalid",
    "over_limit",
    "internal_error",
)
MAX_MESSAGE_BYTES = 65_536  # default limit: real messages are a few KiB at most
MAX_JSON_DEPTH = 32  # default limit: real messages nest 2 or 3 levels
MAX_INT_DIGITS = 19  # 64-bit integers; a sample count or a spool depth never needs more
# a JSON string (its end may be missing: then it runs to the end of the text) or a bracket;
# every match starts where the last one ended or at the next quote / bracket, so one pass
_TOKEN = re.compile(r'"[^"\\]*+(?:\\[\s\S][^"\\]*+)*+(?:"|\\?\Z)|[\[\]{}]')


class MessageError(ValueError):
    """A message the ward cannot use; the text says why, :attr:`reason` how it is counted."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in ``text`` (0: a scalar), brackets inside strings
    not counted; linear in ``len(text)``, so ``[[[[...`` never reaches the parser's recursion."""
    depth = deepest = 0
    for match in _TOKEN.finditer(text):
        char = text[match.start()]
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}" and depth > 0:  # an unbalanced one never goes below 0
            depth -= 1
    return deepest


def parse_message(payload: bytes, max_bytes: int, max_depth: int) -> dict[str, Any]:
    """The JSON object of schema version 1 in ``payload``; :class:`MessageError` otherwise."""
    if len(payload) > max_bytes:
        raise MessageError(f"{len(payload)} bytes, over the limit of {max_bytes}", "too_large")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError(f"not UTF-8 ({exc.reason} at byte {exc.start})", "bad_json") from None
    # the depth cannot exceed the number of opening brackets: most messages skip the scan
    if text.count("[") + text.count("{") > max_depth and json_depth(text) > max_depth:
        raise MessageError(f"JSON nested deeper than {max_depth} levels", "too_deep")
    try:
        body = json.loads(
            text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_refuse_constant
        )
    except _BadNumberError as exc:
        raise MessageError(str(exc), "bad_number") from None
    except RecursionError:  # not reached after the scan; kept so it can never escape
        raise MessageError("JSON nested too deeply to parse", "too_deep") from None
    except ValueError as exc:
        raise MessageError(f"not JSON ({exc})", "bad_json") from None
    if not isinstance(body, dict):
        raise MessageError(f"not a JSON object but {type(body).__name__}", "bad_json")
    version = body.get("schema_version")
    if version != SCHEMA_VERSION:
        raise MessageError(f"schema_version must be {SCHEMA_VERSION}, got {version!r}")
    return body


class _BadNumberError(ValueError):
    """A number the ward refuses (raised inside the parser's hooks)."""


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _BadNumberError(f"an integer of {digits} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 24 else text[:21] + "..."
        raise _BadNumberError(f"the number {shown} is out of range")
    return value


def _refuse_constant(name: str) -> float:
    raise _BadNumberError(f"{name} is not a JSON number")
