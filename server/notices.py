"""One notice bus per process: a single thread holding one Redis subscription, with one reconnect loop, for
every follower of change notices (the flag cache, the token cache, the log-level sync).

A follower names its channels and gets called on the bus's thread:
- connected(client): subscribed (first time or after a reconnect): catch up on what may have been missed;
- message(channel, data): one notice;
- tick(client) -> seconds: periodic work (a generation check, a due expiry), called at least every POLL_S
  (it does nothing when nothing is due); returns how soon it wants the next call;
- disconnected(): Redis is unreachable (optional), called before each reconnect attempt.
A RedisError from a follower means the connection is bad: the bus reconnects. Any other error is the
follower's own: it is logged and the bus carries on.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

import redis

from server.redis_client import make_redis
from server.settings import Settings

log = logging.getLogger("runbookd.notices")
POLL_S = 0.5  # longest wait for a message before ticks are looked at
RETRY_S = 1.0


class Follower(Protocol):
    channels: tuple[str, ...]

    def connected(self, client: redis.Redis) -> None: ...

    def message(self, channel: str, data: bytes) -> None: ...

    def tick(self, client: redis.Redis) -> float: ...


class NoticeBus:
    def __init__(self, settings: Settings, *, name: str = "runbookd-notices") -> None:
        self.settings = settings
        self._followers: list[Follower] = []
        self._new: list[Follower] = []  # added since the loop last looked: subscribe and connect them
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._tried = threading.Event()  # the first connection attempt has ended, either way
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.reconnects = 0

    def add(self, follower: Follower) -> None:
        with self._lock:
            self._new.append(follower)

    def remove(self, follower: Follower) -> None:
        with self._lock:
            for group in (self._followers, self._new):
                if follower in group:
                    group.remove(follower)

    def start(self, wait: float = 10.0) -> NoticeBus:
        """Start the thread, and wait (up to `wait` s) until every follower added so far is connected, or the
        first attempt failed (Redis refused): a process starts at once then, and the bus keeps trying."""
        self._thread.start()
        if wait and not (self._tried.wait(wait) and self._ready.is_set()):
            log.warning("notice bus did not reach Redis; it keeps trying in the background")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    # -- the thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            client = make_redis(self.settings, timeout=5.0)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                with self._lock:
                    self._followers += self._new
                    self._new = []
                    followers = list(self._followers)
                self._subscribe(pubsub, client, followers)
                self._ready.set()
                self._tried.set()
                self._follow(pubsub, client, followers)
            except (redis.RedisError, OSError) as exc:
                self.reconnects += 1
                self._tried.set()
                log.warning("notice bus lost Redis; reconnecting", extra={"error": str(exc)})
                for follower in self._snapshot():
                    self._call(getattr(follower, "disconnected", None))
                self._stop.wait(RETRY_S)
            finally:
                pubsub.close()
                client.close()

    def _snapshot(self) -> list[Follower]:
        with self._lock:
            return [*self._followers, *self._new]

    def _subscribe(self, pubsub: redis.client.PubSub, client: redis.Redis, followers: list[Follower]) -> None:
        channels = sorted({c for f in followers for c in f.channels})
        if channels:
            pubsub.subscribe(*channels)
        for follower in followers:  # subscribed first, caught up second: nothing committed between is missed
            self._call(follower.connected, client)

    def _follow(self, pubsub: redis.client.PubSub, client: redis.Redis, followers: list[Follower]) -> None:
        while not self._stop.is_set():
            with self._lock:
                added, self._new = self._new, []
                self._followers += added
                followers = list(self._followers)
            if added:
                self._subscribe(pubsub, client, added)
            timeout = POLL_S
            for follower in followers:
                wait = self._call(follower.tick, client)
                if isinstance(wait, int | float):
                    timeout = min(timeout, max(0.0, wait))
            if not followers:  # nothing subscribed: get_message would return at once
                self._stop.wait(POLL_S)
                continue
            message = pubsub.get_message(timeout=timeout)
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else str(channel)
            data = message["data"] if isinstance(message["data"], bytes) else str(message["data"]).encode()
            for follower in followers:
                if channel in follower.channels:
                    self._call(follower.message, channel, data)

    @staticmethod
    def _call(fn: object, *args: object) -> object:
        if fn is None or not callable(fn):
            return None
        try:
            return fn(*args)
        except (redis.RedisError, OSError):
            raise
        except Exception:
            log.exception("notice follower failed", extra={"call": getattr(fn, "__qualname__", repr(fn))})
            return None
