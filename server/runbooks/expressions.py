"""`{{ ... }}` templates and bare expressions, in a sandboxed Jinja2 with StrictUndefined.

A string that is one whole `{{ expr }}` keeps the expression's native type (an integer stays an
integer); any other string with templates renders to a string. Undefined names raise instead of
quietly rendering empty, so a typo never makes an `if:` true.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

from jinja2 import Environment, StrictUndefined, TemplateError, Undefined, nodes
from jinja2.compiler import CodeGenerator
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range
from jinja2.visitor import NodeTransformer

from server import logmask

WHOLE = re.compile(r"^\s*\{\{(?P<expr>.*?)\}\}\s*$", re.S)
MAX_POWER_RESULT = 10**12
# What one value an expression makes may hold (characters of a string, items of a list, a padding width), and
# the work one evaluation may do in all (loop iterations, range items and the sizes of values it makes). A
# template can otherwise ask for gigabytes in a few characters: {{ 'a' * 150000000 }}.
MAX_SIZE = 1_000_000
MAX_WORK = 5_000_000
MAX_INT_BITS = 4096
# Filters whose numeric arguments are widths or counts the filter allocates or loops over.
WIDTH_FILTERS = frozenset({"center", "indent", "wordwrap", "truncate", "batch", "slice", "format", "replace",
                           "join", "filesizeformat"})
WIDE_FORMAT = re.compile(r"\d{7,}")  # a width of a million or more in a %- or {}-format

_work: ContextVar[list[int] | None] = ContextVar("runbookd_expression_work", default=None)
_read_secret: ContextVar[list[bool] | None] = ContextVar("runbookd_expression_read_secret", default=None)


class ExpressionError(Exception):
    pass


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple | dict | set | frozenset) else 0


def _charge(amount: int) -> None:
    """Count work against the running evaluation's budget; ExpressionError once it is spent."""
    left = _work.get()
    if left is None or amount <= 0:
        return
    left[0] -= amount
    if left[0] < 0:
        raise ExpressionError(f"expression does too much work (over {MAX_WORK:,} steps): loop over less data")


def _check_size(size: int, what: str) -> None:
    if size > MAX_SIZE:
        raise ExpressionError(f"{what} would make a value of {size:,} items (at most {MAX_SIZE:,})")
    _charge(size)


def _check_numbers(values: Iterable[Any], what: str) -> None:
    for value in values:
        if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > MAX_SIZE:
            raise ExpressionError(f"{what}: {value!r} is too large a width or count (at most {MAX_SIZE:,})")
        if isinstance(value, str) and WIDE_FORMAT.search(value) and what.startswith(("format", "%")):
            raise ExpressionError(f"{what}: a format width of a million or more is refused")


def _check_replace(text: Any, args: tuple[Any, ...]) -> None:
    if isinstance(text, str) and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        hits = len(text) + 1 if not args[0] else text.count(args[0])
        _check_size(len(text) + hits * max(0, len(args[1]) - len(args[0])), "replace")


def _check_join(items: Any, separator: Any = "") -> None:
    if isinstance(items, list | tuple):
        _check_size(sum(_size(i) for i in items) + len(items) * _size(separator), "join")


def _guard_filter(name: str, func: Any) -> Any:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        # args[0] may be the environment or eval context (pass_environment filters); the value follows.
        values = [a for a in args if not isinstance(a, Environment | EvalContext | Context)]
        if name in WIDTH_FILTERS:
            _check_numbers([*values[1:], *kwargs.values()], f"{name} filter" if name != "format" else "format")
            if name == "format" and values:
                _check_numbers(values[:1], "format")
            if name == "replace" and values:
                _check_replace(values[0], tuple(values[1:3]))
            if name == "join" and values:
                _check_join(values[0], values[1] if len(values) > 1 else kwargs.get("d", ""))
        result = func(*args, **kwargs)
        _check_size(_size(result), f"the {name} filter")
        return result

    functools.update_wrapper(guarded, func)
    return guarded


def _bounded_iter(iterable: Any) -> Iterator[Any]:
    """Every `{% for %}` loops through this: each iteration is work."""
    for item in iterable:
        _charge(1)
        yield item


def _counted_range(*args: int) -> range:
    result = safe_range(*args)
    _charge(len(result))
    return result


def _concat(parts: Iterable[Any]) -> str:
    text = "".join(map(str, parts))
    _check_size(len(text), "~")
    return text


