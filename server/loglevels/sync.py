"""Keep runbookd's own loggers in every process (api replicas, workers) in line with the overrides.

A change is committed to the database, then its service name is published on Redis. Each process runs
an OwnLoggerSync thread that, on such a message, at the next known expiry, and every RESYNC_SECONDS in
case a message was missed, reads the live overrides of runbookd itself and applies them. A process that
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

from server.agent import LevelApplier
from server.db import session_scope
from server.loglevels import service
from server.loglevels.models import SERVER_SERVICE
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


def sweep_expired(engine: Engine, settings: Settings, client: redis.Redis | None) -> int:
    """End (and audit as the system) every override whose expiry passed, e.g. while nothing was running."""
    with session_scope(engine) as session:
        ended = service.expire_due(session)
        touched = {row.service for row in ended}
    if touched and client is not None:
        publish(client, settings, touched)
    return len(ended)


class OwnLoggerSync:
    """The thread that applies overrides of runbookd's own loggers inside this process."""

    def __init__(self, settings: Settings, engine: Engine, *, sweep_at_start: bool = True) -> None:
        self.settings = settings
        self.engine = engine
        self.sweep_at_start = sweep_at_start
        self.applier = _APPLIER
        self.applied: dict[str, str] = {}
        self._next_expiry: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="runbookd-loglevel-sync", daemon=True)
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

    def start(self) -> OwnLoggerSync:
        with _running_lock:
            _running.add(self)
        self._thread.start()
        return self

    def stop(self, restore: bool = True) -> None:
        """Stop following; the last sync of the process to stop puts every logger back as it was."""
        self._stop.set()
        self._thread.join(5)
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
        wait = levels.poll_after_seconds
        self._next_expiry = time.monotonic() + wait if wait is not None else None
        if changes:
            log.warning("runbookd log levels changed: %s", changes, extra={"changes": changes})

    def _timeout(self) -> float:
        if self._next_expiry is None:
            return RESYNC_SECONDS
        return max(0.05, min(RESYNC_SECONDS, self._next_expiry - time.monotonic() + 0.05))

    def safe_refresh(self) -> None:
        """refresh(), but a failure is logged and retried soon: the change it follows is already committed."""
        try:
            self.refresh()
        except Exception:
            log.warning("could not read log-level overrides; will retry", exc_info=True)
            self._next_expiry = time.monotonic() + 2

    def _run(self) -> None:
        client = make_redis(self.settings, timeout=5)
        if self.sweep_at_start:
            try:
                sweep_expired(self.engine, self.settings, client)
            except Exception:
                log.warning("start-up sweep of expired log-level overrides failed", exc_info=True)
        pubsub = None
        last_refresh = 0.0
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(channel(self.settings))
                    self.safe_refresh()  # subscribed first, so nothing committed after this read is missed
                    last_refresh = time.monotonic()
                    self._fan_out("*")  # followers may have missed notices while we were not subscribed
                message = pubsub.get_message(timeout=min(self._timeout(), 1.0))
                due = self._next_expiry is not None and time.monotonic() >= self._next_expiry
                stale = time.monotonic() - last_refresh >= RESYNC_SECONDS
                name = _decode(message.get("data")) if message is not None else None
                if name:
                    self._fan_out(name)
                ours = name == SERVER_SERVICE
                if ours or due or stale:
                    self.safe_refresh()
                    last_refresh = time.monotonic()
            except redis.RedisError:
                log.warning("log-level sync lost Redis; reconnecting", exc_info=True)
                if pubsub is not None:
                    pubsub.close()
                pubsub = None
                self.safe_refresh()
                self._stop.wait(1.0)
        if pubsub is not None:
            pubsub.close()
        client.close()


def _decode(data: object) -> str | None:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data if isinstance(data, str) else None


def _offer(queue: asyncio.Queue[str], name: str) -> None:
    try:
        queue.put_nowait(name)
    except asyncio.QueueFull:  # a slow follower: tell it to re-read everything instead
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait("*")
