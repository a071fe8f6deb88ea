"""Request dependencies: who is calling, and whether their role allows it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from server.auth import service as auth
from server.auth.models import Actor, Role, Source
from server.auth.token_cache import TokenCache
from server.db import SessionDep
from server.errors import Forbidden, Unauthorized


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


def current_actor(request: Request, session: SessionDep) -> Actor:
    token = auth.authenticate(session, raw=_presented_token(request))
    actor = Actor(name=token.name, role=Role(token.role), source=Source.api, token_id=token.id)
    request.state.actor = actor
    return actor


CurrentActor = Annotated[Actor, Depends(current_actor)]


async def cached_actor(request: Request) -> Actor:
    """current_actor for the hot evaluation path: no database round trip per request.

    Tokens are remembered for RUNBOOKD_AUTH_CACHE_SECONDS (server.auth.token_cache), so a revocation
    reaches this path within that time; every other endpoint checks the database each time.
    """
    state = request.app.state
    if getattr(state, "token_cache", None) is None:
        state.token_cache = TokenCache(state.settings.auth_cache_seconds)
    actor: Actor = await state.token_cache.actor(state.engine, _presented_token(request))
    request.state.actor = actor
    return actor


def require_role(needed: Role) -> Callable[[Actor], Awaitable[Actor]]:
    """A dependency that lets through callers whose role is at least `needed`.

    async because it does no I/O: FastAPI runs a sync dependency in its thread pool, a hop per request.
    """

    async def check(actor: CurrentActor) -> Actor:
        if not actor.role.allows(needed):
            raise Forbidden(f"this needs the {needed.value} role; token {actor.name!r} has {actor.role.value}")
        return actor

    return check


Viewer = Annotated[Actor, Depends(require_role(Role.viewer))]
Operator = Annotated[Actor, Depends(require_role(Role.operator))]
Admin = Annotated[Actor, Depends(require_role(Role.admin))]