class _BoundedCodeGenerator(CodeGenerator):
    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:
        self.write("environment.concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _BoundLoops(NodeTransformer):
    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Call(nodes.Name("_bounded_iter", "load"), [node.iter], [], None, None)
        return node


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(["**", "*", "+", "%"])
    code_generator_class = _BoundedCodeGenerator
    concat = staticmethod(_concat)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Runbook data is all mappings: `params.items` means the param named items, not dict.items.
        if isinstance(obj, dict) and attribute in obj:
            return _note_secret(obj[attribute])
        return _note_secret(super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        return _note_secret(super().getitem(obj, argument))

    def _generate(self, source: nodes.Template, *args: Any, **kwargs: Any) -> str:
        # Loops are bounded in a copy: the caller's tree (validation reads its names) stays as written.
        return super()._generate(_BoundLoops().visit(copy.deepcopy(source)), *args, **kwargs)

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
                if _size(seq) and isinstance(times, int):
                    _check_size(_size(seq) * max(times, 0), "*")
            if isinstance(left, int) and isinstance(right, int) \
                    and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise ExpressionError(f"* would make an integer of over {MAX_INT_BITS} bits")
        elif operator == "+" and _size(left) and _size(right):
            _check_size(_size(left) + _size(right), "+")
        elif operator == "%" and isinstance(left, str):
            _check_numbers([left, *(right if isinstance(right, tuple) else [right])], "% format")
        result = super().call_binop(context, operator, left, right)
        if operator == "%":
            _check_size(_size(result), "% format")
        return result

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        target = getattr(__obj, "__wrapped__", __obj)
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str | list | tuple):
            name = getattr(target, "__name__", "")
            _check_numbers([*args, *kwargs.values()], f"{name}()" if name not in ("format", "format_map")
                           else "format")
            if name in ("format", "format_map"):
                _check_numbers([owner], "format")
            if name == "replace":
                _check_replace(owner, args)
            if name == "join" and args:
                _check_join(list(args[0]) if isinstance(args[0], list | tuple) else args[0], owner)
        result = super().call(__context, __obj, *args, **kwargs)
        _check_size(_size(result), "a call")
        return result


@lru_cache(maxsize=1)
def environment() -> _Sandbox:
    # optimized=False: nothing is folded (evaluated) while compiling, so validating a runbook never runs its
    # expressions; they run only in a worker, under the bounds above.
    env = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, optimized=False)
    env.filters = {name: _guard_filter(name, func) for name, func in env.filters.items()}
    env.globals = {"range": _counted_range, "dict": dict, "_bounded_iter": _bounded_iter}
    return env


def restricted_environment(*, filters: set[str]) -> _Sandbox:
    """A sandbox for templates whose data comes from outside (alert triggers): no globals (no range), only the
    named filters, under the same bounds as environment(). Its templates are checked with `parse(..., env=...)`."""
    env = _Sandbox(undefined=StrictUndefined, autoescape=False, optimized=False)
    env.globals = {"_bounded_iter": _bounded_iter}
    env.filters = {name: _guard_filter(name, f) for name, f in env.filters.items() if name in filters}
    env.tests = {name: t for name, t in env.tests.items() if name in {"defined", "undefined", "none", "string",
                                                                       "number", "eq", "ne", "in"}}
    return env


def _note_secret(value: Any) -> Any:
    """A template that reads a secret makes a secret: `{{ params.pin|reverse }}` must be masked too."""
    if isinstance(value, str) and logmask.is_secret(value):
        read = _read_secret.get()
        if read is not None:
            read[0] = True
    return value


def _register_derived(value: Any) -> None:
    if isinstance(value, str):
        logmask.register([value])
    elif isinstance(value, list | tuple):
        for item in value:
            _register_derived(item)
    elif isinstance(value, dict):
        for item in value.values():
            _register_derived(item)


@contextmanager
def _tainted() -> Iterator[list[bool]]:
    """Whether what is evaluated inside reads a known secret value (logmask's registry of the run's secrets)."""
    token = _read_secret.set([False])
    try:
        yield _read_secret.get()  # type: ignore[misc]
    finally:
        _read_secret.reset(token)


@contextmanager
def _budget() -> Iterator[None]:
    token = _work.set([MAX_WORK]) if _work.get() is None else None
    try:
        yield
    finally:
        if token is not None:
            _work.reset(token)


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
        with _budget(), _tainted() as read:
            result = _compiled_expression(expr)(**context)
        if read[0]:
            _register_derived(result)
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
            return _render_bounded(_compiled_template(value), context)
        except (TemplateError, ExpressionError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise ExpressionError(f"{value.strip()!r}: {_describe(exc)}") from None
    if isinstance(value, list):
        return [render(v, context) for v in value]
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    return value


def _render_bounded(template: Any, context: dict[str, Any]) -> str:
    """Template.render, but the output stops at MAX_SIZE characters instead of filling the memory."""
    parts: list[str] = []
    size = 0
    with _budget(), _tainted() as read:
        for part in template.generate(**context):
            size += len(part)
            if size > MAX_SIZE:
                raise ExpressionError(f"the template renders over {MAX_SIZE:,} characters")
            parts.append(part)
    text = "".join(parts)
    if read[0]:
        _register_derived(text)
    return text


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
