"""kombu's Redis transport with one publishing client per channel (per connection pool) instead of one per
command; selected by server.dispatch_queue.make_celery. Why: docs/architecture.md, "Measurements".
It overrides kombu's private Channel._create_client: pyproject.toml bounds kombu, tests/server/test_broker.py
guards it."""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _publisher: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            # The transport was closed (the worker's consumer lost Redis and closes its connection; closing
            # the channel then restores unacked messages through a new client). kombu would build a pool from
            # the closed transport's settings and raise AttributeError, which Celery treats as unrecoverable
            # and the worker exits; a connection error is what this is, and Celery reconnects after one.
            raise redis.ConnectionError("the broker connection is closed")
        if asynchronous:  # the event loop's consuming client: kombu's own handling
            return super()._create_client(asynchronous=True)  # type: ignore[misc]  # not in the stubs
        if self._publisher is None or self._publisher.connection_pool is not self.pool:
            self._publisher = super()._create_client()  # type: ignore[misc]
        return self._publisher


class Transport(kombu_redis.Transport):
    Channel = Channel
