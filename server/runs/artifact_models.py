"""A run's artifacts in the database: one row per file, its bytes in chunks (server/runs/artifact_store.py).

Every api replica reads them from the database, so no artifact lives only on the worker that made it. A
chunk is at most artifact_store.CHUNK_BYTES, so no single row or message is huge on either database.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel

from server.models_base import ts_field


class RunArtifact(SQLModel, table=True):
    __tablename__ = "run_artifacts"
    __table_args__ = (
        UniqueConstraint("run_id", "name", name="uq_run_artifacts_run_name"),
        Index("ix_run_artifacts_created_at", "created_at"),  # the retention sweep's oldest-first scan
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id")
    name: str = Field(max_length=200)  # `<step>.<attempt>.<file>`, unique within the run
    step_id: str | None = Field(default=None, max_length=64)
    content_type: str = Field(max_length=100)
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    sha256: str = Field(max_length=64)  # hex; the download's ETag
    created_at: datetime = ts_field(default_now=True)


class RunArtifactChunk(SQLModel, table=True):
    __tablename__ = "run_artifact_chunks"

    artifact_id: int = Field(sa_column=Column(Integer, ForeignKey("run_artifacts.id"), primary_key=True))
    seq: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
