"""server.broker: kombu's Redis transport, with one publishing client per channel."""

from __future__ import annotations

import uuid

import redis

from server.broker import Channel
from server.dispatch_queue import make_celery
from server.settings import Settings


def test_sends_go_through_one_client_per_channel_and_all_arrive(redis_url, redis_prefix):
    app = make_celery(Settings(redis_url=redis_url, redis_prefix=redis_prefix))
    queue = f"rbtest-broker-{uuid.uuid4().hex[:6]}"
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        assert isinstance(channel, Channel)
        first = channel._create_client()
        for n in range(20):
            app.send_task("runbookd.ping", args=(n,), queue=queue, connection=conn)
        assert channel._create_client() is first
        channel._disconnect_pools()  # what kombu does after a fork: a new pool gets a client of its own
        assert channel._create_client() is not first
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.llen(f"{redis_prefix}{queue}") == 20
    finally:
        client.close()
