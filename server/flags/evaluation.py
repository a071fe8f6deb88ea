"""The evaluation engine: a flag spec compiled once into plain objects, then evaluated per request.

Everything here is pure and in memory: the OFREP hot path calls evaluate() and nothing else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import semver

from server import saferegex
from server.flags.models import FlagSpec, Operator

# Reasons as OpenFeature names them; DEFAULT is a flag with rules of which none matched.
STATIC, DEFAULT, TARGETING_MATCH, SPLIT, DISABLED = "STATIC", "DEFAULT", "TARGETING_MATCH", "SPLIT", "DISABLED"
BUCKETS = 1000  # 0.1 % resolution


class EvaluationError(Exception):
    """An OFREP error: code is one of PARSE_ERROR, TARGETING_KEY_MISSING, INVALID_CONTEXT, GENERAL."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


Predicate = Callable[[Any], bool]


@dataclass(slots=True)
class CompiledRule:
    conditions: list[tuple[str, Predicate]]
    variant: str | None
    split: list[tuple[int, str]]  # (exclusive upper bucket, variant), ascending


@dataclass(slots=True)
class CompiledEnvironment:
    enabled: bool
    default_variant: str
    rules: list[CompiledRule]


@dataclass(slots=True)
class CompiledFlag:
    key: str
    version: int
    flag_type: str
    variants: dict[str, Any]
    environments: dict[str, CompiledEnvironment]
    fallback: CompiledEnvironment  # an environment the flag has no state for: off, at its off variant
    metadata: dict[str, Any] = field(default_factory=dict)


def bucket(flag_key: str, targeting_key: str) -> int:
    """Sticky bucket 0..999 of a user for a flag: the same user always lands in the same one."""
    digest = hashlib.sha256(f"{flag_key}/{targeting_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _version(value: Any) -> semver.Version | None:
    if not isinstance(value, str):
        return None
    try:
        return semver.Version.parse(value.removeprefix("v"))
    except ValueError:
        return None


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(actual, bool) or isinstance(expected, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual is expected
    if isinstance(actual, int | float) and isinstance(expected, int | float):
        return float(actual) == float(expected)
    return bool(actual == expected)


def compile_predicate(operator: Operator, expected: Any) -> Predicate:
    """A function of the context value; a missing attribute never reaches it (it never matches)."""
    if operator == Operator.equals:
        return lambda v: _same(v, expected)
    if operator == Operator.not_equals:
        return lambda v: not _same(v, expected)
    if operator in (Operator.in_, Operator.not_in):
        choices = list(expected)
        hit: Predicate = lambda v: any(_same(v, c) for c in choices)  # noqa: E731
        return hit if operator == Operator.in_ else (lambda v: not hit(v))
    if operator == Operator.contains:
        return lambda v: (str(expected) in v) if isinstance(v, str) else (isinstance(v, list) and expected in v)
    if operator == Operator.starts_with:
        return lambda v: isinstance(v, str) and v.startswith(str(expected))
    if operator == Operator.ends_with:
        return lambda v: isinstance(v, str) and v.endswith(str(expected))
    if operator == Operator.matches:
        found = saferegex.searcher(str(expected))
        return lambda v: isinstance(v, str) and found(v)
    if operator.value.startswith("semver_"):
        wanted = semver.Version.parse(str(expected).removeprefix("v"))
        compare = _COMPARE[operator.value.removeprefix("semver_")]
        return lambda v: (ver := _version(v)) is not None and compare(ver.compare(wanted))
    limit = float(expected)
    compare = _COMPARE[operator.value]
    return lambda v: (n := _number(v)) is not None and compare((n > limit) - (n < limit))


_COMPARE: dict[str, Callable[[int], bool]] = {
    "eq": lambda c: c == 0, "gt": lambda c: c > 0, "gte": lambda c: c >= 0,
    "lt": lambda c: c < 0, "lte": lambda c: c <= 0,
}


def compile_flag(spec: FlagSpec, version: int) -> CompiledFlag:
    """Turn a validated spec into the objects evaluate() walks."""
    environments = {}
    off = spec.off_variant or spec.default_variant
    for name, state in spec.environments.items():
        rules = []
        for rule in state.rules:
            conditions = [(c.attribute, compile_predicate(c.operator, c.value)) for c in rule.conditions]
            split, upper = [], 0
            for part in rule.split or []:
                upper += round(part.weight * 10)
                if round(part.weight * 10):
                    split.append((upper, part.variant))
            rules.append(CompiledRule(conditions=conditions, variant=rule.variant, split=split))
        # Disabled (killed) serves the off variant: resolved here, so evaluate() costs nothing more.
        environments[name] = CompiledEnvironment(enabled=state.enabled,
                                                 default_variant=(state.default_variant or spec.default_variant)
                                                 if state.enabled else off,
                                                 rules=rules)
    return CompiledFlag(key=spec.key, version=version, flag_type=spec.type.value, variants=dict(spec.variants),
                        environments=environments,
                        fallback=CompiledEnvironment(enabled=False, default_variant=off, rules=[]),
                        metadata={"version": version, "flagType": spec.type.value})


def check_context(context: Any) -> dict[str, Any]:
    """The request's evaluation context, or INVALID_CONTEXT saying what is wrong with it."""
    if context is None:
        return {}
    if not isinstance(context, dict):
        raise EvaluationError("INVALID_CONTEXT", "context must be a JSON object")
    targeting_key = context.get("targetingKey")
    if targeting_key is not None and not isinstance(targeting_key, str):
        raise EvaluationError("INVALID_CONTEXT", "targetingKey must be a string")
    return context


def evaluate(flag: CompiledFlag, environment: str, context: dict[str, Any]) -> tuple[str, str]:
    """(variant, reason) of a flag for a context in an environment."""
    env = flag.environments.get(environment, flag.fallback)
    if not env.enabled:
        return env.default_variant, DISABLED
    if not env.rules:
        return env.default_variant, STATIC
    for rule in env.rules:
        matched = True
        for attribute, predicate in rule.conditions:
            if attribute not in context or not predicate(context[attribute]):
                matched = False
                break
        if not matched:
            continue
        if rule.variant is not None:
            return rule.variant, TARGETING_MATCH
        targeting_key = context.get("targetingKey")
        if not targeting_key:
            raise EvaluationError("TARGETING_KEY_MISSING",
                                  f"flag {flag.key!r} splits users by percentage and needs context.targetingKey")
        position = bucket(flag.key, targeting_key)
        for upper, variant in rule.split:
            if position < upper:
                return variant, SPLIT
    return env.default_variant, DEFAULT


def resolution(flag: CompiledFlag, environment: str, context: dict[str, Any]) -> dict[str, Any]:
    """The OFREP success body."""
    variant, reason = evaluate(flag, environment, context)
    return {"key": flag.key, "value": flag.variants[variant], "reason": reason, "variant": variant,
            "metadata": flag.metadata}
