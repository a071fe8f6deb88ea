"""Who executes a run: claiming it (once, even when a message is delivered twice), heartbeats, take-over."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, func, text, update
from sqlmodel import col, select

from server.db import commits_asynchronously, is_postgres, session_scope
from server.models_base import as_utc, utcnow
from server.runbooks.schema import Runbook
from server.runs import events
from server.runs.models import Run, RunStatus, StepRun
from server.runs.service import pending_steps
from server.settings import Settings

HOST = socket.gethostname()


def open_progress(engine: Engine, settings: Settings) -> Connection:
    """A Connection in a transaction for a run's progress (claims, step results), committed without waiting
    for the disk flush unless RUNBOOKD_RUN_PROGRESS_FSYNC (docs/architecture.md, "Measurements"). The caller
    commits and closes it (closing without a commit rolls back)."""
    conn = engine.connect()
    try:
        conn.begin()
        if _set_async_commit(engine, settings):
            conn.execute(text("SET LOCAL synchronous_commit = off"))
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def progress_connection(engine: Engine, settings: Settings) -> Iterator[Connection]:
    """open_progress as a block: committed at its end, rolled back on an exception."""
    with open_progress(engine, settings) as conn:
        yield conn
        conn.commit()


def _set_async_commit(engine: Engine, settings: Settings) -> bool:
    """Whether a progress transaction must turn synchronous_commit off itself: the worker's run engine
    has it off on every connection already (no extra round trip), other engines do not."""
    return not settings.run_progress_fsync and is_postgres(engine) and not commits_asynchronously(engine)


def me() -> str:
    return f"{HOST}:{os.getpid()}"


def _owner_is_dead(owner: str | None) -> bool | None:
    """True/False for a process on this host; None when it runs elsewhere (only its heartbeat can tell)."""
    if not owner or ":" not in owner:
        return True
    host, _, pid = owner.rpartition(":")
    if host != HOST or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass
class Claim:
    run: Run | None
    retry_in: float | None = None  # send the task again after this many seconds
    why: str = ""
    event: dict[str, Any] | None = None  # run.started or run.resumed, stored: to publish
    steps: list[StepRun] = field(default_factory=list)
    # A first claim not written yet (see claim): its open transaction, and its run.started to store.
    held: Connection | None = None
    started: events.Item | None = None


def row_update(model: type[Run] | type[StepRun], columns: tuple[str, ...], key: tuple[str, ...] = ("id",)) -> Any:
    """UPDATE of these columns of the one row a unique key names, built once (compiled once); run it with
    row_values()."""
    table = model.__table__  # type: ignore[union-attr]
    return update(table).where(and_(*(table.c[k] == bindparam(f"key_{k}") for k in key))).values(
        {c: bindparam(f"new_{c}", type_=table.c[c].type) for c in columns})


def row_values(row: Run | StepRun, columns: tuple[str, ...], key: tuple[str, ...] = ("id",)) -> dict[str, Any]:
    return {**{f"key_{k}": getattr(row, k) for k in key}, **{f"new_{c}": getattr(row, c) for c in columns}}


# A claim writes the run's next epoch (claim generation): every later write of the run's progress by this
# worker matches only that epoch (fenced), so once another worker or the reaper took the run over, a worker
# that was cut off (a partition, a long pause) commits nothing more of it. See DbJournal.
CLAIMED = ("status", "worker", "heartbeat_at", "started_at", "deadline_at", "epoch")
_CLAIM = row_update(Run, CLAIMED)
_RUNS, _STEPS = Run.__table__, StepRun.__table__  # type: ignore[attr-defined]
# Core statements built once; the rows become detached Run/StepRun objects the journal writes back.
_READ_RUN = select(_RUNS).where(_RUNS.c.id == bindparam("run_id"))
_LOAD_RUN = _READ_RUN.with_for_update()
_LOAD_STEPS = select(_STEPS).where(_STEPS.c.run_id == bindparam("run_id")).order_by(_STEPS.c.position)

Definition = Callable[[Run], Runbook | None]  # the run's stored definition, parsed; None if it no longer validates


def claim(engine: Engine, settings: Settings, run_id: int, *, definition: Definition) -> Claim:
    """Take the run if it is ours to execute now: queued, or running under a worker that died.

    `definition(run)` gives the runbook the run runs: its concurrency, its timeout and, at the first
    claim, its steps (their rows are still as create_run wrote them, so they are not read back).

    A run's first claim (on PostgreSQL, without a concurrency limit) is held rather than written: it comes
    back with its transaction open, and the journal writes it with take() together with its first results.
    The read takes no lock: take() writes only if the run is still queued and never started, so when a
    redelivery or a cancel got there first nothing is written and nobody saw what was computed.
    """
    conn = open_progress(engine, settings)
    got: Claim | None = None
    try:
        got = _claim(conn, settings, run_id, definition, hold=is_postgres(engine))
        if got.held is None:
            conn.commit()
        return got
    finally:
        if got is None or got.held is None:
            conn.close()


def take(conn: Connection, run: Run, *, also: tuple[str, ...] = ()) -> bool:
    """Write a held first claim (see claim), and these other columns of the run in the same statement;
    False when the run was claimed or ended meanwhile (then nothing is written)."""
    columns = tuple(dict.fromkeys(CLAIMED + also))
    return bool(conn.execute(_take(columns), row_values(run, columns)).rowcount)


@lru_cache
def _take(columns: tuple[str, ...]) -> Any:
    # Only if the run is still as the claim read it: queued, never started.
    return row_update(Run, columns).where(_RUNS.c.status == RunStatus.queued, _RUNS.c.started_at.is_(None))


def _claim(conn: Connection, settings: Settings, run_id: int, definition: Definition, *, hold: bool) -> Claim:
    read = _READ_RUN if hold else _LOAD_RUN
    found = conn.execute(read, {"run_id": run_id}).mappings().one_or_none()
    if found is None:
        return Claim(None, why="no such run")
    run = Run(**found)
    runbook = definition(run)  # a run's definition never changes: any read of the row will do for it
    hold = hold and run.status == RunStatus.queued and run.started_at is None and \
        runbook is not None and runbook.concurrency is None
    if not hold and read is _READ_RUN:  # decide under the row's lock: another worker may be claiming it too
        run = Run(**conn.execute(_LOAD_RUN, {"run_id": run_id}).mappings().one())
    concurrency = runbook.concurrency if runbook is not None else None
    timeout = (runbook.timeout if runbook is not None else None) or timedelta(seconds=settings.run_default_timeout)
    status = run.status
    if status.finished or status == RunStatus.waiting_approval:
        return Claim(None, why=f"run is {status}")
    resumed = status == RunStatus.running
    if resumed:
        dead = _owner_is_dead(run.worker)
        fresh = run.heartbeat_at is not None and \
            utcnow() - as_utc(run.heartbeat_at) < timedelta(seconds=settings.run_reap_grace)
        if dead is False:
            return Claim(None, why=f"run is held by live process {run.worker}")
        if dead is None and fresh:  # a late or duplicate message: nothing to do (the reaper resumes lost runs)
            return Claim(None, why=f"run is held by {run.worker}")
    elif concurrency is not None:
        running = conn.execute(select(func.count()).select_from(_RUNS).where(
            _RUNS.c.runbook_id == run.runbook_id, _RUNS.c.status == RunStatus.running)).scalar_one()
        if running >= concurrency:
            return Claim(None, retry_in=1.0, why=f"{running} runs of {run.runbook_id} already running")
    now = utcnow()
    first, previous = run.started_at is None, run.worker
    run.status, run.worker, run.heartbeat_at = RunStatus.running, me(), now
    run.started_at = run.started_at or now
    run.deadline_at = run.deadline_at or as_utc(run.started_at) + timeout
    run.epoch = (run.epoch or 0) + 1
    data: dict[str, Any] = {"worker": run.worker, "previous_worker": None if first else previous}
    if resumed:
        data["reason"] = f"worker {previous} gone: its task was redelivered"
    elif not first and previous is not None and previous in (run.lost_workers or []):  # the reaper re-sent it
        data["reason"] = f"worker {previous} lost"
        data["resumes"] = run.resumes
    started: events.Item = (None, "run.started" if first else "run.resumed", data)
    if first and status == RunStatus.queued and runbook is not None:
        steps = pending_steps(run_id=run_id, runbook=runbook, incident_id=run.incident_id)
    else:
        steps = [StepRun(**row) for row in conn.execute(_LOAD_STEPS, {"run_id": run_id}).mappings()]
    if hold:
        return Claim(run, steps=steps, held=conn, started=started)
    conn.execute(_CLAIM, row_values(run, CLAIMED))
    return Claim(run, event=events.record_many(conn, run_id=run_id, items=[started])[0], steps=steps)


def heartbeat(engine: Engine, run_id: int, epoch: int) -> tuple[bool, bool]:
    """(still ours, cancel requested); a run taken over or ended by the reaper is no longer ours: its epoch
    moved on (fenced in the one UPDATE, no extra round trip)."""
    with session_scope(engine) as session:
        result = session.execute(update(Run).where(col(Run.id) == run_id, col(Run.worker) == me(),
                                                   col(Run.epoch) == epoch, col(Run.status) == RunStatus.running)
                                 .values(heartbeat_at=utcnow()))
        if result.rowcount == 0:  # type: ignore[attr-defined]
            return False, False
        cancel = session.exec(select(Run.cancel_requested_at).where(Run.id == run_id)).one()
        return True, cancel is not None
