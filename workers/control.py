"""Per-process housekeeping of workers: runbookd's own log levels, the expiry sweep, heartbeats."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from server.db import make_engine
from server.debug.service import WORKER_HEARTBEAT_SECONDS, write_worker_heartbeat
from server.loglevels.sync import OwnLoggerSync
from server.notices import NoticeBus
from server.redis_client import key, make_redis
from workers.artifacts import sweep_scratch
from workers.celery_app import settings

log = logging.getLogger("runbookd.worker")
_state: dict[str, Any] = {}


def _start_sync(*, sweep: bool) -> None:
    # An engine of its own: one inherited through fork() must never be used by a child.
    _state["engine"] = make_engine(settings.effective_database_url)
    # The process's notice bus: one Redis subscription for every follower (today the log-level sync only).
    bus = _state["notices"] = NoticeBus(settings)
    _state["sync"] = OwnLoggerSync(settings, _state["engine"], sweep_at_start=sweep).start(bus)
    bus.start(wait=0)


@worker_process_init.connect
def _child_started(**_: Any) -> None:
    """Each pool process runs tasks and logs on its own, so each applies runbookd's log levels itself."""
    _start_sync(sweep=False)


def _heartbeat(hostname: str, queues: list[str], stop: threading.Event) -> None:
    client = make_redis(settings)
    started = time.time()
    while not stop.is_set():
        try:
            write_worker_heartbeat(client, settings, hostname=hostname, pid=os.getpid(), queues=queues,
                                   started_at=started)
        except Exception:
            log.warning("could not write the worker heartbeat", exc_info=True)
        stop.wait(WORKER_HEARTBEAT_SECONDS)
    try:
        client.delete(key(settings, "worker", hostname))
    finally:
        client.close()


@worker_ready.connect
def _worker_ready(sender: Any = None, **_: Any) -> None:
    """The main process: apply log levels, sweep expiries missed while nothing ran, remove the scratch of runs
    that finished while their worker was gone, start the heartbeat."""
    _start_sync(sweep=True)
    _sweep_scratch()
    hostname = getattr(sender, "hostname", None) or f"worker@{os.uname().nodename}"
    consumer = getattr(sender, "task_consumer", None)
    queues = sorted(q.name for q in getattr(consumer, "queues", []) or [])
    stop = threading.Event()
    _state["heartbeat_stop"] = stop
    _state["heartbeat"] = threading.Thread(target=_heartbeat, args=(hostname, queues, stop),
                                           name="runbookd-worker-heartbeat", daemon=True)
    _state["heartbeat"].start()


def _sweep_scratch() -> None:
    try:
        removed = sweep_scratch(_state["engine"], settings.artifacts_dir)
    except Exception:  # a database still starting must not keep the worker from starting; the next start sweeps
        log.warning("scratch of finished runs not swept", exc_info=True)
        return
    if removed:
        log.info("scratch of finished runs removed", extra={"runs": len(removed), "run_ids": removed[:20]})


@worker_shutdown.connect
def _worker_shutdown(**_: Any) -> None:
    if "heartbeat_stop" in _state:
        _state["heartbeat_stop"].set()
        _state["heartbeat"].join(5)
    if "notices" in _state:
        _state["notices"].stop()
    if "sync" in _state:
        _state["sync"].stop()
