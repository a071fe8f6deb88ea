"""Incidents: what on-call is fighting, and the thread that ties runs, flag changes and log levels together."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from pydantic import Field as PydanticField
from sqlmodel import Field, SQLModel

from server.models_base import UTCDateTime, ts_field

INCIDENT_REF = re.compile(r"^(?:INC-)?(\d{1,9})$", re.I)


class Severity(StrEnum):
    sev1 = "sev1"
    sev2 = "sev2"
    sev3 = "sev3"
    sev4 = "sev4"


class IncidentStatus(StrEnum):
    open = "open"
    mitigated = "mitigated"
    resolved = "resolved"


class Incident(SQLModel, table=True):
    __tablename__ = "incidents"

    id: int | None = Field(default=None, primary_key=True)
    title: str = Field(max_length=300)
    severity: str = Field(max_length=8)
    status: str = Field(default=IncidentStatus.open.value, max_length=16, index=True)
    commander: str | None = Field(default=None, max_length=200)
    summary: str | None = Field(default=None, max_length=10000)
    channel: str | None = Field(default=None, max_length=200, index=True)  # e.g. slack:T1/C42
    opened_by: str = Field(max_length=200)
    opened_at: datetime = ts_field(default_now=True, index=True)
    mitigated_at: datetime | None = ts_field(nullable=True)
    resolved_at: datetime | None = ts_field(nullable=True)

    @property
    def key(self) -> str:
        """The id other records carry in their incident_id: INC-<n>."""
        return f"INC-{self.id}"


def incident_number(ref: str | int) -> int | None:
    """INC-7, inc-7 or 7 -> 7; anything else -> None."""
    match = INCIDENT_REF.match(str(ref).strip())
    return int(match.group(1)) if match else None


class IncidentCreate(BaseModel):
    model_config = {"extra": "forbid"}

    title: str = PydanticField(min_length=1, max_length=300)
    severity: Severity = Severity.sev3
    commander: str | None = PydanticField(default=None, max_length=200)
    summary: str | None = PydanticField(default=None, max_length=10000)
    channel: str | None = PydanticField(default=None, max_length=200)


class IncidentUpdate(BaseModel):
    model_config = {"extra": "forbid"}

    title: str | None = PydanticField(default=None, min_length=1, max_length=300)
    severity: Severity | None = None
    status: IncidentStatus | None = None
    commander: str | None = PydanticField(default=None, max_length=200)
    summary: str | None = PydanticField(default=None, max_length=10000)
    channel: str | None = PydanticField(default=None, max_length=200)
    reason: str | None = PydanticField(default=None, max_length=2000)


class IncidentPublic(BaseModel):
    id: str
    title: str
    severity: str
    status: str
    commander: str | None
    summary: str | None
    channel: str | None
    opened_by: str
    opened_at: UTCDateTime
    mitigated_at: UTCDateTime | None
    resolved_at: UTCDateTime | None

    @classmethod
    def of(cls, incident: Incident) -> IncidentPublic:
        data = incident.model_dump()
        data["id"] = incident.key
        return cls.model_validate(data)


class TimelineEntry(BaseModel):
    ts: UTCDateTime
    kind: str                 # audit, run, step, flag, loglevel
    actor: str | None
    action: str
    target: str | None
    summary: str
    details: dict[str, Any] | None = None
