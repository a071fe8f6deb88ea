"""One place that turns settings into Redis clients and prefixed key names."""

from __future__ import annotations

import redis

from server.settings import Settings


def make_redis(settings: Settings, *, timeout: float = 2.0) -> redis.Redis:
    return redis.Redis.from_url(settings.require_redis_url(), socket_timeout=timeout,
                                socket_connect_timeout=timeout, health_check_interval=30)


def key(settings: Settings, *parts: str) -> str:
    """A Redis key or channel inside runbookd's prefix, so tests and tenants never collide."""
    return settings.redis_prefix + ":".join(parts)
