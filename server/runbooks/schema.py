"""The runbook format as pydantic models: the structure half of validation (validation.py does the rest)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.durations import Duration

ID_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
STEP_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
PARAM_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

ParamType = Literal["string", "integer", "number", "boolean", "duration", "enum", "list"]
Phase = Literal["reproduce", "observe", "hypothesize", "test", "fix", "verify"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ParamSpec(_Strict):
    type: ParamType = "string"
    description: str | None = None
    required: bool | None = Field(None, description="Default: required unless it has a default.")
    default: Any = None
    pattern: str | None = Field(None, description="Regular expression a string must match in full.")
    minimum: float | None = None
    maximum: float | None = None
    choices: list[Any] | None = Field(None, description="The allowed values of an enum.")
    secret: bool = Field(False, description="Masked as *** wherever it could be shown or stored.")

    @property
    def is_required(self) -> bool:
        return self.required if self.required is not None else self.default is None

    @model_validator(mode="after")
    def _enum_has_choices(self) -> ParamSpec:
        if self.type == "enum" and not self.choices:
            raise ValueError("an enum param needs choices: [a, b, ...]")
        if self.choices is not None and self.type != "enum":
            raise ValueError("choices only apply to type: enum")
        if self.pattern is not None and self.type not in ("string", "list"):
            raise ValueError("pattern only applies to string (or list of strings) params")
        return self


class RetrySpec(_Strict):
    attempts: int = Field(1, ge=1, le=20, description="Total tries, the first one included.")
    backoff: Duration = Field(timedelta(seconds=1), description="Wait before try 2; doubles after each failure.")


class StepSpec(_Strict):
    id: str = Field(pattern=STEP_ID_PATTERN, max_length=64)
    title: str | None = None
    phase: Phase | None = None
    uses: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    if_: str | bool | None = Field(None, alias="if")
    retry: RetrySpec = Field(default_factory=RetrySpec)
    timeout: Duration | None = None
    continue_on_error: bool = False
    on: str | None = Field(None, pattern=r"^[A-Za-z0-9_.@-]+$", description="Celery queue of the host to run on.")
    approval: Literal["required"] | None = Field(
        None, description='"required", or {required: true, by: anyone|others}; by: others is the four-eyes rule.')
    approval_by: Literal["anyone", "others"] | None = Field(None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _approval_mapping(cls, data: Any) -> Any:
        """`approval: {required: true, by: others}` is read as approval: required plus who may give it."""
        if isinstance(data, dict) and isinstance(data.get("approval"), dict):
            data = dict(data)
            spec = dict(data.pop("approval"))
            unknown = sorted(set(map(str, spec)) - {"required", "by"})
            if unknown:
                raise ValueError(f"approval: unknown key {unknown[0]!r}; use required: and by:")
            required, by = spec.get("required", True), spec.get("by")
            if not isinstance(required, bool):
                raise ValueError("approval.required must be true or false")
            if by not in (None, "anyone", "others"):
                raise ValueError("approval.by must be anyone or others (someone other than the run's starter)")
            data["approval"] = "required" if required else None
            data["approval_by"] = by if required else None
        elif isinstance(data, dict) and "approval_by" in data:
            raise ValueError("unknown key 'approval_by': write approval: {required: true, by: others}")
        return data

    def approvers(self, *, others_by_default: bool) -> str | None:
        """None when no approval is needed; else who may give it: anyone (with the role) or others."""
        if self.approval != "required":
            return None
        return self.approval_by or ("others" if others_by_default else "anyone")


class Runbook(_Strict):
    id: str = Field(pattern=ID_PATTERN, max_length=100)
    title: str
    description: str | None = None
    tags: list[str] = Field(default_factory=list)
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    timeout: Duration | None = None
    concurrency: int | None = Field(None, ge=1)
    on_failure: Literal["stop", "rollback", "continue"] = "stop"
    steps: list[StepSpec] = Field(min_length=1)
    outputs: dict[str, Any] = Field(default_factory=dict)
    # Alert and schedule triggers that start this runbook: validated by server.hooks.rules, not here.
    triggers: list[Any] = Field(default_factory=list)
    on_worker_lost: Literal["resume", "fail"] = Field(
        "resume", description="When the run's worker is lost (no heartbeat for RUNBOOKD_RUN_REAP_GRACE): resume it "
        "on another worker at its first unfinished step, which runs again (at most RUNBOOKD_MAX_RESUMES times), "
        "or fail it.")

    def step(self, step_id: str) -> StepSpec:
        return next(s for s in self.steps if s.id == step_id)

    def secret_params(self) -> set[str]:
        return {name for name, spec in self.params.items() if spec.secret}
