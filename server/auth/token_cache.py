"""A short-lived in-memory map of token hash -> actor for the hot evaluation path.

OFREP clients evaluate on every request; looking the token up in the database each time would make the
database the limit. The price: a revoked or expired token keeps working in an api process for at most
RUNBOOKD_AUTH_CACHE_SECONDS after the change.
"""

from __future__ import annotations

import time

from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from server.auth import service as auth
from server.auth.models import Actor, Role, Source
from server.errors import Unauthorized
from server.models_base import as_utc, utcnow

MAX_ENTRIES = 10_000


class TokenCache:
    def __init__(self, ttl_seconds: float) -> None:
        self.ttl = ttl_seconds
        # hash -> (monotonic deadline, actor, or the Unauthorized message for a refused token)
        self._entries: dict[str, tuple[float, Actor | str]] = {}

    async def actor(self, engine: Engine, raw: str) -> Actor:
        """The actor of a presented token; the database is asked at most once per TTL per token."""
        digest = auth.hash_token(raw)
        now = time.monotonic()
        entry = self._entries.get(digest)
        if entry is None or entry[0] <= now:
            entry = await run_in_threadpool(self._lookup, engine, raw, now)
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[digest] = entry
        found = entry[1]
        if isinstance(found, str):
            raise Unauthorized(found)
        return found

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
