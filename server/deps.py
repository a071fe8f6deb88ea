"""Request dependencies: the process's settings and Redis client, who is calling, and whether their role
allows it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import redis
from fastapi import Depends, Request
from sqlalchemy import Engine

from server.auth.models import Actor, Role
from server.auth.token_cache import TokenCache
from server.errors import Forbidden, Unauthorized
from server.flags.cache import FlagCache
from server.loglevels.sync import OwnLoggerSync
from server.settings import Settings
from server.throttle import StreamSlots, auth_throttle, stream_slots


# The process's long-lived parts, set on app.state by server/app.py, are read here and nowhere else at
# request time: routes take them as the dependencies below; code that has only the request (the OFREP fast
# path, helpers shared with the console, which calls route functions directly) uses the *_of accessors.
def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def redis_of(request: Request) -> redis.Redis | None:
    client: redis.Redis | None = request.app.state.redis
    return client


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def flag_cache_of(request: Request) -> FlagCache:
    cache: FlagCache = request.app.state.flag_cache  # started by the lifespan, with the engine
    return cache


def loglevel_sync_of(request: Request) -> OwnLoggerSync | None:
    """The process's own-logger sync; None when it runs without Redis."""
    sync: OwnLoggerSync | None = getattr(request.app.state, "loglevel_sync", None)
    return sync


def token_cache_of(request: Request) -> TokenCache:
    cache: TokenCache = request.app.state.token_cache
    return cache


def slots_of(request: Request) -> StreamSlots:
    return stream_slots(request.app.state)


def migration_heads_of(request: Request) -> frozenset[str]:
    heads: frozenset[str] = request.app.state.migration_heads  # the code's, computed when the app was built
    return heads


T = TypeVar("T")


def _dependency(read: Callable[[Request], T]) -> Callable[[Request], Awaitable[T]]:
    """An accessor as a dependency: async, so reading it costs no thread-pool hop."""
    async def dependency(request: Request) -> T:
        return read(request)
    return dependency


SettingsDep = Annotated[Settings, Depends(_dependency(settings_of))]
RedisDep = Annotated[redis.Redis | None, Depends(_dependency(redis_of))]  # None: the process runs without Redis
EngineDep = Annotated[Engine, Depends(_dependency(engine_of))]  # work outside the request's session (threads)
FlagCacheDep = Annotated[FlagCache, Depends(_dependency(flag_cache_of))]
LogLevelSyncDep = Annotated[OwnLoggerSync | None, Depends(_dependency(loglevel_sync_of))]
TokenCacheDep = Annotated[TokenCache, Depends(_dependency(token_cache_of))]
StreamSlotsDep = Annotated[StreamSlots, Depends(_dependency(slots_of))]  # how many event streams each token holds
MigrationHeadsDep = Annotated[frozenset[str], Depends(_dependency(migration_heads_of))]


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
    actor = await _looked_up(request)
    if actor.role is Role.hook:
        # A hook token (the one Alertmanager holds) triggers runs through /hooks/* and can do nothing else:
        # refused here, every other route refuses it, OFREP and whoami included (server.hooks.routes admits it).
        raise Forbidden(f"token {actor.name!r} has the hook role: it may only deliver to /hooks/alertmanager and "
                        "/hooks/generic/NAME; other routes need a client, viewer, operator or admin token")
    request.state.actor = actor
    return actor


async def _looked_up(request: Request) -> Actor:
    """The presented token's holder, from the token cache; repeated bad tokens from one address get 429."""
    state = request.app.state
    presented = _presented_token(request)
    throttle, client = auth_throttle(state), request.client.host if request.client else "unknown"
    throttle.check(client)  # 429 after repeated bad tokens from this address
    try:
        actor: Actor = await state.token_cache.actor(state.engine, presented)
    except Unauthorized:
        throttle.failed(client)
        raise
    return actor


async def hook_actor(request: Request) -> Actor:
    """The token holder delivering to a /hooks/* endpoint: a hook, operator or admin token. Anything else,
    a missing, unknown, revoked or lower-role token, is a 401: a webhook sender has nobody to read a 403."""
    actor = await _looked_up(request)
    if not actor.role.allows(Role.hook):
        raise Unauthorized(f"token {actor.name!r} ({actor.role.value}) may not trigger runs: use a token of the "
                           "hook role (or operator, admin)")
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
