"""Checked tokens remembered per api process: token hash -> actor, or the reason it was refused.

Looking a token up on every request cost a database query and a thread-pool hop (a sync dependency),
a third of the api's CPU for POST /api/v1/runs on a 2-core machine. A token is therefore checked in the
database once per RUNBOOKD_AUTH_CACHE_SECONDS, and a revocation stops it working:
- at once in the api process that revoked it, which forgets the token as the revocation commits;
- within milliseconds in every other process: the revocation is published on Redis (`auth:revoked`) and
  each process's RevocationFollower forgets the token;
- within RUNBOOKD_AUTH_CACHE_SECONDS at worst, when that notice cannot arrive (Redis unreachable, a change
  made in the database by hand), because entries expire. A token never outlives its own expiry.
RUNBOOKD_AUTH_CACHE_SECONDS=0 checks the database on every request.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

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


class RevocationFollower:
    """The thread that makes this process's TokenCache forget tokens revoked through any process."""

    def __init__(self, settings: Settings, cache: TokenCache) -> None:
        self.settings, self.cache = settings, cache
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="runbookd-token-revocations", daemon=True)

    def start(self) -> RevocationFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        client = make_redis(self.settings, timeout=5)
        pubsub = None
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(channel(self.settings))
                    self.cache.clear()  # notices sent while we were not subscribed are lost: start afresh
                message = pubsub.get_message(timeout=1.0)
                data = message.get("data") if message is not None else None
                if isinstance(data, bytes):
                    self.cache.forget(data.decode(errors="replace"))
            except redis.RedisError:
                log.warning("token revocation follower lost Redis; reconnecting", exc_info=True)
                if pubsub is not None:
                    pubsub.close()
                pubsub = None
                self._stop.wait(1.0)
        if pubsub is not None:
            pubsub.close()
        client.close()
