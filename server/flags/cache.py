"""Each api process's in-memory flag configuration, kept fresh from Redis, so evaluation never reads the database.

Writers register announce_change() and commit; after the commit it INCRs a generation counter and PUBLISHes
{key, version, generation}. The cache follows those notices on the process's notice bus (server/notices.py)
and reloads the named flag on each; when a generation was skipped (a notice lost while disconnected) or the
counter moved without a notice reaching us (checked every RUNBOOKD_FLAG_CACHE_CHECK_SECONDS), it reloads
everything.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from sqlalchemy import Engine
from sqlmodel import Session, select

from server.aftercommit import on_commit
from server.flags.evaluation import CompiledFlag, compile_flag
from server.flags.models import Flag, FlagEnvironment, FlagSpec
from server.notices import NoticeBus
from server.redis_client import key as redis_key
from server.redis_client import make_redis
from server.settings import Settings

log = logging.getLogger(__name__)


def channel(settings: Settings) -> str:
    return redis_key(settings, "flags", "changes")


def generation_key(settings: Settings) -> str:
    return redis_key(settings, "flags", "generation")


def publish_change(settings: Settings, client: redis.Redis | None, *, key: str | None, version: int) -> None:
    """Tell every api process that a flag (key None: the environments) changed; call after the commit.

    Never raises: a lost notice is caught up by the periodic generation check."""
    if client is None:
        return
    try:
        generation = int(client.incr(generation_key(settings)))
        client.publish(channel(settings), orjson.dumps({"key": key, "version": version, "generation": generation}))
    except redis.RedisError as exc:
        log.warning("could not publish a flag change; api processes catch up at their next version check",
                    extra={"flag": key, "version": version, "error": str(exc)})


def announce_change(session: Session, settings: Settings, client: redis.Redis | None, *, key: str | None,
                    version: int) -> None:
    """publish_change once the session commits (never if it rolls back); without a client of its own
    (workers, the CLI, step kinds) a short-lived one is made for it."""
    if client is not None:
        on_commit(session, lambda: publish_change(settings, client, key=key, version=version))
    else:
        on_commit(session, lambda: publish_with_new_client(settings, key=key, version=version))


def publish_with_new_client(settings: Settings, *, key: str | None, version: int) -> None:
    """publish_change for code without a Redis client of its own (workers, the CLI, step kinds)."""
    if not settings.redis_url:
        return
    client = make_redis(settings)
    try:
        publish_change(settings, client, key=key, version=version)
    finally:
        client.close()


@dataclass
class Listener:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[dict[str, Any]]


class FlagCache:
    """Compiled flags by key; replaced whole or one key at a time, read without locks (dict ops are atomic)."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.flags: dict[str, CompiledFlag] = {}
        self.environments: frozenset[str] = frozenset()
        self.generation = 0  # the Redis generation this cache reflects
        self.config_digest = ""
        self.reloads = 0
        self.hits = 0
        self.misses = 0
        self.last_refresh = 0.0
        self._listeners: list[Listener] = []
        self.channels: tuple[str, ...] = ()
        self._bus: NoticeBus | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()  # for writers only; evaluation reads the dict without it
        self._versions: dict[str, int] = {}  # newest version applied per key, deleted flags included

    # -- loading -----------------------------------------------------------------------------------
    def load_all(self) -> None:
        """Reload every flag from the database."""
        with Session(self.engine) as session:
            rows = list(session.exec(select(Flag)))
            environments = frozenset(session.exec(select(FlagEnvironment.name)))
        with self._lock:
            flags = {}
            for row in rows:
                newer = self._versions.get(row.key, 0) > row.version
                if newer:  # a load_one that read after this snapshot already applied a later version
                    if row.key in self.flags:
                        flags[row.key] = self.flags[row.key]
                    continue
                self._versions[row.key] = row.version
                if not row.deleted and (compiled := self._compile(row)) is not None:
                    flags[row.key] = compiled
            self.flags, self.environments = flags, environments
            self._after_change()

    def load_one(self, key: str) -> None:
        """Reload one flag. Loads may finish out of order (a route and the notice thread, say): a version
        older than one already applied is ignored, so the cache never steps back."""
        with Session(self.engine) as session:
            row = session.get(Flag, key)
        with self._lock:
            if row is None:
                self.flags.pop(key, None)
            elif row.version >= self._versions.get(key, 0):
                self._versions[key] = row.version
                compiled = None if row.deleted else self._compile(row)
                if compiled is None:
                    self.flags.pop(key, None)
                else:
                    self.flags[key] = compiled
            self._after_change()

    @staticmethod
    def _compile(row: Flag) -> CompiledFlag | None:
        try:
            return compile_flag(FlagSpec.model_validate(row.spec), row.version)
        except Exception:
            log.exception("flag %s version %s does not compile; keeping it out of evaluation", row.key, row.version)
            return None

    def _after_change(self) -> None:
        # The ETag of bulk evaluations starts from this: the same configuration gives the same digest in
        # every api process, so a load balancer may send a client's next request anywhere.
        pairs = ",".join(f"{k}:{f.version}" for k, f in sorted(self.flags.items()))
        self.config_digest = hashlib.sha256(pairs.encode()).hexdigest()[:16]
        self.reloads += 1
        self.last_refresh = time.time()

    # -- change notices for SSE followers -----------------------------------------------------------
    def subscribe(self) -> Listener:
        listener = Listener(loop=asyncio.get_running_loop(), queue=asyncio.Queue(maxsize=100))
        self._listeners.append(listener)
        return listener

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self, notice: dict[str, Any]) -> None:
        for listener in list(self._listeners):
            try:
                listener.loop.call_soon_threadsafe(_offer, listener.queue, notice)
            except RuntimeError:  # its loop is closed
                self.unsubscribe(listener)

    # -- following changes: a follower of the process's notice bus (server/notices.py) -----------------
    def start(self, bus: NoticeBus | None) -> None:
        """Follow change notices on the bus (started by the caller); without one (no Redis) load once:
        this process then sees its own database snapshot only."""
        if bus is None:
            try:
                self.load_all()
            except Exception:
                log.exception("flag cache could not load flags")
            return
        self.channels = (channel(self.settings),)
        self._bus = bus
        bus.add(self)

    def stop(self) -> None:
        if self._bus is not None:
            self._bus.remove(self)

    def _current_generation(self, client: redis.Redis) -> int:
        return int(client.get(generation_key(self.settings)) or 0)

    def connected(self, client: redis.Redis) -> None:
        self.generation = self._current_generation(client)
        try:
            self.load_all()
        except Exception:
            # An unmigrated database, say: serve nothing yet and retry at the next version check.
            log.exception("flag cache could not load flags; retrying")
            self.generation = -1
        self._next_check = time.monotonic() + self.settings.flag_cache_check_seconds

    def tick(self, client: redis.Redis) -> float:
        """Reload everything when the generation counter moved without a notice reaching us."""
        interval = self.settings.flag_cache_check_seconds
        wait = self._next_check - time.monotonic()
        if wait > 0:
            return wait
        self._next_check = time.monotonic() + interval
        current = self._current_generation(client)
        if current != self.generation:
            log.info("flag cache missed a change notice; reloading every flag",
                     extra={"seen": self.generation, "current": current})
            self.generation = current
            self.load_all()
            self._notify({"generation": current})
        return interval

    def message(self, _channel: str, data: bytes) -> None:
        notice = orjson.loads(data)
        generation = int(notice.get("generation", 0))
        if generation > self.generation + 1 or notice.get("key") is None:  # a gap, or an environment change
            self.generation = generation
            self.load_all()
        else:
            self.generation = max(self.generation, generation)
            self.load_one(str(notice["key"]))
        self._notify(notice)

    def stats(self) -> dict[str, Any]:
        """For /debug/state."""
        return {"flags": len(self.flags), "generation": self.generation, "config_digest": self.config_digest,
                "reloads": self.reloads, "hits": self.hits, "misses": self.misses,
                "last_refresh": self.last_refresh}


def _offer(queue: asyncio.Queue[dict[str, Any]], notice: dict[str, Any]) -> None:
    # A follower that stopped reading must not grow memory without bound; it only needs "something changed".
    if not queue.full():
        queue.put_nowait(notice)
