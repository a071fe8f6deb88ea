"""`{{ ... }}` templates and bare expressions, in a sandboxed Jinja2 with StrictUndefined.

A string that is one whole `{{ expr }}` keeps the expression's native type (an integer stays an
integer); any other string with templates renders to a string. Undefined names raise instead of
quietly rendering empty, so a typo never makes an `if:` true.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

WHOLE = re.compile(r"^\s*\{\{(?P<expr>.*?)\}\}\s*$", re.S)
MAX_POWER_RESULT = 10**12
MAX_REPEAT_RESULT = 64 * 1024  # `'x' * 10**9` would build a gigabyte: a repeated string or list stops here


class ExpressionError(Exception):
    pass


class _Sandbox(ImmutableSandboxedEnvironment):
    # `9 ** 9 ** 9` would take the worker forever, `'x' * 10**9` would take its memory: both are intercepted.
    intercepted_binops = frozenset(["**", "*"])

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Runbook data is all mappings: `params.items` means the param named items, not dict.items.
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > 64:
                raise ExpressionError("exponent too large (over 64)")
            result = left**right
            if isinstance(result, int) and abs(result) > MAX_POWER_RESULT:
                raise ExpressionError("power result too large")
            return result
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int) and not isinstance(times, bool) \
                        and len(seq) * max(times, 0) > MAX_REPEAT_RESULT:
                    raise ExpressionError(f"repetition too large (over {MAX_REPEAT_RESULT} items)")
            return left * right
        return super().call_binop(context, operator, left, right)


@lru_cache(maxsize=1)
def environment() -> _Sandbox:
    env = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.globals = {"range": env.globals["range"], "dict": dict}
    return env


def restricted_environment(*, filters: set[str]) -> _Sandbox:
    """A sandbox for templates whose data comes from outside (alert triggers): no globals (no range), only the
    named filters, the same interception of ** and *. Its templates are checked with `parse(..., env=...)`."""
    env = _Sandbox(undefined=StrictUndefined, autoescape=False)
    env.globals = {}
    env.filters = {name: f for name, f in env.filters.items() if name in filters}
    env.tests = {name: t for name, t in env.tests.items() if name in {"defined", "undefined", "none", "string",
                                                                       "number", "eq", "ne", "in"}}
    return env


def has_template(value: str) -> bool:
    return "{{" in value or "{%" in value


def whole_expression(value: str) -> str | None:
    match = WHOLE.match(value)
    if match and "{{" not in match["expr"] and "}}" not in match["expr"]:
        return match["expr"]
    return None


@lru_cache(maxsize=4096)
def _compiled_expression(expr: str) -> Any:
    return environment().compile_expression(expr, undefined_to_none=False)


@lru_cache(maxsize=4096)
def _compiled_template(text: str) -> Any:
    return environment().from_string(text)


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, ExpressionError) else str(exc)


def evaluate(expr: str, context: dict[str, Any]) -> Any:
    """Evaluate a bare expression (`if:`, assert's `that:`) to its native value."""
    try:
        result = _compiled_expression(expr)(**context)
        if isinstance(result, Undefined):
            result._fail_with_undefined_error()  # a bare `params.typo` must fail, not return a placeholder
        return result
    except (TemplateError, ExpressionError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
        raise ExpressionError(f"{expr.strip()!r}: {_describe(exc)}") from None


def render(value: Any, context: dict[str, Any]) -> Any:
    """Render templates in a string, list or mapping; other values pass through untouched."""
    if isinstance(value, str):
        if not has_template(value):
            return value
        inner = whole_expression(value)
        if inner is not None:
            return evaluate(inner, context)
        try:
            return _compiled_template(value).render(**context)
        except (TemplateError, ExpressionError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise ExpressionError(f"{value.strip()!r}: {_describe(exc)}") from None
    if isinstance(value, list):
        return [render(v, context) for v in value]
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    return value


def parse(text: str, *, bare: bool, env: _Sandbox | None = None) -> nodes.Template:
    """Parse and compile (which checks filters and tests exist); raises TemplateError on a mistake."""
    env = env or environment()
    source = "{{ " + text + " }}" if bare else text
    tree = env.parse(source)
    env.compile(tree)
    return tree


def _chain(node: nodes.Node) -> list[str | int] | None:
    """`steps.probe.outputs.x` -> ['steps', 'probe', 'outputs', 'x']; None when not rooted at a name."""
    parts: list[str | int] = []
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) \
                and isinstance(node.arg.value, str | int):
            parts.append(node.arg.value)
            node = node.node
        elif isinstance(node, nodes.Name):
            parts.append(node.name)
            return parts[::-1]
        else:
            return None


def references(tree: nodes.Node) -> Iterator[tuple[list[str | int], int]]:
    """Each name chain a template reads (longest form), with its line inside the template."""
    stored = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}

    def visit(node: nodes.Node) -> Iterator[tuple[list[str | int], int]]:
        if isinstance(node, nodes.Getattr | nodes.Getitem | nodes.Name):
            chain = _chain(node)
            if chain is not None:
                if not (isinstance(node, nodes.Name) and node.ctx != "load") and chain[0] not in stored:
                    yield chain, node.lineno
                return
        for child in node.iter_child_nodes():
            yield from visit(child)

    yield from visit(tree)


def private_attributes(tree: nodes.Node) -> list[str]:
    """Attribute names starting with _ (`''.__class__`): the sandbox refuses them; say so at load time."""
    found = [n.attr for n in tree.find_all(nodes.Getattr) if n.attr.startswith("_")]
    found += [str(n.arg.value) for n in tree.find_all(nodes.Getitem)
              if isinstance(n.arg, nodes.Const) and isinstance(n.arg.value, str) and n.arg.value.startswith("_")]
    return found
