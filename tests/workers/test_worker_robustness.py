"""A worker that dies leaves nothing behind for long: a step's tool dies with the pool process that started it
(SIGKILL included), and the next worker start on the scratch directory removes what runs that finished
meanwhile left there. A real worker process, real runs in the database, real child processes."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from sqlalchemy import update
from sqlmodel import Session, col

from server.auth.models import Actor, Role, Source
from server.runbooks.validation import check_text
from server.runs import service
from server.runs.models import Run, RunStatus
from server.runs.service import send_run
from tests.conftest import subprocess_env
from tests.support import celery_worker, wait_for
from workers.artifacts import scratch_dir

ACTOR = Actor(name="pytest-robust", role=Role.operator, source=Source.cli)
PID_SLEEPER = """\
title: A shell step whose tool writes its pid and sleeps
params:
  pid_file: {type: string}
steps:
  - id: sleeper
    uses: shell
    with:
      argv: [sh, -c, 'echo $$ > "$1"; exec sleep 300', sh, "{{ params.pid_file }}"]
"""
QUICK = """\
title: One log step
steps:
  - {id: say, uses: log, with: {message: hi}}
"""


def _create(session: Session, settings, text: str, params: dict | None = None) -> int:
    checked = check_text(text, "robust.yaml")
    assert checked.runbook is not None, checked.errors
    run, _steps = service.create_run(session, checked=checked, given=params or {}, actor=ACTOR, settings=settings)
    assert run.id is not None
    return run.id


def _set_status(session: Session, run_id: int, status: RunStatus) -> None:
    session.execute(update(Run).where(col(Run.id) == run_id).values(status=status))


@pytest.fixture(scope="module")
def robust_settings(settings, tmp_path_factory):
    return settings.model_copy(update={"default_queue": f"rbtest-robust-{uuid.uuid4().hex[:6]}",
                                       "artifacts_dir": tmp_path_factory.mktemp("robust-scratch")})


@pytest.fixture(scope="module")
def left_scratch(robust_settings, engine) -> dict[str, Path]:
    """Scratch directories as workers that died would have left them, made before this module's worker starts:
    one per kind of run, one of a run the database does not know, and a file that is no run's."""
    directory = robust_settings.artifacts_dir
    with Session(engine) as session:
        ids = {kind: _create(session, robust_settings, QUICK) for kind in
               ("succeeded", "failed", "cancelled", "running", "waiting_approval", "queued")}
        for kind, run_id in ids.items():
            if kind != "queued":
                _set_status(session, run_id, RunStatus(kind))
        session.commit()
    left = {kind: scratch_dir(directory, run_id) for kind, run_id in ids.items()}
    left["unknown"] = scratch_dir(directory, 2**31 - 2)
    left["out-of-range"] = scratch_dir(directory, 2**31 + 5)
    for path in left.values():
        path.mkdir(parents=True)
        (path / "sleeper.1.core").write_bytes(b"core")
    (directory / "run-notes.txt").write_text("not a run's directory")
    left["not-a-run"] = directory / "run-notes.txt"
    return left


@pytest.fixture(scope="module")
def robust_worker(robust_settings, left_scratch, tmp_path_factory) -> Iterator[tuple[Path, int]]:
    log_path = tmp_path_factory.mktemp("robust-worker") / "worker.log"
    env = subprocess_env(robust_settings, RUNBOOKD_ARTIFACTS_DIR=str(robust_settings.artifacts_dir))
    with celery_worker(env, log_path, name="robust", queues=robust_settings.default_queue) as log:
        main = next(p for p in psutil.Process().children() if any(a.startswith("robust-") for a in p.cmdline()))
        yield log, main.pid


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_worker_start_removes_the_scratch_of_finished_runs_only(robust_worker, left_scratch):
    log, _main = robust_worker
    finished = [left_scratch[k] for k in ("succeeded", "failed", "cancelled")]
    wait_for(lambda: not any(p.exists() for p in finished), 15, f"the finished runs' scratch to go: {log.read_text()}")
    for kind in ("running", "waiting_approval", "queued", "unknown", "out-of-range", "not-a-run"):
        assert left_scratch[kind].exists(), f"the {kind} run's scratch was removed"
    assert (left_scratch["running"] / "sleeper.1.core").read_bytes() == b"core"
    assert "scratch of finished runs removed" in log.read_text()


def test_a_shell_steps_tool_dies_with_the_pool_process_that_started_it(robust_worker, robust_settings, engine,
                                                                      tmp_path):
    log, main = robust_worker
    pid_file = tmp_path / "sleeper.pid"
    with Session(engine) as session:
        run_id = _create(session, robust_settings, PID_SLEEPER, {"pid_file": str(pid_file)})
        session.commit()
    assert send_run(robust_settings, run_id, robust_settings.default_queue)
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip().isdigit(), 30,
             f"the step's tool to write its pid: {log.read_text()[-2000:]}")
    tool = psutil.Process(int(pid_file.read_text()))
    assert tool.name() == "sleep"
    pool = psutil.Process(tool.ppid())  # the pool process whose step thread started it
    assert pool.ppid() == main and pool.pid != main
    os.kill(pool.pid, signal.SIGKILL)
    wait_for(lambda: _gone(tool.pid), 5, f"the tool {tool.pid} to die with its pool process {pool.pid}")
    # The kernel signals the tool while the pool process exits, so the pool may still be on its way out.
    wait_for(lambda: _gone(pool.pid), 10, f"the pool process {pool.pid} to exit")
