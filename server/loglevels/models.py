"""Temporary log-level overrides, for other services' loggers and for runbookd's own."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, field_validator
from pydantic import Field as PydanticField
from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from server.durations import Duration
from server.loglevels.levels import canonical
from server.models_base import UTCDateTime, ts_field

SERVICE_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,99}$"
LOGGER_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,199}$"
# runbookd's own loggers live in the same table under a name no real service can take (see SERVICE_PATTERN).
SERVER_SERVICE = "_runbookd"
SERVER_SERVICE_LABEL = "runbookd (this server)"


def service_label(service: str | None) -> str:
    """A service's name as a person reads it: runbookd's own loggers are "runbookd (this server)", not the
    internal `_runbookd` (the console, the incident report and its timeline all say it through this)."""
    return SERVER_SERVICE_LABEL if service == SERVER_SERVICE else service or ""


class LogLevelOverride(SQLModel, table=True):
    """One requested level for one logger of one service; rows are never deleted, only ended."""

    __tablename__ = "loglevel_overrides"
    __table_args__ = (
        Index("ix_loglevel_active", "service", "ended_at", "id"),
        Index("ix_loglevel_expiry", "ended_at", "expires_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    service: str = Field(max_length=100)
    logger: str = Field(max_length=200)
    level: str = Field(max_length=8)
    reason: str | None = Field(default=None, max_length=2000)
    incident_id: str | None = Field(default=None, max_length=64, index=True)  # no FK: incidents come later
    created_by: str = Field(max_length=200)
    created_at: datetime = ts_field(default_now=True)
    expires_at: datetime | None = ts_field(nullable=True)
    ended_at: datetime | None = ts_field(nullable=True)
    ended_by: str | None = Field(default=None, max_length=200)
    end_reason: str | None = Field(default=None, max_length=2000)


class OverrideCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is an error, never ignored
    service: str = PydanticField(pattern=SERVICE_PATTERN, description="The service whose agent applies it.")
    logger: str = PydanticField(pattern=LOGGER_PATTERN, description="Logger name; ROOT for the root logger.")
    level: str = PydanticField(description="OFF, FATAL, ERROR, WARN, INFO, DEBUG or TRACE.")
    for_: Duration | None = PydanticField(default=None, alias="for", description="How long, e.g. 15m.")
    reason: str | None = PydanticField(default=None, max_length=2000)
    incident_id: str | None = PydanticField(default=None, max_length=64)

    @field_validator("level")
    @classmethod
    def _canonical(cls, value: str) -> str:
        return canonical(value)


class OverridePublic(BaseModel):
    id: int
    service: str
    logger: str
    level: str
    reason: str | None
    incident_id: str | None
    created_by: str
    created_at: UTCDateTime
    expires_at: UTCDateTime | None
    ended_at: UTCDateTime | None
    ended_by: str | None
    end_reason: str | None
    active: bool
    effective: bool = PydanticField(description="True when this is the newest active override on its logger.")


class EffectiveLevel(BaseModel):
    level: str
    override_id: int
    expires_at: UTCDateTime | None


class ServiceLevels(BaseModel):
    """What an agent reads: the level each overridden logger should have now."""

    service: str
    loggers: dict[str, EffectiveLevel]
    poll_after_seconds: float | None = PydanticField(
        description="Seconds until the next override here ends; poll again by then at the latest.")


class ActuatorLevel(BaseModel):
    """POST /debug/loggers/{name} as Spring Boot Actuator takes it, plus `for` and the audit fields."""
    model_config = ConfigDict(extra="forbid")  # an unknown field is an error, never ignored

    configuredLevel: str | None = None  # Spring Boot's camelCase name
    for_: Duration | None = PydanticField(default=None, alias="for")
    reason: str | None = PydanticField(default=None, max_length=2000)
    incident_id: str | None = PydanticField(default=None, max_length=64)

    @field_validator("configuredLevel")
    @classmethod
    def _canonical(cls, value: str | None) -> str | None:
        return None if value is None else canonical(value)
