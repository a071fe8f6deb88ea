"""What chat needs remembered: where to post a run's outcome once it finishes."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from server.models_base import ts_field


class ChatFollowup(SQLModel, table=True):
    """A run started from chat: beat posts its approvals and final summary to the response URL."""

    __tablename__ = "chat_followups"

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(index=True)
    platform: str = Field(max_length=20)
    response_url: str = Field(max_length=2000)
    channel: str = Field(max_length=200)
    created_at: datetime = ts_field(default_now=True)
    approvals_posted: str = Field(default="", max_length=2000)  # step ids already announced, comma-separated
    finished_posted_at: datetime | None = ts_field(nullable=True, index=True)
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=500)
