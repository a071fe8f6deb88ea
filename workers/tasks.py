"""Thin tasks that take ids; the work lives in services and the engine."""

from __future__ import annotations

import logging
import time
from typing import Any

from server.queue import HEARTBEAT_TASK, PING_TASK
from server.redis_client import key, make_redis
from workers.celery_app import app, settings

log = logging.getLogger("runbookd.worker")


@app.task(name=PING_TASK)
def ping(payload: Any = None) -> Any:
    """Round trip for health checks and the dispatch benchmark's baseline."""
    log.info("ping received", extra={"payload": payload})
    return payload


@app.task(name=HEARTBEAT_TASK)
def beat_heartbeat() -> None:
    """Lets /debug/state tell whether beat is alive."""
    client = make_redis(settings)
    try:
        client.set(key(settings, "beat", "last"), str(time.time()))
    finally:
        client.close()
