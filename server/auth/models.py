"""API tokens and the roles they carry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict
from pydantic import Field as PydanticField
from sqlmodel import Field, SQLModel

from server.models_base import UTCDateTime, ts_field


class Role(StrEnum):
    """Roles nest: each one may do all that the ones before it may."""

    client = "client"      # may only evaluate flags (OFREP)
    hook = "hook"          # may only deliver alerts and webhooks that trigger runs (server.hooks)
    viewer = "viewer"      # reads
    operator = "operator"  # runs runbooks, changes flags and log levels
    admin = "admin"        # tokens, runbook upload, debug endpoints

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        # hook sits beside the chain, not in it: it may trigger runs through /hooks/* and nothing else, and of
        # the others only operator and admin (who may start runs anyway) may use the hook endpoints too.
        if self is Role.hook or needed is Role.hook:
            return self is needed or (needed is Role.hook and self.rank >= Role.operator.rank)
        return self.rank >= needed.rank


class Source(StrEnum):
    api = "api"
    cli = "cli"
    chat = "chat"
    system = "system"
    hook = "hook"


@dataclass(frozen=True)
class Actor:
    """Who does something: a token holder, a chat user, the CLI user or the system itself."""

    name: str
    role: Role
    source: Source
    token_id: int | None = None

    @classmethod
    def system(cls) -> Actor:
        return cls(name="system", role=Role.admin, source=Source.system)


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_tokens"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True, index=True)
    role: str = Field(max_length=16)  # a Role value; a plain string so new roles need no enum migration
    token_hash: str = Field(max_length=64, unique=True, index=True)
    prefix: str = Field(max_length=12)
    created_by: str = Field(max_length=200)
    created_at: datetime = ts_field(default_now=True)
    expires_at: datetime | None = ts_field(nullable=True)
    last_used_at: datetime | None = ts_field(nullable=True)
    revoked_at: datetime | None = ts_field(nullable=True)


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is an error, never ignored
    name: str = PydanticField(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@:-]*$")
    role: Role
    expires_in_days: int | None = PydanticField(default=None, ge=1, le=3650)


class TokenPublic(BaseModel):
    id: int
    name: str
    role: Role
    prefix: str
    created_by: str
    created_at: UTCDateTime
    expires_at: UTCDateTime | None
    last_used_at: UTCDateTime | None
    revoked_at: UTCDateTime | None


class TokenCreated(TokenPublic):
    token: str = PydanticField(description="Shown once; only its SHA-256 hash is stored.")
