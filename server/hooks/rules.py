"""Trigger rules: which alerts (and cron slots) start which runbook, with what params and under what guards.

Rules are YAML, loaded and validated like runbooks, each mistake with file:line:column: a `triggers:` list in a
runbook (its `runbook:` defaults to that runbook) or `*.triggers.yaml` files under the runbooks directory.
Label and annotation regexes run on RE2 (google-re2): linear time, so an alert's label cannot make a rule
backtrack for ever. Params are templates in the project's Jinja2 sandbox, restricted further here (no
statements, no globals, a short list of filters) because their input, the alert, comes from outside.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import re2
from croniter import croniter
from jinja2 import TemplateError, Undefined, nodes
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from server.durations import Duration
from server.incidents.models import Severity
from server.runbooks import expressions, yamlpos
from server.runbooks.params import coerce_one
from server.runbooks.schema import ID_PATTERN, Runbook
from server.runbooks.store import TRIGGER_SUFFIX, Snapshot
from server.runbooks.validation import Checked, Problem, _pydantic_problems, _Reporter

log = logging.getLogger("runbookd.hooks")
SOURCE_PATTERN = r"^(alertmanager|generic:[A-Za-z0-9][A-Za-z0-9_.-]{0,62}|schedule)$"
RULE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,119}$"
TEMPLATE_FILTERS = {"default", "d", "lower", "upper", "trim", "truncate", "first", "last", "length", "count", "int",
                    "float", "string", "join", "title", "capitalize", "tojson", "abs", "round", "min", "max"}
TEMPLATE_ROOTS = {"alert", "payload", "delivery", "slot"}
MAX_PARAM_CHARS = 16 * 1024  # a rendered param longer than this is refused (the alert is ignored, with why)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Op(_Strict):
    """One comparison; exactly one of its keys. A plain scalar in YAML means equals."""

    equals: str | None = None
    not_: str | None = Field(None, alias="not")
    regex: str | None = Field(None, description="RE2 syntax, matched against the whole value.")
    in_: list[str] | None = Field(None, alias="in")

    @model_validator(mode="before")
    @classmethod
    def _scalars_are_strings(cls, data: Any) -> Any:
        if isinstance(data, dict):
            out = dict(data)
            for k in ("equals", "not"):
                if isinstance(out.get(k), int | float | bool):
                    out[k] = str(out[k]).lower() if isinstance(out[k], bool) else str(out[k])
            if isinstance(out.get("in"), list):
                out["in"] = [str(v) for v in out["in"]]
            return out
        return data

    @model_validator(mode="after")
    def _one(self) -> Op:
        given = [k for k in ("equals", "not_", "regex", "in_") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of equals, not, regex, in")
        return self


def _scalar_op(value: Any) -> Any:
    """`alertname: HighErrorRate` is short for `alertname: {equals: HighErrorRate}`."""
    if isinstance(value, bool):
        return {"equals": str(value).lower()}
    if isinstance(value, str | int | float):
        return {"equals": str(value)}
    return value


class MatchSpec(_Strict):
    labels: dict[str, Op] = Field(default_factory=dict)
    annotations: dict[str, Op] = Field(default_factory=dict)

    @field_validator("labels", "annotations", mode="before")
    @classmethod
    def _scalars(cls, value: Any) -> Any:
        return {k: _scalar_op(v) for k, v in value.items()} if isinstance(value, dict) else value


class IncidentSpec(_Strict):
    severity: Severity = Severity.sev3
    title: str = Field("{{ alert.labels.alertname }}", max_length=300)


class NotifySpec(_Strict):
    webhook: str = Field(pattern=r"^https?://", max_length=2000,
                         description="Slack/Mattermost incoming-webhook URL that gets the run's summary.")
    channel: str | None = Field(None, max_length=200, description="A label for the channel, shown in deliveries.")


class ScheduleSpec(_Strict):
    cron: str
    timezone: str = "UTC"
    catch_up: bool = False

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError("cron must have 5 fields: minute hour day-of-month month day-of-week")
        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a valid cron expression")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name like Europe/Berlin") from None
        return value


class TriggerSpec(_Strict):
    id: str = Field(pattern=RULE_ID_PATTERN)
    runbook: str = Field(pattern=ID_PATTERN, max_length=100)
    source: str = Field("alertmanager", pattern=SOURCE_PATTERN)
    status: Literal["firing", "resolved"] = "firing"
    match: MatchSpec = Field(default_factory=MatchSpec)
    params: dict[str, Any] = Field(default_factory=dict)
    dedupe: bool = True
    cooldown: Duration = timedelta(minutes=5)
    max_concurrent: int | None = Field(None, ge=1, le=10_000)
    max_runs_per_minute: int | None = Field(None, ge=1, le=100_000)
    open_incident: IncidentSpec | None = None
    on_resolved: Literal["note", "resolve_incident", "cancel_run"] | None = None
    notify: NotifySpec | None = None
    schedule: ScheduleSpec | None = None
    enabled: bool = True

    @field_validator("cooldown", mode="before")
    @classmethod
    def _no_cooldown(cls, value: Any) -> Any:
        return timedelta(0) if value in (0, "0", "0s", "0m") else value

    @model_validator(mode="after")
    def _schedule_source(self) -> TriggerSpec:
        if self.schedule is not None:
            self.source = "schedule"
            if "cooldown" not in self.model_fields_set:
                self.cooldown = timedelta(0)  # a schedule's dedupe holds while its last run is active, no longer
        elif self.source == "schedule":
            raise ValueError("source: schedule needs a schedule: {cron: ...}")
        return self


@dataclass
class Matcher:
    key: str
    kind: str  # equals, not, regex, in
    value: Any
    compiled: Any = None

    def test(self, got: str | None) -> bool:
        if self.kind == "equals":
            return got == self.value
        if self.kind == "not":
            return got != self.value
        if self.kind == "in":
            return got in self.value
        return got is not None and self.compiled.fullmatch(got) is not None


@dataclass(eq=False)  # hashed by identity: rules are keys of the guards' tables
class Rule:
    spec: TriggerSpec
    file: str
    line: int
    labels: list[Matcher]
    annotations: list[Matcher]
    id: str = field(init=False)  # spec.id, read often enough in a big delivery to be a plain attribute

    def __post_init__(self) -> None:
        self.id = self.spec.id

    def matches(self, labels: dict[str, str], annotations: dict[str, str]) -> bool:
        return all(m.test(labels.get(m.key)) for m in self.labels) and \
            all(m.test(annotations.get(m.key)) for m in self.annotations)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "runbook": self.spec.runbook, "source": self.spec.source, "file": self.file,
                "line": self.line}


@dataclass
class RuleSet:
    rules: list[Rule] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    # An index for big deliveries: rules keyed by one equals-label each, and the rest, checked for every alert.
    _by_label: dict[tuple[str, str, str], list[Rule]] = field(default_factory=dict)
    _unindexed: dict[str, list[Rule]] = field(default_factory=dict)
    _index_labels: dict[str, set[str]] = field(default_factory=dict)
    _order: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._order = {id(r): i for i, r in enumerate(self.rules)}
        for rule in self.rules:
            if not rule.spec.enabled or rule.spec.schedule is not None:
                continue
            source = rule.spec.source
            equals = [m for m in rule.labels if m.kind == "equals"]
            pick = next((m for m in equals if m.key == "alertname"), equals[0] if equals else None)
            if pick is None:
                self._unindexed.setdefault(source, []).append(rule)
            else:
                self._by_label.setdefault((source, pick.key, pick.value), []).append(rule)
                self._index_labels.setdefault(source, set()).add(pick.key)

    def candidates(self, source: str, labels: dict[str, str]) -> list[Rule]:
        """Rules that may match an alert of this source with these labels, in file order."""
        found = list(self._unindexed.get(source, ()))
        for key in self._index_labels.get(source, ()):
            value = labels.get(key)
            if value is not None:
                found.extend(self._by_label.get((source, key, value), ()))
        if len(found) > 1:
            found.sort(key=lambda r: self._order[id(r)])
        return found

    def schedules(self) -> list[Rule]:
        return [r for r in self.rules if r.spec.schedule is not None and r.spec.enabled]

    def get(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

    def sources(self) -> set[str]:
        return {r.spec.source for r in self.rules}

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


_ENV = None


def template_environment() -> Any:
    global _ENV
    if _ENV is None:
        _ENV = expressions.restricted_environment(filters=TEMPLATE_FILTERS)
    return _ENV


def _check_template(report: _Reporter, path: yamlpos.Path, text: str) -> None:
    try:
        tree = expressions.parse(text, bare=False, env=template_environment())
    except TemplateError as exc:
        report.add(path, f"template {text.strip()!r} does not parse: {exc.message or exc} (trigger templates may "
                   f"use these filters only: {', '.join(sorted(TEMPLATE_FILTERS))})")
        return
    if any(not isinstance(n, nodes.Output) for n in tree.body):
        report.add(path, f"template {text.strip()!r}: only {{{{ expressions }}}} are allowed in trigger params, "
                   "not {% statements %}")
        return
    for attr in expressions.private_attributes(tree):
        report.add(path, f"template uses {attr!r}: attributes starting with _ are blocked by the sandbox")
    for chain, _line in expressions.references(tree):
        if chain[0] not in TEMPLATE_ROOTS:
            report.add(path, f"template {text.strip()!r}: unknown name {chain[0]!r}; trigger templates read "
                       f"{', '.join(sorted(TEMPLATE_ROOTS))}")


def _matchers(report: _Reporter, path: yamlpos.Path, raw: dict[str, Op]) -> list[Matcher]:
    out = []
    for key, value in raw.items():
        if value.regex is not None:
            try:
                compiled = re2.compile(value.regex)
            except re2.error as exc:
                why = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
                report.add((*path, key, "regex"), f"regex {value.regex!r} is not valid RE2 syntax: {why}")
                continue
            out.append(Matcher(key, "regex", value.regex, compiled))
        elif value.in_ is not None:
            out.append(Matcher(key, "in", frozenset(value.in_)))
        elif value.not_ is not None:
            out.append(Matcher(key, "not", value.not_))
        else:
            out.append(Matcher(key, "equals", value.equals))
    return out


def _check_params(report: _Reporter, path: yamlpos.Path, spec: TriggerSpec, runbook: Runbook | None) -> None:
    for name, value in spec.params.items():
        if isinstance(value, str) and expressions.has_template(value):
            _check_template(report, (*path, "params", name), value)
        elif runbook is not None and name in runbook.params:
            problem = coerce_one(name, runbook.params[name], value)[1]
            if problem:
                report.add((*path, "params", name), f"param {name}: {problem}")
    if spec.open_incident is not None and expressions.has_template(spec.open_incident.title):
        _check_template(report, (*path, "open_incident", "title"), spec.open_incident.title)
    if runbook is None:
        return
    for name in spec.params:
        if name not in runbook.params:
            known = ", ".join(sorted(runbook.params)) or "none"
            report.add((*path, "params", name), f"runbook {runbook.id!r} has no param {name!r}; it takes: {known}",
                       key=True)
    for name, param in runbook.params.items():
        if param.is_required and name not in spec.params:
            report.add((*path, "params"), f"runbook {runbook.id!r} needs param {name!r}: give it under params:")


def check_rules(text: str, source: str, *, runbooks: dict[str, Checked], default_runbook: str | None = None,
                key: str = "triggers") -> RuleSet:
    """Validate a trigger file (a `triggers:` list, or a runbook that has one); every problem with its position."""
    try:
        data, positions = yamlpos.load(text)
    except yamlpos.YamlProblem as exc:
        return RuleSet(problems=[Problem(source, exc.line, exc.column, exc.message)])
    report = _Reporter(source, positions)
    prefix: yamlpos.Path
    if isinstance(data, dict) and key in data:
        raw_rules, prefix = data[key], (key,)
    elif isinstance(data, list) and default_runbook is None:
        raw_rules, prefix = data, ()
    else:
        report.add((), f"a trigger file is a mapping with a {key}: list of rules")
        return RuleSet(problems=report.problems)
    if not isinstance(raw_rules, list):
        report.add(prefix, f"{key}: must be a list of rules (- id: ..., runbook: ...)")
        return RuleSet(problems=report.problems)
    rules = []
    for index, raw in enumerate(raw_rules):
        path: yamlpos.Path = (*prefix, index)
        if isinstance(raw, dict) and default_runbook is not None:
            raw = {"runbook": default_runbook, **raw}
        if isinstance(raw, dict) and True in raw:  # YAML 1.1 reads a bare `on:` as true; no rule key is `on`
            report.add(path, "unknown key 'on': did you mean on_resolved?", key=True)
            continue
        try:
            spec = TriggerSpec.model_validate(raw)
        except ValidationError as exc:
            _pydantic_problems(report, exc, path, raw)
            _partial_checks(report, path, raw, runbooks)
            continue
        checked = runbooks.get(spec.runbook)
        if checked is None or checked.runbook is None:
            known = ", ".join(sorted(runbooks)[:20]) or "none"
            report.add((*path, "runbook"), f"no runbook {spec.runbook!r} under the runbooks directory; known: {known}")
            runbook = None
        else:
            runbook = checked.runbook
        labels = _matchers(report, (*path, "match", "labels"), spec.match.labels)
        annotations = _matchers(report, (*path, "match", "annotations"), spec.match.annotations)
        _check_params(report, path, spec, runbook)
        if spec.on_resolved is not None and spec.status == "resolved":
            report.add((*path, "on_resolved"), "on_resolved applies to rules that start runs on firing alerts")
        if spec.on_resolved == "resolve_incident" and spec.open_incident is None:
            report.add((*path, "on_resolved"), "on_resolved: resolve_incident needs open_incident: on this rule")
        if spec.schedule is not None and (spec.match.labels or spec.match.annotations):
            report.add((*path, "match"), "a schedule has no alert to match: remove match:")
        line = yamlpos.position(positions, path)[0]
        rules.append(Rule(spec, source, line, labels, annotations))
    return RuleSet(rules=rules, problems=report.problems)


def _partial_checks(report: _Reporter, path: yamlpos.Path, raw: Any, runbooks: dict[str, Checked]) -> None:
    """The checks of a rule that did not validate, on the parts that do on their own: all errors at once."""
    if not isinstance(raw, dict):
        return
    match: dict[str, Any] = raw["match"] if isinstance(raw.get("match"), dict) else {}
    for part in ("labels", "annotations"):
        values: dict[str, Any] = match[part] if isinstance(match.get(part), dict) else {}
        good = {}
        for key, value in values.items():
            try:
                good[key] = Op.model_validate(_scalar_op(value))
            except ValidationError:
                continue
        _matchers(report, (*path, "match", part), good)
    runbook_id = raw.get("runbook")
    checked = runbooks.get(runbook_id) if isinstance(runbook_id, str) else None
    if not isinstance(raw.get("params"), dict):
        return  # a missing params: is reported with the runbook's required params only when the rule is whole
    partial = TriggerSpec.model_construct(id="?", runbook=str(runbook_id), params=raw["params"], open_incident=None)
    _check_params(report, path, partial, checked.runbook if checked is not None else None)


def merge(parts: list[RuleSet]) -> RuleSet:
    """One rule set from several files; a rule id used twice keeps the first and reports the other."""
    seen: dict[str, Rule] = {}
    problems: list[Problem] = []
    rules: list[Rule] = []
    for part in parts:
        problems.extend(part.problems)
        file_has_errors = bool(part.errors)
        for rule in part.rules:
            if rule.id in seen:
                other = seen[rule.id]
                problems.append(Problem(rule.file, rule.line, 1, f"trigger id {rule.id!r} is already used at "
                                        f"{other.file}:{other.line}; this rule is skipped"))
                continue
            seen[rule.id] = rule
            if not file_has_errors:
                rules.append(rule)
    return RuleSet(rules=rules, problems=problems)


def load(directory: Path, snapshot: Snapshot) -> RuleSet:
    """Every trigger under the runbooks directory. A file with an error contributes no rule at all (like an
    invalid runbook, which is skipped), so a half-understood rule never starts anything."""
    parts = []
    for name, checked in sorted(snapshot.runbooks.items()):
        if checked.runbook is not None and checked.runbook.triggers:
            parts.append(check_rules(checked.text, checked.source, runbooks=snapshot.runbooks, default_runbook=name))
    for path in sorted(directory.rglob(f"*{TRIGGER_SUFFIX}")) if directory.is_dir() else []:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            parts.append(RuleSet(problems=[Problem(str(path), 1, 1, f"cannot read the file: {exc}")]))
            continue
        parts.append(check_rules(text, str(path), runbooks=snapshot.runbooks))
    merged = merge(parts)
    for problem in merged.errors:
        log.warning("trigger rule problem", extra={"problem": str(problem)})
    return merged


class RuleCache:
    """The rule set of a runbooks directory, rebuilt when a runbook or trigger file changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._rules = RuleSet()

    def get(self, directory: Path, snapshot: Snapshot) -> RuleSet:
        with self._lock:
            # One directory listing per delivery: a new or changed trigger file counts from the next delivery.
            files = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size)
                          for p in sorted(directory.rglob(f"*{TRIGGER_SUFFIX}"))) if directory.is_dir() else ()
            key = (snapshot.signature, files)
            if key != self._key:
                self._rules = load(directory, snapshot)
                self._key = key
            return self._rules


