"""Checked tokens remembered per api process (token hash -> actor, or why it was refused), checked in the
database once per RUNBOOKD_AUTH_CACHE_SECONDS (0: every request); why: docs/architecture.md, "Measurements".

A revocation stops a token at once in the revoking process, within milliseconds in the others (the notice
on `auth:revoked`, followed on the notice bus), and within RUNBOOKD_AUTH_CACHE_SECONDS at worst when the
notice cannot arrive. A token never outlives its own expiry.
"""

from __future__ import annotations

import logging
import time

import redis
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from server.aftercommit import on_commit
from server.auth import service as auth
from server.auth.models import Actor, Role, Source
from server.errors import Unauthorized
from server.models_base import as_utc, utcnow
from server.redis_client import key, make_redis
from server.settings import Settings

MAX_ENTRIES = 10_000
log = logging.getLogger("runbookd.auth")


class TokenCache:
    def __init__(self, ttl_seconds: float) -> None:
        self.ttl = ttl_seconds
        # hash -> (monotonic deadline, actor, or the Unauthorized message for a refused token)
        self._entries: dict[str, tuple[float, Actor | str]] = {}
        self._forgets = 0  # bumped by every forget/clear: a lookup that raced one is not remembered

    async def actor(self, engine: Engine, raw: str) -> Actor:
        """The actor of a presented token; the database is asked at most once per TTL per token."""
        digest = auth.hash_token(raw)
        now = time.monotonic()
        entry = self._entries.get(digest)
        if entry is None or entry[0] <= now:
            forgets = self._forgets
            entry = await run_in_threadpool(self._lookup, engine, raw, now)
            if forgets == self._forgets:
                if len(self._entries) >= MAX_ENTRIES:
                    self._entries.clear()
                self._entries[digest] = entry
        found = entry[1]
        if isinstance(found, str):
            raise Unauthorized(found)
        return found

    def forget(self, token_hash: str) -> None:
        self._forgets += 1
        self._entries.pop(token_hash, None)

    def clear(self) -> None:
        self._forgets += 1
        self._entries.clear()

    def _lookup(self, engine: Engine, raw: str, now: float) -> tuple[float, Actor | str]:
        with Session(engine, expire_on_commit=False) as session:
            try:
                token = auth.authenticate(session, raw=raw)
            except Unauthorized as exc:
                return now + self.ttl, exc.message
        deadline = now + self.ttl
        if token.expires_at is not None:
            # Never serve a token past its own expiry, however long the TTL.
            deadline = min(deadline, now + (as_utc(token.expires_at) - utcnow()).total_seconds())
        return deadline, Actor(name=token.name, role=Role(token.role), source=Source.api, token_id=token.id)


def channel(settings: Settings) -> str:
    return key(settings, "auth", "revoked")


def publish_revocation(client: redis.Redis | None, settings: Settings, token_hash: str) -> None:
    """Tell every api process to forget a revoked token; call after the commit. Best effort: without
    Redis, the other processes stop accepting it when their entry expires."""
    if client is None:
        return
    try:
        client.publish(channel(settings), token_hash)
    except redis.RedisError:
        log.warning("could not publish a token revocation; other api processes drop it within "
                    "RUNBOOKD_AUTH_CACHE_SECONDS", exc_info=True)


def announce_revocation(session: Session, settings: Settings, client: redis.Redis | None, token_hash: str, *,
                        cache: TokenCache | None = None) -> None:
    """Once the session commits: this process (its `cache`) refuses the token from the next request on, the
    others within milliseconds (the published notice; without a client of its own, a short-lived one)."""
    if cache is not None:
        on_commit(session, lambda: cache.forget(token_hash))
    if client is not None:
        on_commit(session, lambda: publish_revocation(client, settings, token_hash))
    elif settings.redis_url:
        on_commit(session, lambda: _publish_with_new_client(settings, token_hash))


def _publish_with_new_client(settings: Settings, token_hash: str) -> None:
    client = make_redis(settings)
    try:
        publish_revocation(client, settings, token_hash)
    finally:
        client.close()


class RevocationFollower:
    """Makes this process's TokenCache forget tokens revoked through any process: a follower of the
    process's notice bus (server/notices.py)."""

    def __init__(self, settings: Settings, cache: TokenCache) -> None:
        self.settings, self.cache = settings, cache
        self.channels: tuple[str, ...] = (channel(settings),)

    def connected(self, _client: redis.Redis) -> None:
        self.cache.clear()  # notices sent while we were not subscribed are lost: start afresh

    def message(self, _channel: str, data: bytes) -> None:
        self.cache.forget(data.decode(errors="replace"))

    def tick(self, _client: redis.Redis) -> float:
        return 3600.0
