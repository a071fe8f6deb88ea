"""GET /debug/state: one admin view of the moving parts, for when something is stuck."""

from __future__ import annotations

import os
import socket
from typing import Any

import redis
from fastapi import APIRouter

from server.debug import service
from server.deps import Admin, EngineDep, FlagCacheDep, LogLevelSyncDep, RedisDep, SettingsDep

router = APIRouter(prefix="/debug", tags=["debug"])


def _flag_cache(cache: Any) -> dict[str, Any]:
    # The flags domain owns its evaluation cache; it is read only through its own stats(), when present.
    stats = getattr(cache, "stats", None)
    if not callable(stats):
        return {"available": False, "detail": "flags: not available"}
    return {"available": True, **stats()}


@router.get("/state")
def debug_state(settings: SettingsDep, client: RedisDep, engine: EngineDep, cache: FlagCacheDep,
                sync: LogLevelSyncDep, _actor: Admin) -> dict[str, Any]:
    redis_part: dict[str, Any]
    if client is None:
        redis_part = {"error": "RUNBOOKD_REDIS_URL is not set"}
    else:
        try:
            redis_part = {"queues": service.queue_depths(client, settings),
                          "workers": service.live_workers(client, settings),
                          "beat": service.beat_status(client, settings)}
        except redis.RedisError as exc:
            redis_part = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return {
        "process": {"hostname": socket.gethostname(), "pid": os.getpid()},
        "queues": redis_part.get("queues"),
        "workers": redis_part.get("workers"),
        "beat": redis_part.get("beat"),
        "redis_error": redis_part.get("error"),
        "database": service.pool_status(engine),
        "flags_cache": _flag_cache(cache),
        "own_log_levels": dict(sync.applied) if sync is not None else {},
        "config": service.config_summary(settings),
    }
