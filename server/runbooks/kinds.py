"""The step-kind registry: each `uses:` name, the pydantic model of its `with:` inputs, what it does.

A leaf module: it imports no domain. Each domain registers its kinds into it (`register_kind` at the end of
its own steps module, e.g. server/flags/steps.py), and server/runbooks/catalog.py imports every such module
and offers the complete CATALOG, which is what validation and the engine read. workers/steps/ holds one
implementation per entry; tests/workers/test_step_catalog.py fails when the two disagree.

Adding a kind (say `flag.set`):
1. define its inputs model (a `StepInputs` subclass, so unknown keys are errors) in your own domain, e.g.
   server/flags/steps.py, with a `register_kind(...)` line after it; if the module is new, add its import
   to server/runbooks/catalog.py;
2. write workers/steps/flag_set.py with a `Step` subclass decorated `@register("flag.set")` (see
   workers/steps/base.py); modules there are discovered, nothing else to edit;
3. test it under tests/workers/steps/.

Every string input may be a `{{ ... }}` template, rendered just before the step runs; inputs marked
`expression()` are bare expressions (like `if:`) that the step evaluates itself, possibly many times.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.durations import Duration


class StepInputs(BaseModel):
    """Base of every kind's inputs: unknown keys are errors, so a typo never silently does nothing."""

    # coerce_numbers_to_str: `argv: [sleep, "{{ params.seconds }}"]` renders an int, and that is fine.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, coerce_numbers_to_str=True)


def expression(description: str, **kwargs: Any) -> Any:
    """A field holding a bare expression: validated at load time, evaluated by the step at run time."""
    return Field(description=description, json_schema_extra={"expression": True}, **kwargs)


@dataclass(frozen=True)
class KindSpec:
    name: str
    inputs: type[StepInputs]
    description: str
    compensates: bool = False  # has a compensate() that `on_failure: rollback` calls
    # Running it again changes nothing outside the run (but the worker's own log), so a quick step's
    # result may be committed with the next step's (workers/engine.py): a crash in between runs it again.
    side_effect_free: bool = False
    # Cannot block (no I/O beyond a live output line, no waiting): the engine runs it on its own thread
    # instead of a thread it can stop waiting for, which costs more than such a step itself.
    instant: bool = False
    outputs: tuple[str, ...] = ()  # documented output names (what steps.<id>.outputs offers)

    def expression_fields(self) -> set[str]:
        return {name for name, field in self.inputs.model_fields.items()
                if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("expression")}


# Filled by register_kind as modules are imported: read the complete one as server.runbooks.catalog.CATALOG.
REGISTERED: dict[str, KindSpec] = {}


def register_kind(name: str, inputs: type[StepInputs], description: str, *, compensates: bool = False,
                  outputs: tuple[str, ...] = (), side_effect_free: bool = False, instant: bool = False) -> KindSpec:
    if name in REGISTERED:
        raise ValueError(f"step kind {name!r} is registered twice")
    spec = KindSpec(name, inputs, description, compensates=compensates, outputs=outputs,
                    side_effect_free=side_effect_free, instant=instant)
    REGISTERED[name] = spec
    return spec


# -- inputs of the kinds this module ships ---------------------------------------------------------
class HttpExpect(StepInputs):
    status: int | list[int] | None = Field(None, description="Accepted status code(s).")
    max_latency_ms: float | None = Field(None, gt=0, description="Fail when slower than this.")
    body_contains: str | None = Field(None, description="Text the body must contain.")
    json_path_equals: dict[str, Any] | None = Field(
        None, description="Dotted paths into the JSON body and the value each must equal, e.g. {status: ok}.")


class HttpRequestInputs(StepInputs):
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    url: str = Field(description="http(s) URL.")
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = Field(None, alias="json", description="A JSON request body.")
    body: str | None = Field(None, description="A raw request body.")
    timeout: Duration = Field(timedelta(seconds=10), description="Whole request timeout.")
    follow_redirects: bool = False
    verify_tls: bool = True
    expect: HttpExpect | None = None

    @model_validator(mode="after")
    def _one_body(self) -> HttpRequestInputs:
        if self.json_body is not None and self.body is not None:
            raise ValueError("give either json or body, not both")
        return self


class ShellInputs(StepInputs):
    argv: list[str] | None = Field(None, description="Program and arguments, each param its own item.")
    command: str | None = Field(None, description="Split with shlex into argv; never run through a shell.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    cwd: str | None = None
    timeout: Duration | None = Field(None, description="Kill the process group after this long.")
    allow_exit_codes: list[int] = Field(default_factory=list, description="Non-zero exit codes that pass.")

    @model_validator(mode="after")
    def _one_command(self) -> ShellInputs:
        if (self.argv is None) == (self.command is None):
            raise ValueError("give exactly one of argv (a list) or command (a string)")
        if self.argv is not None and not self.argv:
            raise ValueError("argv must name a program")
        return self


class WaitInputs(StepInputs):
    duration: Duration | None = Field(None, description="Just wait this long, e.g. 30s.")
    until: str | None = expression("Poll this expression until it is true (context: params, steps, run, probe).",
                                   default=None)
    url: str | None = Field(None, description="With until: GET this URL before each poll; its result is `probe`.")
    interval: Duration = Field(timedelta(seconds=5), description="Time between polls.")
    deadline: Duration = Field(timedelta(minutes=5), description="Fail when until is still false after this long.")

    @model_validator(mode="after")
    def _one_mode(self) -> WaitInputs:
        if (self.duration is None) == (self.until is None):
            raise ValueError("give exactly one of duration or until")
        if self.url is not None and self.until is None:
            raise ValueError("url only makes sense with until")
        return self


class AssertInputs(StepInputs):
    that: Any = expression("An expression that must be true, e.g. steps.probe.outputs.status == 200.")
    message: str | None = Field(None, description="Shown when the assertion fails.")
    finding: str | None = Field(None, max_length=300, description="When the assertion holds, emit this one-line "
                                "finding (severity error): a hypothesis confirmed, so the step reads 'problem found'.")


class LogInputs(StepInputs):
    message: str
    level: Literal["debug", "info", "warning", "error"] = "info"


class NotifyInputs(StepInputs):
    url: str = Field(description="Incoming-webhook URL (Slack or Mattermost).")
    text: str
    channel: str | None = None
    username: str | None = None
    timeout: Duration = Field(timedelta(seconds=10))


register_kind("http.request", HttpRequestInputs, "Send an HTTP request and check status, latency and body.",
              outputs=("status", "latency_ms", "headers", "body", "json", "trace_id", "span_id"))
register_kind("shell", ShellInputs, "Run a program (argv, never through a shell) with a timeout.",
              outputs=("exit_code", "stdout", "stderr"))
register_kind("wait", WaitInputs, "Wait for a duration, or until an expression is true.",
              outputs=("waited_s", "polls"))
register_kind("assert", AssertInputs, "Fail the step unless an expression is true.", outputs=("value",),
              side_effect_free=True, instant=True)
register_kind("log", LogInputs, "Write a message into the run.", outputs=("message",), side_effect_free=True,
              instant=True)
register_kind("notify", NotifyInputs, "Post a message to a Slack- or Mattermost-compatible webhook.",
              outputs=("status",))
