"""Crash recovery: a killed worker's run resumes, duplicates never run twice, the reaper and the relay."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col, select

from server.app import create_app
from server.audit.models import AuditEvent
from server.auth.models import Actor, Role, Source
from server.db import session_scope
from server.dispatch_queue import RUN_EXECUTE_TASK, send
from server.models_base import as_utc, utcnow
from server.runbooks.validation import check_text
from server.runs import sweeps
from server.runs.models import Run, RunEvent, StepRun
from server.runs.service import create_run
from tests.conftest import subprocess_env
from tests.server.runs.conftest import RUNBOOKS
from tests.support import (
    allowed_skip,
    free_port_url,
    http,
    serve,
    start,
    steps,
    stop_process,
    wait_for,
    wait_run,
    worker_outcomes,
)


def _lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_sigkilled_worker_run_resumes_at_its_first_unfinished_step(operator, run_worker, tmp_path):
    marker = tmp_path / "side-effect"
    run = start(operator, "crash", {"marker": str(marker)})
    slow_marker = tmp_path / "side-effect.slow"
    wait_for(lambda: len(_lines(slow_marker)) == 1, 20, "the slow step to start")
    # A step's start is stored once it outlives the engine's first poll (quick steps store it with their end).
    wait_for(lambda: steps(operator.get(f"/api/v1/runs/{run['id']}").json())["slow"]["status"] == "running",
             5, "the slow step to be recorded as running")
    holder = operator.get(f"/api/v1/runs/{run['id']}").json()["worker"]
    pid = int(holder.rpartition(":")[2])
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)  # the pool process executing the run, mid-step

    done = wait_run(operator, run["id"], timeout=40)
    assert done["status"] == "succeeded", done
    assert _lines(marker) == ["ran"], "a finished step must never run again"
    assert _lines(slow_marker) == ["slow", "slow"], "the unfinished step runs again"
    by_id = steps(done)
    assert by_id["side-effect"]["attempts"] == 1 and by_id["slow"]["attempts"] == 2
    history = operator.get(f"/api/v1/runs/{run['id']}/events").text
    assert "event: run.resumed" in history
    assert done["worker"] != holder


def test_a_duplicate_message_never_runs_a_run_twice(operator, run_worker, runs_settings, tmp_path):
    marker = tmp_path / "once"
    run = start(operator, "crash", {"marker": str(marker)})
    send(RUN_EXECUTE_TASK, run["id"], runs_settings.default_queue, settings=runs_settings,
         queue=runs_settings.default_queue)
    send(RUN_EXECUTE_TASK, run["id"], runs_settings.default_queue, settings=runs_settings,
         queue=runs_settings.default_queue)
    done = wait_run(operator, run["id"], timeout=30)
    assert done["status"] == "succeeded"
    # Counted, not slept on: all three messages are consumed (the worker logs each task's outcome), and only one ran.
    wait_for(lambda: len(worker_outcomes(run_worker, run["id"])) >= 3, 20, "the worker to take all three messages")
    outcomes = worker_outcomes(run_worker, run["id"])
    refused = [o for o in outcomes if o.startswith("run is ")]
    assert len(refused) == len(outcomes) - 1 >= 2, outcomes
    # A late duplicate, after the run finished: dropped as such, and the finished run stays as it was.
    send(RUN_EXECUTE_TASK, run["id"], runs_settings.default_queue, settings=runs_settings,
         queue=runs_settings.default_queue)
    wait_for(lambda: len(worker_outcomes(run_worker, run["id"])) > len(outcomes), 20, "the worker to take the late one")
    assert worker_outcomes(run_worker, run["id"])[len(outcomes):] == ["run is succeeded"]
    assert operator.get(f"/api/v1/runs/{run['id']}").json() == done
    assert _lines(marker) == ["ran"]
    assert _lines(tmp_path / "once.slow") == ["slow"]


def test_the_runbook_timeout_ends_a_run_timed_out(operator, run_worker):
    started = time.monotonic()
    done = wait_run(operator, start(operator, "run-timeout")["id"], timeout=20)
    assert done["status"] == "timed_out"
    assert time.monotonic() - started < 10
    assert steps(done)["quick"]["status"] == "succeeded"
    assert steps(done)["slow"]["status"] == "timed_out"


def test_reaper_fails_a_running_run_whose_worker_vanished(engine, runs_settings):
    now = utcnow()
    with session_scope(engine) as session:
        lost = Run(runbook_id="trio", runbook_hash="0" * 64, definition="title: x", params={}, actor="pytest",
                   status="running", queue="runbookd", worker="gone-host:4242", started_at=now,
                   heartbeat_at=now - timedelta(seconds=runs_settings.run_reap_grace + 5))
        alive = Run(runbook_id="trio", runbook_hash="0" * 64, definition="title: x", params={}, actor="pytest",
                    status="running", queue="runbookd", worker="other-host:1", started_at=now, heartbeat_at=now)
        session.add_all([lost, alive])
        session.flush()
        session.add(StepRun(run_id=lost.id, step_id="hello", position=0, uses="log", status="running", attempts=1))
        session.add(StepRun(run_id=lost.id, step_id="bye", position=1, uses="log"))
    assert sweeps.reap(engine, runs_settings) >= 1
    with session_scope(engine) as session:
        reaped, untouched = session.get(Run, lost.id), session.get(Run, alive.id)
        assert reaped.status == "failed" and "gone-host:4242 lost" in reaped.error
        assert "grace 60s" in reaped.error
        assert untouched.status == "running"
        rows = {s.step_id: s.status for s in session.exec(select(StepRun).where(StepRun.run_id == lost.id))}
        assert rows == {"hello": "failed", "bye": "cancelled"}
        audit = session.exec(select(AuditEvent).where(AuditEvent.action == "run.reap",
                                                      AuditEvent.target_id == str(lost.id))).all()
        assert len(audit) == 1 and audit[0].actor == "system"
        untouched.status = "succeeded"  # leave nothing running for the other tests' reaper calls
        session.add(untouched)


def test_with_redis_down_the_run_is_committed_and_the_relay_sends_it(runs_settings, engine, make_token, operator,
                                                                   run_worker):
    offline = runs_settings.model_copy(update={"redis_url": free_port_url("redis")})
    with serve(create_app(offline)) as url, http(url, make_token(Role.operator)) as client:
        response = client.post("/api/v1/runs", json={"runbook": "trio", "params": {"who": "offline"}})
    assert response.status_code == 202, response.text
    run_id = response.json()["id"]
    with session_scope(engine) as session:
        run = session.get(Run, run_id)
        assert run.status == "queued" and run.dispatched_at is None
    assert sweeps.relay(engine, runs_settings, min_age_s=0) >= 1
    done = wait_run(operator, run_id)
    assert done["status"] == "succeeded"
    assert done["outputs"]["greeting"] == "hello offline"


def test_sse_gives_history_to_a_late_follower_and_live_output_to_an_early_one(operator, run_worker, runs_api):
    # Output lines are live only: the run waits a moment first, so this follower has surely connected.
    run = start(operator, "chatty")
    received: list[dict] = []
    with operator.stream("GET", f"/api/v1/runs/{run['id']}/events", timeout=httpx.Timeout(30, read=30)) as live:
        assert live.headers["content-type"].startswith("text/event-stream")
        for line in live.iter_lines():
            if line.startswith("data:"):
                received.append(json.loads(line.split(":", 1)[1]))
    seen = [event["type"] for event in received]
    assert seen[0] == "run.queued" and seen[-1] == "run.finished", seen
    assert seen.count("step.started") == 3, seen
    # Every line comes between its own step's start and end: the quick log step's too, whose start and
    # end are stored (and published) together, with the line in between, once the step is over.
    lines = [(e["step_id"], e["data"]["line"]) for e in received if e["type"] == "step.output"]
    assert lines == [("before", "starting"), ("talker", "one"), ("talker", "two")], lines
    for index, event in enumerate(received):
        if event["type"] == "step.output":
            own = [e["type"] for e in received[:index] if e["step_id"] == event["step_id"]]
            assert own and own[-1] in ("step.started", "step.output"), (index, seen)
    late = operator.get(f"/api/v1/runs/{run['id']}/events").text
    late_types = [line.split(":", 1)[1].strip() for line in late.splitlines() if line.startswith("event:")]
    assert late_types == [t for t in seen if t != "step.output"]  # the stored history, in order

def test_a_starting_worker_sends_the_runs_the_api_could_not(runs_settings, engine, make_token, tmp_path):
    # A queue no other worker reads, and no beat: only the new worker's relay at start can send the run.
    queue = f"rbtest-relay-{uuid.uuid4().hex[:6]}"
    offline = runs_settings.model_copy(update={"redis_url": free_port_url("redis"), "default_queue": queue})
    with serve(create_app(offline)) as url, http(url, make_token(Role.operator)) as client:
        run_id = start(client, "trio", {"who": "later"})["id"]
    with session_scope(engine) as session:  # older than the relay's grace for a just-committed run
        session.execute(update(Run).where(col(Run.id) == run_id).values(created_at=utcnow() - timedelta(seconds=30)))
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "server.cli", "worker", "--queues", queue, "--hostname",
                                   f"relay-{uuid.uuid4().hex[:6]}@%h"],
                                  env=subprocess_env(runs_settings.model_copy(update={"default_queue": queue})),
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        def finished() -> bool:
            with session_scope(engine) as session:
                return session.get(Run, run_id).status == "succeeded"

        wait_for(finished, 60, f"the run to be relayed and executed; worker log:\n{log_path}")
    finally:
        stop_process(worker)
    assert "relayed queued runs" in log_path.read_text()


def test_cancel_of_a_queued_run_is_immediate_and_audited(runs_settings, make_token, engine):
    offline = runs_settings.model_copy(update={"redis_url": free_port_url("redis")})
    with serve(create_app(offline)) as url, http(url, make_token(Role.operator)) as client:
        run = client.post("/api/v1/runs", json={"runbook": "trio"}).json()
        cancelled = client.post(f"/api/v1/runs/{run['id']}/cancel", json={"reason": "wrong runbook"})
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert {s["status"] for s in cancelled.json()["steps"]} == {"cancelled"}
    with session_scope(engine) as session:
        event = session.exec(select(AuditEvent).where(AuditEvent.action == "run.cancel",
                                                      AuditEvent.target_id == str(run["id"]))).one()
        assert event.reason == "wrong runbook"



def test_a_held_first_claim_writes_nothing_when_a_cancel_got_there_first(runs_settings, make_token, engine):
    if engine.dialect.name != "postgresql":
        allowed_skip("first claims are held on PostgreSQL only; on SQLite the claim is written at once")
    from server.runbooks.validation import check_text
    from workers import claims
    from workers.journal import DbJournal, RunLost

    offline = runs_settings.model_copy(update={"redis_url": free_port_url("redis")})  # nothing is dispatched
    with serve(create_app(offline)) as url, http(url, make_token(Role.operator)) as client:
        run = client.post("/api/v1/runs", json={"runbook": "trio"}).json()
        runbook = check_text((RUNBOOKS / "trio.yaml").read_text(), "trio.yaml").runbook
        got = claims.claim(engine, runs_settings, run["id"], definition=lambda _run: runbook)
        assert got.held is not None and got.run is not None and got.started is not None
        # The claim's read took no lock, so the cancel does not wait for it: it finds the run still queued.
        cancelled = client.post(f"/api/v1/runs/{run['id']}/cancel", json={})
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    journal = DbJournal(runs_settings, engine, None, got)  # holds the claim and its run.started
    got.run.status = "succeeded"
    with pytest.raises(RunLost):
        journal.save(run=True, event=(None, "run.finished", {"status": "succeeded"}))
    assert journal.held is None
    with session_scope(engine) as session:
        stored = session.get(Run, run["id"])
        assert stored.status == "cancelled" and stored.worker is None and stored.started_at is None
        kinds = session.exec(select(RunEvent.type).where(RunEvent.run_id == run["id"]).order_by(RunEvent.id)).all()
        assert kinds == ["run.queued", "run.finished"], "nothing of the overtaken claim may be written"


def test_beat_runs_the_relay_and_the_reaper(runs_settings):
    from server.dispatch_queue import RUN_REAP_TASK, RUN_RELAY_TASK, make_celery

    tasks = {entry["task"]: entry["schedule"].total_seconds()
             for entry in make_celery(runs_settings).conf.beat_schedule.values()}
    assert tasks[RUN_RELAY_TASK] <= 10 and tasks[RUN_REAP_TASK] <= runs_settings.run_reap_grace / 2


def _reap_overdue_in_schedule_file(settings) -> None:
    """Write beat's schedule file (celery's own PersistentScheduler, as `runbookd beat` opens it) with the reap
    last sent an hour ago: the state a beat that was down for a while comes back to."""
    from celery.beat import PersistentScheduler

    from server.dispatch_queue import RUN_REAP_TASK, make_celery

    settings.home.mkdir(parents=True, exist_ok=True)
    scheduler = PersistentScheduler(make_celery(settings), lazy=True,
                                    schedule_filename=str(settings.home / "celerybeat-schedule"))
    scheduler.setup_schedule()
    try:
        reaps = [entry for entry in scheduler.schedule.values() if entry.task == RUN_REAP_TASK]
        assert len(reaps) == 1, list(scheduler.schedule)
        reaps[0].last_run_at = reaps[0].default_now() - timedelta(hours=1)
    finally:
        scheduler.close()


def test_a_running_beat_has_the_worker_reap_a_lost_run(runs_settings, engine, run_worker, tmp_path):
    """Not the schedule's config: a real `runbookd beat` sends the sweep, the real worker runs it, the run fails."""
    now = utcnow()
    with session_scope(engine) as session:
        lost = Run(runbook_id="trio", runbook_hash="0" * 64, definition="title: x", params={}, actor="pytest",
                   status="running", queue="runbookd", worker="vanished-host:4343", started_at=now,
                   heartbeat_at=now - timedelta(seconds=runs_settings.run_reap_grace + 5))
        session.add(lost)
        session.flush()
        session.add(StepRun(run_id=lost.id, step_id="hello", position=0, uses="log", status="running", attempts=1))
        lost_id = lost.id

    def status() -> str:
        with session_scope(engine) as session:
            return session.get(Run, lost_id).status

    # Beat's first reap is due a whole interval (10 s) after a fresh start. This beat has a home of its own whose
    # schedule file says the reap fell due while it was down, so it sends one as it starts, as a restarted beat
    # does; the interval itself is test_beat_runs_the_relay_and_the_reaper's.
    beat_settings = runs_settings.model_copy(update={"home": tmp_path / "beat-home"})
    _reap_overdue_in_schedule_file(beat_settings)
    log_path = tmp_path / "beat.log"
    with log_path.open("wb") as log:
        beat = subprocess.Popen([sys.executable, "-m", "server.cli", "beat"], env=subprocess_env(beat_settings),
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: status() == "failed" or beat.poll() is not None, 40, "beat's reaper to fail the run")
            assert beat.poll() is None, log_path.read_text()
        finally:
            stop_process(beat)
    with session_scope(engine) as session:
        assert "vanished-host:4343 lost" in session.get(Run, lost_id).error
        audit = session.exec(select(AuditEvent).where(AuditEvent.action == "run.reap",
                                                      AuditEvent.target_id == str(lost_id))).all()
        assert len(audit) == 1 and audit[0].actor == "system"


