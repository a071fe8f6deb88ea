"""Thin tasks that take ids; the work lives in services and the engine."""

from __future__ import annotations

import logging
import os
import time
from functools import lru_cache
from typing import Any

import redis
from celery.signals import worker_ready
from sqlalchemy import Engine

from server.db import get_engine, make_engine
from server.dispatch_queue import (
    ARTIFACT_RETENTION_TASK,
    AUDIT_RETENTION_TASK,
    CHAT_FOLLOWUPS_TASK,
    HEARTBEAT_TASK,
    PING_TASK,
    RUN_EXECUTE_TASK,
    RUN_REAP_TASK,
    RUN_RELAY_TASK,
    TRIGGER_SCHEDULES_TASK,
)
from server.redis_client import key, make_redis
from server.runs import sweeps
from workers.celery_app import app, settings
from workers.steps.base import load_step_kinds

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


# -- runs ------------------------------------------------------------------------------------------
_clients: dict[int, redis.Redis] = {}


def _redis() -> redis.Redis:
    # One client per process: prefork children must not share the parent's sockets.
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = make_redis(settings, timeout=5.0)
    return _clients[pid]


@lru_cache
def _run_engine() -> Engine:
    """The engine runs execute on: unless RUNBOOKD_RUN_PROGRESS_FSYNC, its commits do not wait for the
    disk flush (see claims.progress_connection); steps' own writes share it, so a database crash loses
    a step's effect and its recorded result together, and the resumed run repeats both."""
    return make_engine(settings.effective_database_url, synchronous_commit=settings.run_progress_fsync,
                       connect_wait=settings.run_db_wait)


@app.task(name=RUN_EXECUTE_TASK)
def execute_run(run_id: int, queue: str | None = None) -> str:
    """Execute (or resume) a run; acks late, so a worker killed mid-run gets it redelivered."""
    from workers.engine import execute

    outcome = execute(run_id, queue or settings.default_queue, settings=settings, engine=_run_engine(),
                      client=_redis())
    log.info("run task done", extra={"run_id": run_id, "outcome": outcome})
    return outcome


@app.task(name=RUN_RELAY_TASK)
def relay_runs() -> int:
    """Send runs that were committed as queued while the broker was unreachable."""
    return sweeps.relay(get_engine(), settings)


@app.task(name=RUN_REAP_TASK)
def reap_runs() -> int:
    """No run stays running forever: fail those whose worker vanished without a redelivery."""
    return sweeps.reap(get_engine(), settings, _redis())


@worker_ready.connect
def _relay_at_start(**_: Any) -> None:
    """A worker that starts sends what the api could not; its own engine, so children never inherit one."""
    engine = make_engine(settings.effective_database_url)
    try:
        sweeps.relay(engine, settings)
    except Exception as exc:  # a worker must start even when the database is briefly unreachable
        log.warning("relay at start failed", extra={"error": str(exc)})
    finally:
        engine.dispose()


@app.task(name=CHAT_FOLLOWUPS_TASK)
def chat_followups() -> int:
    """Post approval prompts and final summaries of runs started from chat to their response URLs; how many."""
    from server.chat.followups import post_due

    return post_due(get_engine(), settings)


@app.task(name=TRIGGER_SCHEDULES_TASK)
def trigger_schedules() -> int:
    """Start the runs of cron triggers whose slot has come (server.hooks.schedules)."""
    from server.hooks.schedules import tick

    return tick(get_engine(), settings)


# Every step kind imported before the pool forks: the children share it, and no run pays for the import.
load_step_kinds()


@app.task(name=ARTIFACT_RETENTION_TASK)
def artifact_retention() -> int:
    """Delete run artifacts older than RUNBOOKD_ARTIFACTS_RETENTION (server.runs.artifact_store); how many."""
    from server.runs.artifact_store import sweep_expired

    removed = sweep_expired(get_engine(), older_than=settings.artifacts_retention)
    if removed:
        log.info("expired artifacts deleted", extra={"removed": removed})
    return removed
