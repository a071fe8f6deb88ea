"""Load-time validation: every mistake in a runbook file, each with file, line, column and the fix.

Structure comes from the pydantic models (schema.py and each kind's inputs in kinds.py); then the
semantics that need the whole document: unique step ids, known kinds, templates that parse and only
read declared params and earlier steps, and the shell-injection warning.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import shlex
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from jinja2 import TemplateError
from pydantic import ValidationError

from server.runbooks import expressions, yamlpos
from server.runbooks.catalog import CATALOG
from server.runbooks.params import coerce_one
from server.runbooks.schema import ParamSpec, Runbook, StepSpec
from server.runbooks.yamlpos import Path

SHELLS = {"sh", "bash", "zsh", "dash", "ksh", "ash"}
RUN_FIELDS = {"id", "actor", "incident", "incident_id", "runbook"}
# The most work one validation does (a viewer may ask for one): templates checked, and seconds spent on them.
MAX_TEMPLATES = 2000
MAX_VALIDATION_SECONDS = 2.0
STEP_FIELDS = {"outputs", "status", "error", "attempts"}


@dataclass
class Problem:
    file: str
    line: int
    column: int
    message: str
    severity: str = "error"  # or "warning"
    path: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.severity}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Checked:
    runbook: Runbook | None
    text: str
    source: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


class _Reporter:
    def __init__(self, source: str, positions: dict[Path, tuple[int, int]]) -> None:
        self.source, self.positions = source, positions
        self.problems: list[Problem] = []
        self.templates_left = MAX_TEMPLATES
        self.deadline = time.monotonic() + MAX_VALIDATION_SECONDS
        self.exhausted = False

    def spend(self, path: Path) -> bool:
        """False (and one error) once this validation has checked as many templates as it may."""
        if self.exhausted:
            return False
        self.templates_left -= 1
        if self.templates_left < 0 or time.monotonic() > self.deadline:
            self.exhausted = True
            self.add(path, f"the runbook is too large to validate: over {MAX_TEMPLATES} templates or "
                     f"{MAX_VALIDATION_SECONDS:g}s of checks; split it into smaller runbooks")
            return False
        return True

    def add(self, path: Path, message: str, *, severity: str = "error", key: bool = False) -> None:
        line, column = yamlpos.position(self.positions, path, key=key)
        self.problems.append(Problem(self.source, line, column, message, severity,
                                     ".".join(str(p) for p in path)))


def _pydantic_problems(report: _Reporter, exc: ValidationError, prefix: Path, raw: Any) -> None:
    for err in exc.errors():
        loc: Path = tuple(p for p in err["loc"] if isinstance(p, str | int))
        if err["type"] == "extra_forbidden":
            report.add((*prefix, *loc), f"unknown key {loc[-1]!r}: remove it or fix its spelling", key=True)
            continue
        if _is_templated(raw, loc):
            continue  # a `{{ ... }}` value is checked when rendered, just before the step runs
        message = err["msg"].removeprefix("Value error, ")
        where = ".".join(map(str, loc)) or "the runbook"
        report.add((*prefix, *loc), f"{where}: {message}")


def _is_templated(raw: Any, loc: Path) -> bool:
    current = raw
    for part in loc:
        try:
            current = current[part]
        except (KeyError, IndexError, TypeError):
            return False
        if isinstance(current, str) and expressions.has_template(current):
            return True
    return False


def check_text(text: str, source: str = "<runbook>") -> Checked:
    """Validate one runbook's text; the file stem is the default id."""
    try:
        data, positions = yamlpos.load(text)
    except yamlpos.YamlProblem as exc:
        return Checked(None, text, source, [Problem(source, exc.line, exc.column, exc.message)])
    report = _Reporter(source, positions)
    if not isinstance(data, dict):
        report.add((), f"a runbook is a mapping (title:, steps:, ...), not a {type(data).__name__}")
        return Checked(None, text, source, report.problems)
    if "id" not in data:
        data["id"] = os.path.splitext(os.path.basename(source))[0]
    _normalise_shell_commands(data, report)
    try:
        runbook = Runbook.model_validate(data)
    except ValidationError as exc:
        _pydantic_problems(report, exc, (), data)
        # All errors at once: the params and steps that are well-formed on their own get the checks
        # that need the whole document too.
        _check_semantics(_Parts.of_raw(data), data, report)
        return Checked(None, text, source, report.problems)
    _check_semantics(_Parts.of(runbook), data, report)
    ok = not any(p.severity == "error" for p in report.problems)
    return Checked(runbook if ok else None, text, source, report.problems)


