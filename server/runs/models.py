"""Runs, their steps and their event history."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField
from sqlalchemy import Column, Index, Integer, Text, UniqueConstraint
from sqlalchemy import Enum as SAEnum
from sqlmodel import Field, SQLModel

from server.models_base import UTCDateTime, json_field, ts_field


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    waiting_approval = "waiting_approval"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    timed_out = "timed_out"

    @property
    def finished(self) -> bool:
        return self in FINISHED_RUN


FINISHED_RUN = {RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled, RunStatus.timed_out}


class StepStatus(StrEnum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"
    cancelled = "cancelled"
    timed_out = "timed_out"


FINISHED_STEP = {StepStatus.succeeded, StepStatus.failed, StepStatus.skipped, StepStatus.cancelled,
                 StepStatus.timed_out}


def status_column(enum: type[StrEnum]) -> Column[Any]:
    """A status as the enum, stored as its value in the existing VARCHAR(20) (no native enum type, no CHECK
    constraint: the same column on PostgreSQL and SQLite, so no migration)."""
    return Column(SAEnum(enum, native_enum=False, create_constraint=False, length=20, validate_strings=True,
                         values_callable=lambda members: [m.value for m in members]), nullable=False)


class Run(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_status_id", "status", "id"),
        Index("ix_runs_runbook_status", "runbook_id", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    runbook_id: str = Field(max_length=100, index=True)
    runbook_hash: str = Field(max_length=64)
    definition: str = Field(sa_column=Column(Text, nullable=False))  # the exact text that ran
    params: dict[str, Any] = json_field(default=None, nullable=False)  # secrets masked
    # Secret param values, needed by the worker; cleared as soon as the run finishes, never shown.
    secrets: dict[str, Any] | None = json_field()
    status: RunStatus = Field(default=RunStatus.queued, sa_column=status_column(RunStatus))
    actor: str = Field(max_length=200, index=True)
    incident_id: str | None = Field(default=None, max_length=64, index=True)
    dry_run: bool = False
    idempotency_key: str | None = Field(default=None, max_length=200, unique=True)
    request_hash: str | None = Field(default=None, max_length=64)
    rerun_of: int | None = None
    queue: str = Field(max_length=100)  # where its next task goes
    created_at: datetime = ts_field(default_now=True, index=True)
    dispatched_at: datetime | None = ts_field(nullable=True)  # when the broker accepted the task
    started_at: datetime | None = ts_field(nullable=True)
    finished_at: datetime | None = ts_field(nullable=True)
    deadline_at: datetime | None = ts_field(nullable=True)
    heartbeat_at: datetime | None = ts_field(nullable=True)
    worker: str | None = Field(default=None, max_length=200)  # host:pid of the process executing it
    cancel_requested_at: datetime | None = ts_field(nullable=True)
    cancelled_by: str | None = Field(default=None, max_length=200)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    outputs: dict[str, Any] | None = json_field()
    # W3C traceparent of the request that created the run (tracing on only): its worker spans join that trace.
    traceparent: str | None = Field(default=None, max_length=55)
    # Claim generation (issue 15): every claim or take-over adds one; a worker's writes of the run's progress
    # match only its own epoch, so a worker that was cut off and comes back commits nothing.
    epoch: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    resumes: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))  # by the reaper
    lost_workers: list[str] | None = json_field()  # the workers the reaper found lost, in order


class StepRun(SQLModel, table=True):
    __tablename__ = "step_runs"
    __table_args__ = (UniqueConstraint("run_id", "step_id", name="uq_step_runs_run_step"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id", index=True)
    step_id: str = Field(max_length=64)
    position: int
    uses: str = Field(max_length=100)
    phase: str | None = Field(default=None, max_length=20)
    status: StepStatus = Field(default=StepStatus.pending, sa_column=status_column(StepStatus))
    attempts: int = 0
    started_at: datetime | None = ts_field(nullable=True)
    finished_at: datetime | None = ts_field(nullable=True)
    outputs: dict[str, Any] | None = json_field()
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    approval: str | None = Field(default=None, max_length=20)  # waiting, approved, rejected
    approval_by: str | None = Field(default=None, max_length=200)
    approval_reason: str | None = Field(default=None, max_length=2000)
    compensated: str | None = Field(default=None, max_length=20)  # done or failed, after a rollback
    incident_id: str | None = Field(default=None, max_length=64, index=True)


class RunEvent(SQLModel, table=True):
    __tablename__ = "run_events"
    __table_args__ = (Index("ix_run_events_run_id_id", "run_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id")
    ts: datetime = ts_field(default_now=True)
    type: str = Field(max_length=40)
    step_id: str | None = Field(default=None, max_length=64)
    data: dict[str, Any] | None = json_field()


# -- API schemas -----------------------------------------------------------------------------------
class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is an error, never ignored
    runbook: str = PydanticField(min_length=1, max_length=100)
    params: dict[str, Any] = PydanticField(default_factory=dict)
    incident_id: str | None = PydanticField(None, max_length=64)
    dry_run: bool = False


class RerunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is an error, never ignored
    params: dict[str, Any] = PydanticField(default_factory=dict, description="Overrides; secrets must be resent.")


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is an error, never ignored
    reason: str | None = PydanticField(None, max_length=2000)


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is an error, never ignored
    reason: str | None = PydanticField(None, max_length=2000)


class StepRunPublic(BaseModel):
    step_id: str
    position: int
    uses: str
    phase: str | None
    status: StepStatus
    attempts: int
    started_at: UTCDateTime | None
    finished_at: UTCDateTime | None
    duration_s: float | None
    outputs: dict[str, Any] | None
    error: str | None
    approval: str | None
    approval_by: str | None
    approval_reason: str | None
    compensated: str | None
    findings: list[dict[str, Any]] = PydanticField(default_factory=list)
    problem_found: bool = PydanticField(False, description="a finding of severity warning or error; the status "
                                                          "(what if: and control flow read) is unchanged")


class RunSummary(BaseModel):
    id: int
    runbook: str
    status: RunStatus
    actor: str
    incident_id: str | None
    dry_run: bool
    created_at: UTCDateTime
    started_at: UTCDateTime | None
    finished_at: UTCDateTime | None
    duration_s: float | None
    error: str | None


class RunPublic(RunSummary):
    runbook_hash: str
    params: dict[str, Any]
    rerun_of: int | None
    deadline_at: UTCDateTime | None
    heartbeat_at: UTCDateTime | None
    worker: str | None
    cancel_requested_at: UTCDateTime | None
    outputs: dict[str, Any] | None
    steps: list[StepRunPublic]
    url: str
    trace_id: str | None = None  # the run's distributed trace (when tracing was on as it was created)
    findings: list[dict[str, Any]] = PydanticField(default_factory=list, description="worst first")
    artifacts: list[dict[str, Any]] = PydanticField(default_factory=list)
    resumes: int = PydanticField(0, description="times the reaper sent the run back to its queue, its worker lost")
    lost_workers: list[str] = PydanticField(default_factory=list, description="those workers, in order")


class RunPage(BaseModel):
    items: list[RunSummary]
    next_cursor: str | None


class RunEventPublic(BaseModel):
    id: int
    run_id: int
    ts: UTCDateTime
    type: str
    step_id: str | None
    data: dict[str, Any] | None
