"""Request dependencies: the process's settings and Redis client, who is calling, and whether their role
allows it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

import redis
from fastapi import Depends, Request

from server.auth.models import Actor, Role
from server.errors import Forbidden, Unauthorized
from server.settings import Settings


async def _settings(request: Request) -> Settings:  # async: no thread-pool hop for a read
    settings: Settings = request.app.state.settings
    return settings


async def _redis(request: Request) -> redis.Redis | None:
    client: redis.Redis | None = request.app.state.redis
    return client


SettingsDep = Annotated[Settings, Depends(_settings)]
RedisDep = Annotated[redis.Redis | None, Depends(_redis)]  # None when the process runs without Redis


def _presented_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("Authorization header must be 'Bearer <token>'")
        return value.strip()
    api_key = request.headers.get("x-api-key")
    if api_key:
        return api_key.strip()
    raise Unauthorized("missing API token: send 'Authorization: Bearer <token>'")


async def current_actor(request: Request) -> Actor:
    """Who is calling, from the process's token cache (server.auth.token_cache); async: no thread-pool hop."""
    state = request.app.state
    actor: Actor = await state.token_cache.actor(state.engine, _presented_token(request))
    request.state.actor = actor
    return actor


CurrentActor = Annotated[Actor, Depends(current_actor)]


def require_role(needed: Role) -> Callable[[Actor], Awaitable[Actor]]:
    """A dependency that lets through callers whose role is at least `needed` (async: no I/O, no hop)."""

    async def check(actor: CurrentActor) -> Actor:
        if not actor.role.allows(needed):
            raise Forbidden(f"this needs the {needed.value} role; token {actor.name!r} has {actor.role.value}")
        return actor

    return check


Viewer = Annotated[Actor, Depends(require_role(Role.viewer))]
Operator = Annotated[Actor, Depends(require_role(Role.operator))]
Admin = Annotated[Actor, Depends(require_role(Role.admin))]
