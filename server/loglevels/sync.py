"""Keep runbookd's own loggers in every process (api replicas, workers) in line with the overrides.

A change is committed to the database, then (announce(), after the commit) its service name is published
on Redis. Each process has an OwnLoggerSync on its notice bus that, on such a notice, at the next known
expiry, and every RESYNC_SECONDS in case a notice was missed, reads the live overrides of runbookd itself
and applies them. A process that
starts later therefore applies what is already in effect, and each process reverts on time by itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import redis
from sqlalchemy import Engine
from sqlmodel import Session

from server.aftercommit import on_commit
from server.agent import LevelApplier
from server.db import session_scope
from server.loglevels import service
from server.loglevels.models import SERVER_SERVICE
from server.notices import NoticeBus
from server.redis_client import key, make_redis
from server.settings import Settings

RESYNC_SECONDS = 30.0
log = logging.getLogger("runbookd.loglevels")
# One per process: loggers are per process, so every sync in it (tests run several apps in one) must share
# the record of each logger's own level, or one would take another's override for the original.
_APPLIER = LevelApplier()
_running: set[OwnLoggerSync] = set()
_running_lock = threading.Lock()
# Reading the overrides and applying them is one step per process: otherwise a sync that read just before a
# change commits could apply its stale view after another sync applied the new one.
_refresh_lock = threading.Lock()


def channel(settings: Settings) -> str:
    return key(settings, "loglevels", "changed")


def publish(client: redis.Redis, settings: Settings, services: set[str] | list[str]) -> None:
    """Tell every process (and SSE followers) that these services' overrides changed; call after commit."""
    for name in sorted(set(services)):
        try:
            client.publish(channel(settings), name)
        except redis.RedisError:
            # The change is committed; processes pick it up at their next resync instead of at once.
            log.warning("could not publish a log-level change", extra={"service": name}, exc_info=True)


def announce(session: Session, client: redis.Redis | None, settings: Settings, services: set[str] | list[str]
             ) -> None:
    """publish() once the session commits (never if it rolls back); without a client of its own (workers,
    step kinds) a short-lived one is made for it."""
    names = set(services)
    if not names:
        return
    if client is not None:
        on_commit(session, lambda: publish(client, settings, names))
    elif settings.redis_url:
        on_commit(session, lambda: publish_with_new_client(settings, names))


def publish_with_new_client(settings: Settings, services: set[str] | list[str]) -> None:
    client = make_redis(settings)
    try:
        publish(client, settings, services)
    finally:
        client.close()


def sweep_expired(engine: Engine, settings: Settings, client: redis.Redis | None) -> int:
    """End (and audit as the system) every override whose expiry passed, e.g. while nothing was running."""
    with session_scope(engine) as session:
        ended = service.expire_due(session)
        announce(session, client, settings, {row.service for row in ended})
    return len(ended)


class OwnLoggerSync:
    """Applies overrides of runbookd's own loggers inside this process: a follower of the process's notice
    bus (server/notices.py), which also hands each changed service name to this process's SSE followers."""

    def __init__(self, settings: Settings, engine: Engine, *, sweep_at_start: bool = True) -> None:
        self.settings = settings
        self.engine = engine
        self.sweep_at_start = sweep_at_start
        self.applier = _APPLIER
        self.applied: dict[str, str] = {}
        self.channels: tuple[str, ...] = (channel(settings),)
        self._next_expiry: float | None = None
        self._last_refresh = 0.0
        self._bus: NoticeBus | None = None
        # SSE followers in this process: each gets the name of every service whose overrides changed.
        self._watchers: dict[asyncio.Queue[str], asyncio.AbstractEventLoop] = {}
        self._watchers_lock = threading.Lock()

    def watch(self) -> asyncio.Queue[str]:
        """A queue (for the calling event loop) of changed service names; '*' means re-read everything."""
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=64)
        with self._watchers_lock:
            self._watchers[queue] = asyncio.get_running_loop()
        return queue

    def unwatch(self, queue: asyncio.Queue[str]) -> None:
        with self._watchers_lock:
            self._watchers.pop(queue, None)

    def _fan_out(self, name: str) -> None:
        with self._watchers_lock:
            watchers = list(self._watchers.items())
        for queue, loop in watchers:
            try:
                loop.call_soon_threadsafe(_offer, queue, name)
            except RuntimeError:  # that loop has closed; its stream is gone
                self.unwatch(queue)

    def start(self, bus: NoticeBus) -> OwnLoggerSync:
        with _running_lock:
            _running.add(self)
        self._bus = bus
        bus.add(self)
        return self

    def stop(self, restore: bool = True) -> None:
        """Stop following; the last sync of the process to stop puts every logger back as it was."""
        if self._bus is not None:
            self._bus.remove(self)
        with _running_lock:
            _running.discard(self)
            last = not _running
        if restore and last:
            self.applier.restore_all()

    def refresh(self) -> None:
        """Read runbookd's live overrides and apply them."""
        with _refresh_lock:
            with Session(self.engine) as session:
                levels = service.effective_levels(session, service=SERVER_SERVICE)
            wanted = {name: entry.level for name, entry in levels.loggers.items()}
            changes = self.applier.apply(wanted)
        self.applied = wanted
        self._last_refresh = time.monotonic()
        wait = levels.poll_after_seconds
        self._next_expiry = time.monotonic() + wait if wait is not None else None
        if changes:
            log.warning("runbookd log levels changed: %s", changes, extra={"changes": changes})

    def safe_refresh(self) -> None:
        """refresh(), but a failure is logged and retried soon: the change it follows is already committed."""
        try:
            self.refresh()
        except Exception:
            log.warning("could not read log-level overrides; will retry", exc_info=True)
            self._next_expiry = time.monotonic() + 2

    # -- notice bus follower ----------------------------------------------------------------------------
    def connected(self, client: redis.Redis) -> None:
        if self.sweep_at_start:
            self.sweep_at_start = False
            try:
                sweep_expired(self.engine, self.settings, client)
            except Exception:
                log.warning("start-up sweep of expired log-level overrides failed", exc_info=True)
        self.safe_refresh()  # subscribed first, so nothing committed after this read is missed
        self._fan_out("*")  # followers may have missed notices while we were not subscribed

    def disconnected(self) -> None:
        self.safe_refresh()  # expiries still revert on time while Redis is away

    def message(self, _channel: str, data: bytes) -> None:
        name = data.decode(errors="replace")
        self._fan_out(name)
        if name == SERVER_SERVICE:
            self.safe_refresh()

    def tick(self, _client: redis.Redis) -> float:
        """Apply a due expiry, and re-read every RESYNC_SECONDS in case a notice was missed."""
        now = time.monotonic()
        due = self._next_expiry is not None and now >= self._next_expiry
        if due or now - self._last_refresh >= RESYNC_SECONDS:
            self.safe_refresh()
        if self._next_expiry is None:
            return RESYNC_SECONDS
        return max(0.05, min(RESYNC_SECONDS, self._next_expiry - time.monotonic() + 0.05))


def _offer(queue: asyncio.Queue[str], name: str) -> None:
    try:
        queue.put_nowait(name)
    except asyncio.QueueFull:  # a slow follower: tell it to re-read everything instead
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait("*")
