"""Column helpers shared by every domain's tables."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator
from sqlalchemy import JSON, DateTime
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Column, Field

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_words(value: datetime | str) -> str:
    """A time as people read it everywhere we show one (console, report, CLI): "2026-01-31 12:30:00 UTC"."""
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return as_utc(when).strftime("%Y-%m-%d %H:%M:%S UTC")


UTCDateTime = Annotated[datetime, AfterValidator(as_utc)]
"""A datetime that public schemas always show in UTC with its offset, whatever the database returned."""


def json_field(default: Any = None, nullable: bool = True) -> Any:
    return Field(default=default, sa_column=Column(JSONType, nullable=nullable))


def ts_field(*, nullable: bool = False, index: bool = False, default_now: bool = False) -> Any:
    column = Column(DateTime(timezone=True), nullable=nullable, index=index)
    if default_now:
        return Field(default_factory=utcnow, sa_column=column)
    return Field(default=None, sa_column=column)