def split_command(command: str) -> list[str]:
    """shlex.split, but each `{{ ... }}` stays whole inside the word it belongs to."""
    templates: list[str] = []

    def hide(match: re.Match[str]) -> str:
        templates.append(match.group(0))
        return f"\x00{len(templates) - 1}\x00"

    words = shlex.split(re.sub(r"\{\{.*?\}\}", hide, command))
    return [re.sub(r"\x00(\d+)\x00", lambda m: templates[int(m.group(1))], word) for word in words]


def _normalise_shell_commands(data: dict[str, Any], report: _Reporter) -> None:
    """`command: "curl {{ params.url }}"` is split before rendering, so each param stays one argv item."""
    for index, step in enumerate(data.get("steps") or []):
        if isinstance(step, dict) and True in step and "on" not in step:
            step["on"] = step.pop(True)  # YAML 1.1 reads a bare `on:` key as the boolean true
        if not isinstance(step, dict) or step.get("uses") != "shell" or not isinstance(step.get("with"), dict):
            continue
        inputs = step["with"]
        if isinstance(inputs.get("command"), str) and "argv" not in inputs:
            try:
                inputs["argv"] = split_command(inputs.pop("command"))
            except ValueError as exc:
                report.add(("steps", index, "with", "command"), f"command cannot be split into arguments: {exc}")


@dataclass
class _Parts:
    """What the semantic checks read: a valid runbook's parts, or those of an invalid one that are
    well-formed on their own. Names (declared params, step ids and their order) come from the document
    even when their entry is broken, so a reference to them is not reported as unknown too."""

    params: dict[str, ParamSpec]
    steps: list[tuple[int, StepSpec]]  # (position in the document, step)
    outputs: Any
    declared: set[str]
    order: dict[str, int]  # a step id's first position
    count: int

    @classmethod
    def of(cls, runbook: Runbook) -> _Parts:
        return cls(runbook.params, list(enumerate(runbook.steps)), runbook.outputs, set(runbook.params),
                   _first_positions([s.id for s in runbook.steps]), len(runbook.steps))

    @classmethod
    def of_raw(cls, data: dict[str, Any]) -> _Parts:
        raw_params: dict[Any, Any] = data["params"] if isinstance(data.get("params"), dict) else {}
        raw_steps: list[Any] = data["steps"] if isinstance(data.get("steps"), list) else []
        params = {name: spec for name, raw in raw_params.items() if (spec := _valid(ParamSpec, raw)) is not None}
        steps = [(i, spec) for i, raw in enumerate(raw_steps) if (spec := _salvaged_step(raw)) is not None]
        order = _first_positions([raw.get("id") if isinstance(raw, dict) else None for raw in raw_steps])
        outputs = data.get("outputs") if isinstance(data.get("outputs"), dict) else {}
        return cls(params, steps, outputs, {str(name) for name in raw_params}, order, len(raw_steps))


def _first_positions(ids: list[Any]) -> dict[str, int]:
    """Each step id's first position (a duplicate id is reported, and its first step is the one read)."""
    return {step_id: i for i, step_id in reversed(list(enumerate(ids))) if isinstance(step_id, str)}


def _valid(model: type[ParamSpec] | type[StepSpec], raw: Any) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError:
        return None  # its problems were reported with the whole document's


