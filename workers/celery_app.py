"""The Celery app the worker and beat processes run: configured from server settings."""

from __future__ import annotations

from typing import Any

from celery.signals import setup_logging, task_postrun, task_prerun

from server.context import request_id_var
from server.dispatch_queue import make_celery
from server.logs import configure_logging
from server.settings import get_settings

settings = get_settings()
app = make_celery(settings, include=["workers.tasks", "workers.control", "workers.flag_tasks"])


@setup_logging.connect
def _logging(**_: Any) -> None:
    configure_logging(settings.log_level, settings.log_format)


@task_prerun.connect
def _bind_request_id(task: Any = None, **_: Any) -> None:
    request_id_var.set(getattr(task.request, "request_id", None) or task.request.id)


@task_postrun.connect
def _unbind_request_id(**_: Any) -> None:
    request_id_var.set(None)
