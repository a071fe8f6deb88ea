"""Thin tasks that take ids; the work lives in services and the engine."""

from __future__ import annotations

import logging
import time
from typing import Any

from server.queue import AUDIT_RETENTION_TASK, HEARTBEAT_TASK, PING_TASK
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


@app.task(name=AUDIT_RETENTION_TASK)
def audit_retention() -> None:
    """Archive and remove audit events older than RUNBOOKD_AUDIT_RETENTION_DAYS (when set)."""
    if not settings.audit_retention_days:
        return
    from datetime import timedelta

    from server.audit.retention import prune
    from server.auth.models import Actor
    from server.db import session_scope

    with session_scope() as session:
        result = prune(session, older_than=timedelta(days=settings.audit_retention_days), actor=Actor.system(),
                       archive_dir=settings.home / "audit-archive")
    if result.removed:
        log.info("audit events archived", extra={"removed": result.removed, "through_id": result.through_id,
                                                  "archive": str(result.archive)})
