"""Runbooks uploaded through the API (files under RUNBOOKD_RUNBOOKS_DIR are not in the database)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField
from sqlalchemy import Column, Text
from sqlmodel import Field, SQLModel

from server.models_base import UTCDateTime, ts_field


class UploadedRunbook(SQLModel, table=True):
    __tablename__ = "uploaded_runbooks"

    id: int | None = Field(default=None, primary_key=True)
    runbook_id: str = Field(max_length=100, unique=True, index=True)
    content: str = Field(sa_column=Column(Text, nullable=False))
    content_hash: str = Field(max_length=64)
    uploaded_by: str = Field(max_length=200)
    uploaded_at: datetime = ts_field(default_now=True)


class RunbookUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is an error, never ignored
    content: str = PydanticField(min_length=1, max_length=256 * 1024, description="The runbook's YAML text.")


class ValidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is an error, never ignored
    content: str = PydanticField(min_length=1, max_length=256 * 1024)
    filename: str = PydanticField("runbook.yaml", max_length=200)


class ProblemPublic(BaseModel):
    file: str
    line: int
    column: int
    message: str
    severity: str
    path: str


class ValidateResult(BaseModel):
    valid: bool
    errors: list[ProblemPublic]
    warnings: list[ProblemPublic]


class StepSummary(BaseModel):
    id: str
    title: str | None
    phase: str | None
    uses: str
    approval: str | None
    on: str | None


class RunbookSummary(BaseModel):
    id: str
    title: str
    description: str | None
    tags: list[str]
    source: str  # "file" or "upload"
    content_hash: str


class RunbookDetail(RunbookSummary):
    params: dict[str, Any]
    steps: list[StepSummary]
    timeout: str | None
    concurrency: int | None
    on_failure: str
    outputs: dict[str, Any]
    content: str
    uploaded_at: UTCDateTime | None = None


class RunbookList(BaseModel):
    items: list[RunbookSummary]
    problems: list[ProblemPublic] = PydanticField(description="Files that were skipped, and why.")