def test_a_run_committed_as_sent_whose_message_was_lost_is_sent_again(runs_settings, engine, operator, run_worker):
    """An api killed between its commit and its send leaves a run noted as sent that no broker holds: beat's
    relay sends it again once RUNBOOKD_RUN_RESEND_AFTER has passed, and not before."""
    actor = Actor(name="lost-send", role=Role.operator, source=Source.system)
    checked = check_text((RUNBOOKS / "trio.yaml").read_text(), "trio.yaml")
    with session_scope(engine) as session:
        run, _steps = create_run(session, checked=checked, given={"who": "lost send"}, actor=actor,
                                 settings=runs_settings)  # committed as sent; nothing sent
        run_id = run.id
        sent_at = utcnow() - timedelta(seconds=30)
        session.execute(update(Run).where(col(Run.id) == run_id).values(dispatched_at=sent_at, created_at=sent_at))

    def noted_sent_at():
        with session_scope(engine) as session:
            return session.get(Run, run_id).dispatched_at

    patient = runs_settings.model_copy(update={"run_resend_after": 60.0})
    sweeps.relay(engine, patient)
    assert as_utc(noted_sent_at()) == sent_at  # 30 s is within the 60 s a message may take: left alone
    sweeps.relay(engine, runs_settings.model_copy(update={"run_resend_after": 10.0}))
    assert as_utc(noted_sent_at()) > sent_at
    done = wait_run(operator, run_id)
    assert done["status"] == "succeeded" and done["outputs"]["greeting"] == "hello lost send"
