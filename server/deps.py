"""Request dependencies: who is calling, and whether their role allows it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from server.auth.models import Actor, Role
from server.errors import Forbidden, Unauthorized
from server.throttle import auth_throttle


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
    """Who is calling. Answered from the process's token cache (server.auth.token_cache): async, so no
    thread-pool hop, and the database is asked once per token per RUNBOOKD_AUTH_CACHE_SECONDS. A revoked
    token stops working at once (the cache forgets it when the revocation commits or is announced)."""
    state = request.app.state
    presented = _presented_token(request)
    throttle, client = auth_throttle(state), request.client.host if request.client else "unknown"
    throttle.check(client)  # 429 after repeated bad tokens from this address
    try:
        actor: Actor = await state.token_cache.actor(state.engine, presented)
    except Unauthorized:
        throttle.failed(client)
        raise
    request.state.actor = actor
    return actor


CurrentActor = Annotated[Actor, Depends(current_actor)]


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
