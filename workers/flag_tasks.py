"""Beat's flag task: revert temporary flag changes whose time has come."""

from __future__ import annotations

from server.db import get_engine
from server.dispatch_queue import FLAG_EXPIRE_TASK
from server.flags.expiry import revert_due
from server.redis_client import make_redis
from workers.celery_app import app, settings


@app.task(name=FLAG_EXPIRE_TASK)
def expire_flags() -> int:
    """Apply due expiries; several workers may run this at once, each expiry still applies once."""
    client = make_redis(settings)
    try:
        return len(revert_due(get_engine(), settings, client))
    finally:
        client.close()
