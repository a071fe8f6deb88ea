"""Quiet logs: the frequent beat tasks (chat follow-ups, cron triggers, relay, reap, heartbeat) log at DEBUG
unless they did something. (Flag and log-level expiries run in beat itself, workers/beat_sweeps.py, and log
only what they apply.)

Celery logs every task's "Sending due task" (beat), "received" and "succeeded in" (worker) at INFO; for
sweeps that run every second and almost always find nothing, that was nearly all of a worker's log. This
filter, on the root handler, turns those records into DEBUG ones (dropped unless DEBUG is on), and keeps a
sweep's "succeeded" at INFO when its return value says it did something (a non-zero count).
"""

from __future__ import annotations

import logging
from typing import Any

from server.dispatch_queue import (
    CHAT_FOLLOWUPS_TASK,
    HEARTBEAT_TASK,
    RUN_REAP_TASK,
    RUN_RELAY_TASK,
    TRIGGER_SCHEDULES_TASK,
)

QUIET_TASKS = frozenset({CHAT_FOLLOWUPS_TASK, HEARTBEAT_TASK, RUN_RELAY_TASK, RUN_REAP_TASK, TRIGGER_SCHEDULES_TASK})
IDLE_REPRS = frozenset({"None", "0", "[]", "{}", "''", "False", ""})  # Celery logs the result's repr


def _task_of(record: logging.LogRecord) -> tuple[str | None, Any]:
    """(task name, return value or a sentinel) of a Celery trace, strategy or beat record."""
    args = record.args
    if isinstance(args, dict):
        return args.get("name"), args.get("return_value", _NO_RESULT)
    if record.name == "celery.beat" and isinstance(args, tuple) and len(args) >= 2:
        return str(args[1]), _NO_RESULT  # "Scheduler: Sending due task %s (%s)" % (entry, task)
    return None, _NO_RESULT


_NO_RESULT = object()


class QuietBeatTasks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not record.name.startswith("celery"):
            return True
        task, result = _task_of(record)
        if task not in QUIET_TASKS:
            return True
        if result is not _NO_RESULT and _did_something(result):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _did_something(result: Any) -> bool:
    if isinstance(result, str):
        return result.strip() not in IDLE_REPRS
    return bool(result)


def install(root: logging.Logger | None = None) -> None:
    """Add the filter to every root handler (call after configure_logging)."""
    for handler in (root or logging.getLogger()).handlers:
        if not any(isinstance(f, QuietBeatTasks) for f in handler.filters):
            handler.addFilter(QuietBeatTasks())
