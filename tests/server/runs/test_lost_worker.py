"""A lost worker node (issue 15): its run resumes on another worker, at most RUNBOOKD_MAX_RESUMES times, unless the
runbook says `on_worker_lost: fail`; the original message's late redelivery is a no-op.

Real processes: workers are started in their own session and killed as a whole process group (main process and
pool), as a node drain or an OOM kill would; beat's reaper is called directly (with a short grace) rather than
waited for. The partition case (a worker cut off, not dead) is tests/server/runs/test_partition.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import select

from server.app import create_app
from server.audit.models import AuditEvent
from server.auth.models import Role
from server.db import session_scope
from server.models_base import utcnow
from server.runs import sweeps
from server.runs.models import Run, RunEvent, StepRun
from server.settings import Settings
from tests.conftest import subprocess_env
from tests.server.runs.conftest import RUNBOOKS
from tests.support import http, processes, serve, start, steps, wait_for, wait_run, worker_outcomes

GRACE_S = 2.0


@pytest.fixture(scope="module")
def lost_settings(runs_settings: Settings) -> Settings:
    """A queue of its own (no other test's worker takes these runs) and a short reap grace."""
    return runs_settings.model_copy(update={"default_queue": f"rbtest-lost-{uuid.uuid4().hex[:6]}",
                                            "run_reap_grace": GRACE_S, "max_resumes": 2})


@pytest.fixture(scope="module")
def lost_api(lost_settings: Settings, make_token) -> Iterator:
    with serve(create_app(lost_settings)) as url, http(url, make_token(Role.operator)) as client:
        yield client


Starter = Callable[..., subprocess.Popen[bytes]]


def spawn_worker(launch: Starter, settings: Settings, log_path: Path, **env: str
                 ) -> tuple[subprocess.Popen[bytes], Callable[[], None]]:
    """A `runbookd worker` (one pool process) in a session of its own, so os.killpg takes all of it; returned at
    once with the wait for its readiness, so its start-up can overlap what the test does meanwhile."""
    environment = subprocess_env(settings, RUNBOOKD_RUN_HEARTBEAT_INTERVAL="0.5",
                                 RUNBOOKD_RUN_REAP_GRACE=str(settings.run_reap_grace),
                                 RUNBOOKD_ARTIFACTS_DIR=str(settings.artifacts_dir), **env)
    with log_path.open("wb") as log:
        proc = launch([sys.executable, "-m", "server.cli", "worker", "--concurrency", "1", "--queues",
                       settings.default_queue, "--hostname", f"lost-{uuid.uuid4().hex[:6]}@%h"],
                      env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def ready() -> None:
        wait_for(lambda: b" ready." in log_path.read_bytes() or proc.poll() is not None, 90,
                 f"worker to start: {log_path}")
        assert proc.poll() is None, log_path.read_text()

    return proc, ready


def worker(launch: Starter, settings: Settings, log_path: Path, **env: str) -> subprocess.Popen[bytes]:
    """spawn_worker, once it is ready."""
    proc, ready = spawn_worker(launch, settings, log_path, **env)
    ready()
    return proc


def kill_group(proc: subprocess.Popen[bytes], step_pid_file: Path | None = None) -> None:
    """SIGKILL the worker's whole process group (its main process and its pool) mid-step, and the step's own
    process group (a shell step runs in a session of its own), as the loss of the node would."""
    os.killpg(proc.pid, signal.SIGKILL)
    if step_pid_file is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(step_pid_file.read_text()), signal.SIGKILL)
    proc.wait(30)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def holder(client, run_id: int, step: str) -> str:
    """The worker (host:pid) running the run once `step` is recorded as running."""
    def running() -> bool:
        run = client.get(f"/api/v1/runs/{run_id}").json()
        return steps(run)[step]["status"] == "running" and run["status"] == "running"

    wait_for(running, 60, f"step {step} of run {run_id} to be recorded as running")
    return client.get(f"/api/v1/runs/{run_id}").json()["worker"]


def reap_until(engine: Engine, settings: Settings, run_id: int, done: Callable[[Run], bool]) -> None:
    """Call beat's reaper until it has dealt with the run (its heartbeat must first be older than the grace)."""
    def dealt_with() -> bool:
        sweeps.reap(engine, settings)
        with session_scope(engine) as session:
            return done(session.get(Run, run_id))

    wait_for(dealt_with, 60, f"the reaper to deal with run {run_id}", interval=0.5)


def test_a_run_whose_worker_was_killed_whole_resumes_on_another_worker(lost_settings, lost_api, engine, tmp_path):
    marker = tmp_path / "effects"
    with processes() as launch:
        first = worker(launch, lost_settings, tmp_path / "first.log")
        # The slow step's first attempt sleeps 12 s (it is killed mid-way); the resumed one only 1 s.
        run_id = start(lost_api, "lost-worker", {"marker": str(marker), "again": 1})["id"]
        lost = holder(lost_api, run_id, "slow")
        # The run is the first worker's now: the second starts up while the first is killed and the grace runs.
        second_log = tmp_path / "second.log"
        _second, second_ready = spawn_worker(launch, lost_settings, second_log)
        wait_for(lambda: "slow-start" in lines(marker) and lines(Path(f"{marker}.pid")), 30, "the slow step to act")
        kill_group(first, Path(f"{marker}.pid"))
        second_ready()
        reap_until(engine, lost_settings, run_id, lambda run: run.resumes == 1)
        done = wait_run(lost_api, run_id, timeout=90)
        assert done["status"] == "succeeded", done
        # Finished steps ran once, the interrupted one again (from its start), the rest once.
        assert lines(marker) == ["first", "slow-start", "slow-start", "slow-end", "last"]
        by_id = steps(done)
        assert (by_id["first"]["attempts"], by_id["slow"]["attempts"], by_id["last"]["attempts"]) == (1, 2, 1)
        assert done["worker"] != lost
        assert (done["resumes"], done["lost_workers"]) == (1, [lost])  # the API says so too

        history = lost_api.get(f"/api/v1/runs/{run_id}/events").text  # the SSE stream's history
        assert history.count("event: run.worker_lost") == 1 and history.count("event: run.resumed") == 1
        assert history.count("event: run.finished") == 1
        with session_scope(engine) as session:
            run = session.get(Run, run_id)
            assert (run.resumes, run.lost_workers, run.epoch) == (1, [lost], 3)  # claim, reaper, claim
            resumed = session.exec(select(RunEvent).where(RunEvent.run_id == run_id,
                                                          RunEvent.type == "run.resumed")).one()
            assert resumed.data["previous_worker"] == lost and lost in resumed.data["reason"]
            audit = session.exec(select(AuditEvent).where(AuditEvent.action == "run.resume",
                                                          AuditEvent.target_id == str(run_id))).all()
            assert len(audit) == 1 and audit[0].actor == "system" and lost in (audit[0].reason or "")

        # The killed worker's message was never acknowledged: a worker with a short visibility timeout hands it
        # out again at its start. Its late delivery finds the run finished and does nothing.
        late_log = tmp_path / "late.log"
        worker(launch, lost_settings, late_log, RUNBOOKD_BROKER_VISIBILITY_TIMEOUT="1")
        wait_for(lambda: worker_outcomes(late_log, run_id) or worker_outcomes(second_log, run_id)[1:], 90,
                 "the original message's late redelivery")
        late = worker_outcomes(late_log, run_id) or worker_outcomes(second_log, run_id)[1:]
        assert late == ["run is succeeded"], late
        assert lost_api.get(f"/api/v1/runs/{run_id}").json() == done
        assert lines(marker) == ["first", "slow-start", "slow-start", "slow-end", "last"]


def test_a_run_whose_workers_keep_vanishing_fails_past_max_resumes_naming_each(lost_settings, lost_api, engine,
                                                                                tmp_path):
    once = lost_settings.model_copy(update={"max_resumes": 1})
    marker, pid_file = tmp_path / "effects", tmp_path / "effects.pid"
    with processes() as launch:
        first = worker(launch, once, tmp_path / "first.log")
        run_id = start(lost_api, "lost-worker", {"marker": str(marker)})["id"]
        lost = [holder(lost_api, run_id, "slow")]
        second, second_ready = spawn_worker(launch, once, tmp_path / "second.log")  # starts up meanwhile
        wait_for(lambda: lines(marker).count("slow-start") == 1 and lines(pid_file), 30, "the slow step to act")
        kill_group(first, pid_file)
        second_ready()
        reap_until(engine, once, run_id, lambda run: run.resumes == 1)
        wait_for(lambda: lines(marker).count("slow-start") == 2, 60, "the resumed slow step to act")
        lost.append(holder(lost_api, run_id, "slow"))
        assert lost[1] != lost[0]
        kill_group(second, pid_file)
        reap_until(engine, once, run_id, lambda run: run.status == "failed")
    done = lost_api.get(f"/api/v1/runs/{run_id}").json()
    assert all(name in done["error"] for name in lost), done["error"]
    assert "RUNBOOKD_MAX_RESUMES=1" in done["error"]
    assert {s["step_id"]: s["status"] for s in done["steps"]} == {"first": "succeeded", "slow": "failed",
                                                                   "last": "cancelled"}
    assert lines(marker) == ["first", "slow-start", "slow-start"]
    history = lost_api.get(f"/api/v1/runs/{run_id}/events").text
    assert history.count("event: run.worker_lost") == 1 and history.count("event: run.finished") == 1


def _lost_run(engine: Engine, settings: Settings, runbook: str, *, resumes: int = 0,
              lost_workers: list[str] | None = None) -> int:
    """A run as a vanished worker leaves it: running, its heartbeat older than the grace, a step running."""
    now = utcnow()
    with session_scope(engine) as session:
        run = Run(runbook_id=runbook, runbook_hash="0" * 64, definition=(RUNBOOKS / f"{runbook}.yaml").read_text(),
                  params={"marker": "/nonexistent"}, actor="pytest", status="running", queue=settings.default_queue,
                  worker=f"gone-{uuid.uuid4().hex[:6]}:4242", started_at=now, epoch=resumes + 1,
                  resumes=resumes, lost_workers=lost_workers,
                  heartbeat_at=now - timedelta(seconds=settings.run_reap_grace + 5))
        session.add(run)
        session.flush()
        for position, (step_id, status) in enumerate([("first", "succeeded"), ("slow", "running"),
                                                      ("last", "pending")]):
            session.add(StepRun(run_id=run.id, step_id=step_id, position=position, uses="shell", status=status,
                                attempts=1 if status != "pending" else 0))
        assert run.id is not None
        return run.id


def test_past_max_resumes_the_run_fails_naming_every_worker_lost(lost_settings, engine):
    earlier = ["node-a:11", "node-b:22"]
    run_id = _lost_run(engine, lost_settings, "lost-worker", resumes=2, lost_workers=earlier)
    reap_until(engine, lost_settings, run_id, lambda run: run.status == "failed")
    with session_scope(engine) as session:
        run = session.get(Run, run_id)
        assert run.status == "failed" and run.epoch == 4  # the last worker, should it come back, is fenced
        for name in [*earlier, run.worker]:
            assert name in run.error, run.error
        assert "RUNBOOKD_MAX_RESUMES=2" in run.error
        rows = {s.step_id: s.status for s in session.exec(select(StepRun).where(StepRun.run_id == run_id))}
        assert rows == {"first": "succeeded", "slow": "failed", "last": "cancelled"}
        assert session.exec(select(AuditEvent).where(AuditEvent.action == "run.reap",
                                                     AuditEvent.target_id == str(run_id))).one().actor == "system"


def test_a_runbook_that_says_on_worker_lost_fail_is_failed_not_resumed(lost_settings, engine):
    run_id = _lost_run(engine, lost_settings, "lost-worker-fail")
    reap_until(engine, lost_settings, run_id, lambda run: run.status == "failed")
    with session_scope(engine) as session:
        run = session.get(Run, run_id)
        assert run.status == "failed" and f"worker {run.worker} lost" in run.error
        assert "on_worker_lost: fail" in run.error and run.resumes == 0
        kinds = session.exec(select(RunEvent.type).where(RunEvent.run_id == run_id)).all()
        assert "run.worker_lost" not in kinds and kinds.count("run.finished") == 1


def test_a_resumable_run_is_queued_again_with_its_epoch_moved_on(lost_settings, engine):
    """Without a worker on the queue: the reaper's part alone (the message waits in the queue)."""
    run_id = _lost_run(engine, lost_settings.model_copy(update={"default_queue": "rbtest-nobody"}), "lost-worker")
    reap_until(engine, lost_settings, run_id, lambda run: run.status == "queued")
    with session_scope(engine) as session:
        run = session.get(Run, run_id)
        assert (run.status, run.resumes, run.epoch, run.lost_workers) == ("queued", 1, 2, [run.worker])
        assert run.dispatched_at is not None
        kinds = session.exec(select(RunEvent.type).where(RunEvent.run_id == run_id)).all()
        assert kinds == ["run.worker_lost"]
        run.status = "cancelled"  # leave nothing queued for other tests' sweeps
        session.add(run)
