"""Inputs of the `loglevel.raise` step kind, registered into the catalog (its implementation:
workers/steps/loglevel_raise.py)."""

from __future__ import annotations

from pydantic import Field, field_validator

from server.durations import Duration
from server.loglevels.levels import canonical
from server.loglevels.models import LOGGER_PATTERN, SERVICE_PATTERN
from server.runbooks.kinds import StepInputs, register_kind


class LogLevelRaiseInputs(StepInputs):
    service: str = Field(pattern=SERVICE_PATTERN, description="Service whose agent applies the level.")
    logger: str = Field(pattern=LOGGER_PATTERN, description="Logger name; ROOT for the root logger.")
    level: str = Field(description="OFF, FATAL, ERROR, WARN, INFO, DEBUG or TRACE.")
    for_: Duration | None = Field(None, alias="for", description="How long; DEBUG and TRACE need it.")
    reason: str | None = Field(None, max_length=2000, description="Shown in the audit log; default names the run.")

    @field_validator("level")
    @classmethod
    def _canonical(cls, value: str) -> str:
        return canonical(value)


register_kind("loglevel.raise", LogLevelRaiseInputs, "Raise one logger of one service for a while; "
              "rollback ends the override early.", compensates=True,
              outputs=("override_id", "service", "logger", "level", "expires_at"))
