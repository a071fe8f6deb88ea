"""kombu's Redis transport with one publishing client per channel instead of one per command.

kombu.transport.redis.Channel builds a new redis.Redis object for every publish and every ack
(conn_or_acquire -> _create_client). The object is a thin handle on the channel's connection pool (the
sockets are pooled already), but building one sets up redis-py's table of response callbacks: 18% of
the CPU of a send_task here (bench: /tmp harness, 3000 sends), paid by the api for every run it
dispatches and by a worker for every task it acknowledges. A redis.Redis is safe to share between
threads, so this Channel keeps one per connection pool and hands it out again; kombu still owns the
pool, and a new pool (after a fork, a reconnect) gets a new client.

server.queue.make_celery selects it with Celery's broker_transport setting; the broker URL stays
redis://...
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _publisher: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the event loop's consuming client: kombu's own handling
            return super()._create_client(asynchronous=True)  # type: ignore[misc]  # not in the stubs
        if self._publisher is None or self._publisher.connection_pool is not self.pool:
            self._publisher = super()._create_client()  # type: ignore[misc]
        return self._publisher


class Transport(kombu_redis.Transport):
    Channel = Channel
