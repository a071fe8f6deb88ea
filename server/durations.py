"""Durations as people write them in runbooks, chat and the CLI: 30s, 15m, 2h, 1d, 1h30m, 500ms."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_SECONDS = 10 * 365 * 86400  # a timedelta (and a date + it) overflows not far beyond; nothing waits this long


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Parse '15m' (or a number of seconds); ValueError names what is accepted."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, bool):
        raise ValueError("a duration is a number of seconds or text like 30s, 15m, 2h, 1d")
    if isinstance(text, int | float):
        seconds = float(text)
    elif not isinstance(text, str):
        raise ValueError(f"a duration is a number of seconds or text like 30s, 15m, 2h, 1d, not {type(text).__name__}")
    else:
        compact = text.strip().lower().replace(" ", "")
        if not compact or _PART.sub("", compact):
            raise ValueError(f"invalid duration {text!r}: write it like 30s, 15m, 2h, 1d or 1h30m")
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(compact))
    if not math.isfinite(seconds) or seconds > MAX_SECONDS:
        raise ValueError(f"invalid duration {text!r}: at most {MAX_SECONDS // 86400 // 365} years")
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: it must be longer than zero")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest exact form: 90 s -> '1m30s'."""
    total_ms = round(value.total_seconds() * 1000)
    if total_ms % 1000:
        return f"{total_ms}ms"
    seconds, out = total_ms // 1000, ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out or "0s"


def _validate(value: Any) -> timedelta:
    return parse_duration(value)


Duration = Annotated[timedelta, BeforeValidator(_validate), PlainSerializer(format_duration, return_type=str)]
"""A pydantic field type that accepts '15m' or seconds and serialises back to '15m'."""
