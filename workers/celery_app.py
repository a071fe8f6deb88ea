"""The Celery app the worker and beat processes run: configured from server settings."""

from __future__ import annotations

import atexit
from typing import Any

from celery.signals import beat_init, setup_logging, task_postrun, task_prerun, worker_init

from server import logmask, tracing
from server.context import request_id_var
from server.dispatch_queue import make_celery
from server.logs import configure_logging
from server.settings import get_settings

settings = get_settings()
app = make_celery(settings, include=["workers.tasks", "workers.control"])


@setup_logging.connect
def _logging(**_: Any) -> None:
    configure_logging(settings.log_level, settings.log_format)
    logmask.watch_runs()
    from workers.quiet import install

    install()  # once-a-second sweeps log at DEBUG unless they did something


@worker_init.connect
def _tracing_worker(**_: Any) -> None:
    tracing.setup("worker")  # before the pool forks; only when OTEL_EXPORTER_OTLP_*ENDPOINT is set


@beat_init.connect
def _beat_started(**_: Any) -> None:
    tracing.setup("beat")
    # Flag and log-level expiries run here, not on workers, whose pool slots long runs may all hold.
    # Celery has no beat shutdown signal; beat exits through SystemExit (SIGTERM, SIGINT), so atexit stops them.
    from workers.beat_sweeps import BeatSweeps

    atexit.register(BeatSweeps(settings).start().stop)


@task_prerun.connect
def _bind_request_id(task: Any = None, **_: Any) -> None:
    request_id_var.set(getattr(task.request, "request_id", None) or task.request.id)


@task_postrun.connect
def _unbind_request_id(**_: Any) -> None:
    request_id_var.set(None)
