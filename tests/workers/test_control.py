"""Worker and beat housekeeping with real processes: runbookd's own log levels reach the worker's pool
process (its task logging changes and changes back), beat ends expired overrides as the system (in its own
sweep thread, workers/beat_sweeps.py), and the worker's heartbeat shows in /debug/state."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlmodel import select

from server.audit.models import AuditEvent
from server.auth.models import Role
from server.db import session_scope
from server.dispatch_queue import PING_TASK, send
from server.loglevels.models import LogLevelOverride
from server.models_base import as_utc
from tests.server.loglevels.processes import worker_process
from tests.support import http, wait_for

pytestmark = pytest.mark.slow
# Pings go to a queue only this module's worker consumes: other tests' workers share the default queue.
OWN_QUEUE = f"control-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def worker(settings, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("control") / "worker.log"
    with worker_process(settings, log_path, with_beat=True, own_queue=OWN_QUEUE) as hostname:
        yield hostname, log_path


def _pinged(log_path, payload: str) -> bool:
    return any('"ping received"' in line and payload in line for line in log_path.read_text().splitlines())


def test_worker_processes_apply_runbookd_log_levels_and_revert_them(worker, base_url, admin_token, settings):
    _hostname, log_path = worker
    first = f"before-{uuid.uuid4().hex[:6]}"
    send(PING_TASK, first, settings=settings, queue=OWN_QUEUE)
    wait_for(lambda: _pinged(log_path, first), 20, "the worker to log a ping at INFO")

    with http(base_url, admin_token) as client:
        done = client.post("/debug/loggers/runbookd.worker", json={"configuredLevel": "ERROR", "for": "4s"})
    assert done.status_code == 204, done.text
    # The main process and the pool process each say they applied it.
    wait_for(lambda: log_path.read_text().count("'runbookd.worker': 'ERROR'") >= 2, 10,
             "both worker processes to apply the level")
    quiet = f"quiet-{uuid.uuid4().hex[:6]}"
    send(PING_TASK, quiet, settings=settings, queue=OWN_QUEUE)
    wait_for(lambda: log_path.read_text().count("restored to") >= 2, 15, "the level to revert in both processes")
    # A ping every 2 s until one is logged: the proof is that INFO comes back, not how soon one ping lands.
    loud = f"after-{uuid.uuid4().hex[:6]}"
    sent_at = 0.0

    def loud_logged() -> bool:
        nonlocal sent_at
        if time.monotonic() - sent_at > 2:
            send(PING_TASK, loud, settings=settings, queue=OWN_QUEUE)
            sent_at = time.monotonic()
        return _pinged(log_path, loud)

    try:
        wait_for(loud_logged, 30, "the worker to log at INFO again")
    except TimeoutError:
        raise AssertionError("\n".join(log_path.read_text().splitlines()[-40:])) from None
    assert not _pinged(log_path, quiet), "a ping handled while the logger was at ERROR must not be logged"


def test_beat_ends_expired_overrides_as_the_system(worker, base_url, make_token, engine, make_incident):
    incident = make_incident()
    service = f"svc-{uuid.uuid4().hex[:8]}"
    with http(base_url, make_token(Role.operator)) as client:
        created = client.post("/api/v1/loglevels", json={"service": service, "logger": "app", "level": "DEBUG",
                                                         "for": "1s", "incident_id": incident}).json()

    def ended() -> LogLevelOverride | None:
        with session_scope(engine) as session:
            row = session.get(LogLevelOverride, created["id"])
            return row if row is not None and row.ended_at is not None else None

    wait_for(lambda: ended() is not None, 15, "beat to end the override")
    row = ended()
    assert row is not None and row.ended_by == "system" and row.end_reason == "expire"
    assert row.expires_at is not None
    lateness = (as_utc(row.ended_at) - as_utc(row.expires_at)).total_seconds()
    assert 0 <= lateness < 5, lateness  # a per-second schedule, not the 15 s heartbeat's
    with session_scope(engine) as session:
        event = session.exec(select(AuditEvent).where(AuditEvent.target_id == f"{service}/app",
                                                      AuditEvent.action == "loglevel.expire")).one()
    assert event.actor == "system" and event.incident_id == incident


def test_debug_state_lists_the_live_worker_and_queue_depths(worker, base_url, admin_token, settings):
    hostname, _log = worker
    parked = f"parked-{uuid.uuid4().hex[:6]}"
    with http(base_url, admin_token) as client:
        # A queue no worker consumes, so its depth is known; kombu records the binding when it is sent to.
        send(PING_TASK, "waiting", settings=settings, queue=parked)
        state = client.get("/debug/state").json()
    workers = {w["hostname"]: w for w in state["workers"]}
    assert hostname in workers, state["workers"]
    assert workers[hostname]["seconds_since_heartbeat"] < 30
    assert settings.default_queue in workers[hostname]["queues"]
    assert state["queues"][parked] == 1
    assert isinstance(state["queues"][settings.default_queue], int)
