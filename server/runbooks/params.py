"""Check and coerce the params a run is started with against the runbook's declarations."""

from __future__ import annotations

import re
from typing import Any

from server.durations import format_duration, parse_duration
from server.logmask import MIN_LENGTH
from server.redaction import MASK
from server.runbooks.schema import ParamSpec, Runbook

TRUE = {"true", "yes", "on", "1"}
FALSE = {"false", "no", "off", "0"}


def coerce_one(name: str, spec: ParamSpec, value: Any) -> tuple[Any, str | None]:
    """(value in its declared type, None) or (None, what is wrong). Strings from the CLI are converted.
    What is wrong never repeats a secret param's value: a 422 would echo it back."""
    coerced, problem = _coerce_one(name, spec, value)
    if problem and spec.secret:
        for shown in sorted({repr(value), str(value)} - {""}, key=len, reverse=True):
            problem = problem.replace(shown, MASK)
    return coerced, problem


def _coerce_one(name: str, spec: ParamSpec, value: Any) -> tuple[Any, str | None]:
    kind = spec.type
    try:
        if kind == "string" and not isinstance(value, str):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None, f"expected a string, got {type(value).__name__}"
            value = str(value)
        if kind == "integer":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                return None, f"expected an integer, got {value!r}"
            value = int(value)
        elif kind == "number":
            if isinstance(value, bool):
                return None, f"expected a number, got {value!r}"
            value = float(value) if not isinstance(value, int) else value
        elif kind == "boolean":
            if isinstance(value, str) and value.lower() in TRUE | FALSE:
                value = value.lower() in TRUE
            elif not isinstance(value, bool):
                return None, f"expected true or false, got {value!r}"
        elif kind == "duration":
            value = format_duration(parse_duration(value))
        elif kind == "list":
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list):
                return None, f"expected a list, got {type(value).__name__}"
        elif kind == "enum":
            assert spec.choices is not None
            matches = [c for c in spec.choices if c == value or str(c) == str(value)]
            if not matches:
                return None, f"{value!r} is not one of {', '.join(map(str, spec.choices))}"
            value = matches[0]
    except (TypeError, ValueError) as exc:
        if kind == "duration":
            return None, str(exc)
        return None, f"expected {'an' if kind == 'integer' else 'a'} {kind}, got {value!r}"
    if kind in ("integer", "number"):
        if spec.minimum is not None and value < spec.minimum:
            return None, f"{value} is below the minimum {spec.minimum:g}"
        if spec.maximum is not None and value > spec.maximum:
            return None, f"{value} is above the maximum {spec.maximum:g}"
    if spec.secret and 0 < len(str(value)) < MIN_LENGTH:
        return None, f"a secret must be at least {MIN_LENGTH} characters: a shorter one cannot be masked in logs"
    if spec.pattern:
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str) or not re.fullmatch(spec.pattern, item):
                return None, f"{'***' if spec.secret else repr(item)} does not match the pattern {spec.pattern}"
    return value, None


def coerce(runbook: Runbook, given: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """All params with defaults applied, and one problem per bad, missing or unknown param."""
    values: dict[str, Any] = {}
    problems: list[dict[str, str]] = []
    for name in given:
        if name not in runbook.params:
            known = ", ".join(sorted(runbook.params)) or "none"
            problems.append({"field": f"params.{name}", "message": f"unknown param; this runbook takes: {known}"})
    for name, spec in runbook.params.items():
        if name not in given or given[name] is None:
            if spec.default is not None:
                values[name] = coerce_one(name, spec, spec.default)[0]
            elif spec.is_required:
                problems.append({"field": f"params.{name}", "message": "required param is missing"})
            else:
                values[name] = None
            continue
        value, problem = coerce_one(name, spec, given[name])
        if problem:
            problems.append({"field": f"params.{name}", "message": problem})
        else:
            values[name] = value
    return values, problems


def mask(runbook_secret_names: set[str], values: dict[str, Any]) -> dict[str, Any]:
    return {k: (MASK if k in runbook_secret_names and v is not None else v) for k, v in values.items()}