def _salvaged_step(raw: Any) -> StepSpec | None:
    """A malformed step without its faulty top-level fields (an invalid phase, a typo'd key), so that its
    other problems (unknown inputs, references to later steps) are reported too, not hidden behind the first."""
    spec = _valid(StepSpec, raw)
    if spec is not None or not isinstance(raw, dict):
        return spec
    try:
        StepSpec.model_validate(raw)
    except ValidationError as exc:
        faulty = {e["loc"][0] for e in exc.errors() if e["loc"]} - {"id", "uses"}
    else:  # pragma: no cover - validated above
        return None
    return _valid(StepSpec, {k: v for k, v in raw.items() if k not in faulty}) if faulty else None


def _check_semantics(parts: _Parts, data: dict[str, Any], report: _Reporter) -> None:
    declared, order = parts.declared, parts.order
    seen: dict[str, int] = {}
    for name, param in parts.params.items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            report.add(("params", name), f"param name {name!r} must be an identifier (letters, digits, _)", key=True)
        if param.default is not None:
            problem = coerce_one(name, param, param.default)[1]
            if problem:
                report.add(("params", name, "default"), f"default of {name}: {problem}")
        if param.pattern:
            try:
                re.compile(param.pattern)
            except re.error as exc:
                report.add(("params", name, "pattern"), f"pattern is not a valid regular expression: {exc}")
    for index, step in parts.steps:
        path: Path = ("steps", index)
        if step.id in seen:
            report.add((*path, "id"), f"duplicate step id {step.id!r} (also step {seen[step.id] + 1}): "
                       "give each step its own id")
        seen.setdefault(step.id, index)
        spec = CATALOG.get(step.uses)
        if spec is None:
            close = difflib.get_close_matches(step.uses, CATALOG, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known kinds: {', '.join(sorted(CATALOG))}"
            report.add((*path, "uses"), f"unknown step kind {step.uses!r}: {hint}")
        else:
            raw_inputs = data["steps"][index].get("with") or {}
            try:
                spec.inputs.model_validate(raw_inputs)
            except ValidationError as exc:
                _pydantic_problems(report, exc, (*path, "with"), raw_inputs)
            for name in spec.expression_fields():
                if isinstance(raw_inputs.get(name), str):
                    extra = {"probe"} if step.uses == "wait" else set()
                    _check_template(report, (*path, "with", name), raw_inputs[name], bare=True,
                                    declared=declared, order=order, limit=index, extra=extra)
        if isinstance(step.if_, str):
            _check_template(report, (*path, "if"), step.if_, bare=not expressions.has_template(step.if_),
                            declared=declared, order=order, limit=index)
        expression_fields = spec.expression_fields() if spec else set()
        for sub, value in _strings(step.with_, (*path, "with")):
            if sub[3] in expression_fields and len(sub) == 4:
                continue
            if expressions.has_template(value):
                _check_template(report, sub, value, bare=False, declared=declared, order=order, limit=index)
        if step.uses == "shell":
            _warn_shell_interpolation(report, path, step.with_)
            _check_program_param(report, path, step.with_, parts.params)
    for sub, value in _strings(parts.outputs, ("outputs",)):
        if expressions.has_template(value):
            _check_template(report, sub, value, bare=False, declared=declared, order=order, limit=parts.count)


def _strings(value: Any, path: Path) -> list[tuple[Path, str]]:
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, dict):
        return [hit for k, v in value.items() for hit in _strings(v, (*path, k))]
    if isinstance(value, list):
        return [hit for i, v in enumerate(value) for hit in _strings(v, (*path, i))]
    return []


