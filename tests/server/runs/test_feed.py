"""SSE followers of runs share one Redis subscription per api process (server/runs/feed.py)."""

from __future__ import annotations

import asyncio
import uuid

import redis

from server.runs import events
from server.runs.feed import RunFeed
from server.settings import Settings


def _connections(client: redis.Redis, name: str) -> int:
    return sum(1 for c in client.client_list() if c.get("name") == name)


def test_many_followers_of_many_runs_hold_one_connection_and_each_gets_its_runs_batches(settings: Settings):
    name = f"rbtest-feed-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(settings.redis_url)

    async def scenario() -> None:
        feed = RunFeed(settings, name=name)
        first, second, other = await feed.join(101), await feed.join(101), await feed.join(202)
        assert first is not None and second is not None and other is not None
        assert _connections(client, name) == 1
        events.publish(client, settings, 101, [{"id": 7, "type": "step.started"}])
        events.publish(client, settings, 202, [{"id": 8, "type": "run.finished"}])
        assert await asyncio.wait_for(first.get(), 5) == [{"id": 7, "type": "step.started"}]
        assert await asyncio.wait_for(second.get(), 5) == [{"id": 7, "type": "step.started"}]
        assert await asyncio.wait_for(other.get(), 5) == [{"id": 8, "type": "run.finished"}]
        assert first.empty() and other.empty()
        await feed.leave(101, first)
        await feed.leave(101, second)
        assert _connections(client, name) == 1  # run 202 is still followed
        await feed.leave(202, other)
        for _ in range(50):
            if _connections(client, name) == 0:
                break
            await asyncio.sleep(0.05)
        assert _connections(client, name) == 0, "the last follower to leave closes the subscription"
        again = await feed.join(101)  # and a later follower opens it again
        events.publish(client, settings, 101, [{"id": 9, "type": "run.finished"}])
        assert again is not None and await asyncio.wait_for(again.get(), 5) == [{"id": 9, "type": "run.finished"}]
        await feed.leave(101, again)

    try:
        asyncio.run(scenario())
    finally:
        client.close()


def test_without_redis_followers_get_no_queue_and_poll_the_history(settings: Settings):
    offline = settings.model_copy(update={"redis_url": None})

    async def scenario() -> None:
        feed = RunFeed(offline)
        assert await feed.join(1) is None
        await feed.leave(1, None)

    asyncio.run(scenario())
