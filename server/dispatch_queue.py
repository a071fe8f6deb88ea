"""Celery configuration shared by the api (which only sends, by task name) and the workers."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery
from celery.signals import before_task_publish

from server.context import request_id_var
from server.settings import Settings, get_settings

PING_TASK = "runbookd.ping"
HEARTBEAT_TASK = "runbookd.beat_heartbeat"
AUDIT_RETENTION_TASK = "runbookd.audit_retention"
CHAT_FOLLOWUPS_TASK = "runbookd.chat.followups"
RUN_EXECUTE_TASK = "runbookd.runs.execute"
RUN_RELAY_TASK = "runbookd.runs.relay"
RUN_REAP_TASK = "runbookd.runs.reap"
TRIGGER_SCHEDULES_TASK = "runbookd.triggers.schedules"
ARTIFACT_RETENTION_TASK = "runbookd.runs.artifact_retention"


def make_celery(settings: Settings, *, include: list[str] | None = None) -> Celery:
    app = Celery("runbookd", broker=settings.redis_url or "redis://unset-RUNBOOKD_REDIS_URL", include=include or [])
    app.conf.update(
        broker_transport="server.broker:Transport",  # kombu's Redis transport, one client per channel
        # Every broker key lives under our prefix, so runbookd can share a Redis and tests never collide.
        broker_transport_options={"global_keyprefix": settings.redis_prefix,
                                  "visibility_timeout": settings.broker_visibility_timeout},
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.default_queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # A run is acknowledged only when done, and redelivered if its worker dies mid-way.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_concurrency=settings.worker_concurrency,
        enable_utc=True,
        beat_schedule_filename=str(settings.home / "celerybeat-schedule"),
        beat_schedule={
            "beat-heartbeat": {"task": HEARTBEAT_TASK, "schedule": timedelta(seconds=15)},
            "audit-retention": {"task": AUDIT_RETENTION_TASK, "schedule": timedelta(hours=1)},
            "chat-followups": {"task": CHAT_FOLLOWUPS_TASK, "schedule": timedelta(seconds=2),
                               "options": {"expires": 10}},
            # Flag and log-level expiries are not here: beat runs them itself (workers/beat_sweeps.py), once a
            # second, so a revert is at most ~2 s late even when long runs hold every worker pool slot.
            # Runs: send queued runs the api could not enqueue (Redis was down), and fail runs whose
            # worker vanished; each sweep is idempotent, so a sweep that waited too long is dropped.
            "runs-relay": {"task": RUN_RELAY_TASK, "schedule": timedelta(seconds=5), "options": {"expires": 10}},
            "runs-reap": {"task": RUN_REAP_TASK, "schedule": timedelta(seconds=10), "options": {"expires": 20}},
            # Cron triggers (server.hooks.schedules): each slot is an idempotency key, so a late or doubled tick
            # starts nothing twice; a tick that waited past `expires` is dropped, the next one does its work.
            "trigger-schedules": {"task": TRIGGER_SCHEDULES_TASK, "schedule": timedelta(seconds=1),
                                  "options": {"expires": 5}},
            # Artifacts older than RUNBOOKD_ARTIFACTS_RETENTION, in bounded batches; the next sweep carries on.
            "artifact-retention": {"task": ARTIFACT_RETENTION_TASK, "schedule": timedelta(minutes=10),
                                   "options": {"expires": 300}},
        },
    )
    return app


_senders: dict[tuple[str | None, str], Celery] = {}


def sender(settings: Settings | None = None) -> Celery:
    """The api's Celery client: it sends tasks by name and never imports the workers package."""
    settings = settings or get_settings()
    cache_key = (settings.redis_url, settings.redis_prefix)
    if cache_key not in _senders:
        _senders[cache_key] = make_celery(settings)
    return _senders[cache_key]


def send(task_name: str, *args: Any, settings: Settings | None = None, queue: str | None = None,
         **kwargs: Any) -> str:
    """Enqueue a task by name; call only after the commit the task depends on."""
    result = sender(settings).send_task(task_name, args=args, kwargs=kwargs, queue=queue)
    return str(result.id)


@before_task_publish.connect
def _stamp_request_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Carry the caller's request id to the worker, whose log lines then carry it too."""
    if headers is not None and "request_id" not in headers:
        headers["request_id"] = request_id_var.get()
