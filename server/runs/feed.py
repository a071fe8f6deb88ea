"""One Redis subscription per api process for every SSE follower of runs (GET /api/v1/runs/{id}/events).

While anyone follows, the feed holds one pattern subscription to every run's event channel and hands each
published batch to the followers of that run; the last follower to leave closes it. A follower whose feed
broke (Redis went away) gets None and falls back to re-reading the stored history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

import orjson
import redis.asyncio as aioredis

from server.runs import events
from server.settings import Settings

log = logging.getLogger("runbookd.runs")
QUEUE_BATCHES = 1000  # a follower that falls this far behind loses live lines (stored events are re-read)
Batch = list[dict[str, Any]] | None  # None: the feed broke


class RunFeed:
    def __init__(self, settings: Settings, *, name: str = "runbookd-run-feed") -> None:
        self.settings, self.name = settings, name  # the connection's CLIENT SETNAME
        self._followers: dict[int, set[asyncio.Queue[Batch]]] = {}
        self._client: aioredis.Redis | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        sample = events.channel(settings, 0)
        head, tail = sample.split(":0:", 1) if ":0:" in sample else (sample[:-2], "")
        self._pattern = re.sub(r"([*?\[\]\\])", r"\\\1", head) + ":*:" + tail
        self._run_id = re.compile(re.escape(head) + r":(\d+):" + re.escape(tail) + r"$")

    @property
    def connections(self) -> int:
        """Redis connections held for followers: 1 while anyone follows, whatever their number."""
        return int(self._reader is not None and not self._reader.done())

    async def join(self, run_id: int) -> asyncio.Queue[Batch] | None:
        """A queue of the batches published for this run from now on; None without Redis."""
        if not self.settings.redis_url:
            return None
        queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=QUEUE_BATCHES)
        async with self._lock:
            if self._reader is None or self._reader.done():
                try:
                    await self._open()
                except (aioredis.RedisError, OSError):
                    log.warning("run event feed cannot reach Redis; followers poll the history", exc_info=True)
                    await self._close()
                    return None
            self._followers.setdefault(run_id, set()).add(queue)
        return queue

    async def leave(self, run_id: int, queue: asyncio.Queue[Batch] | None) -> None:
        if queue is None:
            return
        async with self._lock:
            queues = self._followers.get(run_id, set())
            queues.discard(queue)
            if not queues:
                self._followers.pop(run_id, None)
            if not self._followers:
                await self._close()

    async def _open(self) -> None:
        assert self.settings.redis_url is not None
        self._client = aioredis.Redis.from_url(self.settings.redis_url, socket_connect_timeout=2,
                                               client_name=self.name)
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        await pubsub.psubscribe(self._pattern)  # before the follower reads the history: no gap
        self._reader = asyncio.create_task(self._read(pubsub), name="runbookd-run-feed")

    async def _close(self) -> None:
        reader, client = self._reader, self._client
        self._reader = self._client = None
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aioredis.RedisError, OSError):
                await reader
        if client is not None:
            with contextlib.suppress(aioredis.RedisError, OSError):
                await client.aclose()

    async def _read(self, pubsub: aioredis.client.PubSub) -> None:
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if not message or message.get("type") != "pmessage":
                    continue
                name = message["channel"]
                found = self._run_id.match(name.decode() if isinstance(name, bytes) else str(name))
                if found is None:
                    continue
                try:
                    batch = orjson.loads(message["data"])
                except orjson.JSONDecodeError:
                    continue
                for queue in list(self._followers.get(int(found.group(1)), ())):
                    with contextlib.suppress(asyncio.QueueFull):
                        queue.put_nowait(batch)
        except (aioredis.RedisError, OSError):
            log.warning("run event feed lost Redis; followers poll the history until they reconnect", exc_info=True)
            for queues in list(self._followers.values()):
                for queue in list(queues):
                    with contextlib.suppress(asyncio.QueueFull):
                        queue.put_nowait(None)
        finally:
            with contextlib.suppress(aioredis.RedisError, OSError, RuntimeError):
                await pubsub.aclose()