def _check_template(report: _Reporter, path: Path, text: str, *, bare: bool, declared: set[str],
                    order: dict[str, int], limit: int, extra: set[str] | None = None) -> None:
    label = "expression" if bare else "template"
    if not report.spend(path):
        return
    try:
        tree = expressions.parse(text, bare=bare)
    except TemplateError as exc:
        report.add(path, f"{label} {text.strip()!r} does not parse: {exc.message or exc}")
        return
    except RecursionError:
        report.add(path, f"{label} is nested too deeply to check; simplify it")
        return
    for attr in expressions.private_attributes(tree):
        report.add(path, f"{label} uses {attr!r}: attributes starting with _ are blocked by the sandbox; "
                   "read params, steps.<id>.outputs and run instead")
    for chain, _line in expressions.references(tree):
        problem = _reference_problem(chain, declared, order, limit, extra or set())
        if problem:
            report.add(path, f"{label} {text.strip()!r}: {problem}")


def _reference_problem(chain: list[str | int], declared: set[str], order: dict[str, int], limit: int,
                       extra: set[str]) -> str | None:
    root = chain[0]
    if root in extra or root in ("range", "dict"):
        return None
    if root == "params":
        if len(chain) > 1 and chain[1] not in declared:
            close = difflib.get_close_matches(str(chain[1]), declared, n=1)
            hint = f"did you mean params.{close[0]}?" if close else "declare it under params:"
            return f"param {chain[1]!r} is not declared; {hint}"
        return None
    if root == "steps":
        if len(chain) < 2:
            return None
        name = str(chain[1])
        if name not in order:
            close = difflib.get_close_matches(name, order, n=1)
            return f"there is no step {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
        if order[name] >= limit:
            return (f"step {name!r} has not run yet at this point; only earlier steps' outputs and status "
                    "can be read")
        if len(chain) > 2 and chain[2] not in STEP_FIELDS:
            return f"steps.{name}.{chain[2]} does not exist; use one of {', '.join(sorted(STEP_FIELDS))}"
        return None
    if root == "run":
        if len(chain) > 1 and chain[1] not in RUN_FIELDS:
            return f"run.{chain[1]} does not exist; use one of {', '.join(sorted(RUN_FIELDS))}"
        return None
    return f"unknown name {root!r}: expressions read params, steps and run"


def _warn_shell_interpolation(report: _Reporter, path: Path, inputs: dict[str, Any]) -> None:
    argv = inputs.get("argv")
    if not isinstance(argv, list) or len(argv) < 3 or not isinstance(argv[0], str):
        return
    if os.path.basename(argv[0]) not in SHELLS or "-c" not in argv[1:-1]:
        return
    script_index = argv.index("-c") + 1
    script = argv[script_index]
    if isinstance(script, str) and expressions.has_template(script) and "params." in script:
        report.add((*path, "with", "argv", script_index),
                   "a param is interpolated into a shell script, where a value like '; rm -rf ~' runs as code: "
                   "pass it as an argument (argv: [sh, -c, 'echo \"$1\"', sh, '{{ params.x }}']) or in env "
                   "(env: {X: '{{ params.x }}'} and \"$X\" in the script)", severity="warning")


def _check_program_param(report: _Reporter, path: Path, inputs: dict[str, Any], params: dict[str, ParamSpec]) -> None:
    """A param in argv[0] picks the program to run: `printenv` reads the worker's secrets. Only an enum, whose
    choices the runbook's author wrote, may do that."""
    argv = inputs.get("argv")
    if not isinstance(argv, list) or not argv or not isinstance(argv[0], str) or not expressions.has_template(argv[0]):
        return
    try:
        tree = expressions.parse(argv[0], bare=False)
    except (TemplateError, RecursionError):
        return  # reported as a template that does not parse
    for chain, _line in expressions.references(tree):
        if chain[0] == "params" and len(chain) > 1:
            spec = params.get(str(chain[1]))
            if spec is None or spec.type != "enum":
                report.add((*path, "with", "argv", 0),
                           f"param {chain[1]!r} chooses the program to run (argv[0]): whoever starts the run could "
                           "run any program; make it an enum (type: enum, choices: [...]) or name the program")
        elif chain[0] == "steps":
            report.add((*path, "with", "argv", 0),
                       "a step's output chooses the program to run (argv[0]): name the program instead")