_caches: dict[Path, RuleCache] = {}


def rules_for(directory: Path, snapshot: Snapshot) -> RuleSet:
    cache = _caches.setdefault(directory, RuleCache())
    return cache.get(directory, snapshot)


def render_params(rule: Rule, context: dict[str, Any]) -> dict[str, Any]:
    """The rule's params for one alert; raises expressions.ExpressionError saying which param and why."""
    env = template_environment()
    out: dict[str, Any] = {}
    for name, value in rule.spec.params.items():
        out[name] = _render(env, name, value, context)
    return out


def render_text(value: str, context: dict[str, Any], *, name: str = "title") -> str:
    return str(_render(template_environment(), name, value, context))


@lru_cache(maxsize=4096)
def _compiled_expression(expr: str) -> Any:
    return template_environment().compile_expression(expr, undefined_to_none=False)


@lru_cache(maxsize=4096)
def _compiled_template(text: str) -> Any:
    return template_environment().from_string(text)


def _render(env: Any, name: str, value: Any, context: dict[str, Any]) -> Any:
    if not isinstance(value, str) or not expressions.has_template(value):
        return value
    try:
        inner = expressions.whole_expression(value)
        if inner is not None:
            result = _compiled_expression(inner)(**context)
            if isinstance(result, Undefined):
                result._fail_with_undefined_error()
        else:
            result = _compiled_template(value).render(**context)
    except expressions.ExpressionError as exc:
        raise expressions.ExpressionError(f"param {name}: {exc}") from None
    except (TemplateError, TypeError, ValueError, ArithmeticError, LookupError, OverflowError) as exc:
        raise expressions.ExpressionError(f"param {name}: {value.strip()!r}: {type(exc).__name__}: {exc}") from None
    if len(str(result)) > MAX_PARAM_CHARS:
        raise expressions.ExpressionError(f"param {name}: the rendered value is longer than {MAX_PARAM_CHARS} "
                                          "characters")
    return result


def firing_key(*parts: str | None) -> str:
    """The idempotency key of one rule acting on one alert or slot: a SHA-256 of its parts."""
    return hashlib.sha256("\x1f".join([p or "" for p in parts]).encode()).hexdigest()
