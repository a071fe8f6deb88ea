"""The append-only, hash-chained audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from server.models_base import UTCDateTime, json_field, ts_field

GENESIS_HASH = "0" * 64


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_actor_id", "actor", "id"),
        Index("ix_audit_action_id", "action", "id"),
        Index("ix_audit_target_id", "target_type", "target_id", "id"),
        Index("ix_audit_incident_id", "incident_id", "id"),
        # Never reuse an id on SQLite (it would after retention empties the table): the chain is ordered by id.
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    ts: datetime = ts_field(index=True, default_now=True)
    actor: str = Field(max_length=200)
    source: str = Field(max_length=16)
    action: str = Field(max_length=100)
    target_type: str = Field(max_length=50)
    target_id: str | None = Field(default=None, max_length=200)
    before: Any = json_field()
    after: Any = json_field()
    reason: str | None = Field(default=None, max_length=2000)
    incident_id: str | None = Field(default=None, max_length=64)
    request_id: str | None = Field(default=None, max_length=128)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditHead(SQLModel, table=True):
    """One row: the newest event's id and hash (so removing the newest is detected too) and the
    checkpoint that retention leaves when it removes old events."""

    __tablename__ = "audit_head"

    id: int = Field(default=1, primary_key=True)
    last_id: int = 0
    last_hash: str = Field(default=GENESIS_HASH, max_length=64)
    checkpoint_id: int = 0
    checkpoint_hash: str = Field(default=GENESIS_HASH, max_length=64)


class AuditEventPublic(BaseModel):
    id: int
    ts: UTCDateTime
    actor: str
    source: str
    action: str
    target_type: str
    target_id: str | None
    before: Any
    after: Any
    reason: str | None
    incident_id: str | None
    request_id: str | None
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    items: list[AuditEventPublic]
    next_cursor: str | None
