"""Runs as the API sees them: create (idempotent), list, show, cancel, approve or reject, rerun."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import orjson
import redis
from sqlalchemy import Engine, insert, update
from sqlmodel import Session, col, select

from server import tracing
from server.aftercommit import on_commit
from server.audit import service as audit
from server.auth.models import Actor, Role
from server.db import engine_of
from server.dispatch_queue import RUN_EXECUTE_TASK, send, sender
from server.errors import Conflict, Forbidden, InvalidInput, NotFound
from server.incidents import service as incidents
from server.models_base import as_utc, utcnow
from server.runbooks import params as param_rules
from server.runbooks.schema import Runbook
from server.runbooks.validation import Checked, check_text
from server.runs import events
from server.runs.models import FINISHED_STEP, Run, RunStatus, StepRun, StepStatus
from server.settings import Settings

log = logging.getLogger("runbookd.runs")


def request_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def find_idempotent(session: Session, *, key: str, body_hash: str) -> Run | None:
    """The run an earlier request with this Idempotency-Key made; 409 when its body was different."""
    run = session.exec(select(Run).where(Run.idempotency_key == key)).one_or_none()
    if run is not None and run.request_hash != body_hash:
        raise Conflict("this Idempotency-Key was already used with a different request body; use a new key",
                       details={"run_id": run.id})
    return run


_RUNS, _STEPS = Run.__table__, StepRun.__table__  # type: ignore[attr-defined]
_INSERT_RUN = insert(_RUNS).returning(_RUNS.c.id)
# RETURNING with sort_by_parameter_order makes the steps one multi-row INSERT instead of one per step.
_INSERT_STEPS = insert(_STEPS).returning(_STEPS.c.id, sort_by_parameter_order=True)


def _columns(row: Run | StepRun, *, exclude: str) -> dict[str, Any]:
    return {c.name: getattr(row, c.name) for c in row.__table__.columns if c.name != exclude}  # type: ignore[union-attr]


def create_run(session: Session, *, checked: Checked, given: dict[str, Any], actor: Actor, settings: Settings,
               incident_id: str | None = None, dry_run: bool = False, idempotency_key: str | None = None,
               body_hash: str | None = None, rerun_of: int | None = None) -> tuple[Run, list[StepRun]]:
    """Write a queued Run, its pending steps, an event and the audit record; the caller commits, then dispatches."""
    runbook = checked.runbook
    assert runbook is not None
    incident_id = incidents.resolve_ref(session, ref=incident_id)
    values, problems = param_rules.coerce(runbook, given)
    if problems:
        names = ", ".join(p["field"].removeprefix("params.") for p in problems)
        raise InvalidInput(f"invalid params for runbook {runbook.id!r}: {names}", details=problems)
    secret_names = runbook.secret_params()
    first_queue = runbook.steps[0].on or settings.default_queue
    run = Run(runbook_id=runbook.id, runbook_hash=checked.content_hash, definition=checked.text,
              params=param_rules.mask(secret_names, values),
              secrets={k: v for k, v in values.items() if k in secret_names and v is not None} or None,
              actor=actor.name, incident_id=incident_id, dry_run=dry_run, idempotency_key=idempotency_key,
              request_hash=body_hash, rerun_of=rerun_of, queue=first_queue,
              # Optimistic: the caller sends right after the commit and clears this if the broker is down,
              # which saves a second write per run. Should the api die in between, the relay resends
              # after RUNBOOKD_RUN_RESEND_AFTER.
              dispatched_at=utcnow(), traceparent=tracing.current_traceparent())
    # Core inserts (the ORM's flush cost more than the SQL on this path, see bench/run_dispatch.py): the Run
    # and StepRun objects returned are not attached to the session; they carry what the response shows.
    conn = session.connection()
    run.id = conn.execute(_INSERT_RUN, _columns(run, exclude="id")).scalar_one()
    steps = pending_steps(run_id=run.id, runbook=runbook, incident_id=incident_id)
    ids = conn.execute(_INSERT_STEPS, [_columns(step, exclude="id") for step in steps]).scalars().all()
    for step, step_id in zip(steps, ids, strict=True):
        step.id = step_id
    events.record(session, run_id=run.id, type="run.queued", data={"runbook": runbook.id, "actor": actor.name})
    audit.record(session, actor=actor, action="run.create", target_type="run", target_id=run.id,
                 after={"runbook": runbook.id, "runbook_hash": run.runbook_hash, "params": run.params,
                        "dry_run": dry_run, "rerun_of": rerun_of},
                 incident_id=incident_id)
    return run, steps


def pending_steps(*, run_id: int, runbook: Runbook, incident_id: str | None) -> list[StepRun]:
    """A new run's step rows, all pending, as create_run writes them. A worker's first claim of the run
    builds the same rows instead of reading them back: nothing writes them before that claim."""
    return [StepRun(run_id=run_id, step_id=step.id, position=position, uses=step.uses, phase=step.phase,
                    incident_id=incident_id) for position, step in enumerate(runbook.steps)]


def get_run(session: Session, *, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    return run


def steps_of(session: Session, *, run_id: int) -> list[StepRun]:
    return list(session.exec(select(StepRun).where(StepRun.run_id == run_id).order_by(col(StepRun.position))))


@dataclass
class RunFilter:
    runbook: str | None = None
    status: str | None = None
    actor: str | None = None
    incident_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def list_runs(session: Session, *, filters: RunFilter, before_id: int | None, limit: int) -> list[Run]:
    """Newest first, paged by id."""
    stmt = select(Run)
    if filters.runbook:
        stmt = stmt.where(Run.runbook_id == filters.runbook)
    if filters.status:
        stmt = stmt.where(col(Run.status).in_(filters.status.split(",")))
    if filters.actor:
        stmt = stmt.where(Run.actor == filters.actor)
    if filters.incident_id:
        stmt = stmt.where(Run.incident_id == filters.incident_id)
    if filters.since:
        stmt = stmt.where(col(Run.created_at) >= filters.since)
    if filters.until:
        stmt = stmt.where(col(Run.created_at) < filters.until)
    if before_id is not None:
        stmt = stmt.where(col(Run.id) < before_id)
    return list(session.exec(stmt.order_by(col(Run.id).desc()).limit(limit)))


def _lock(session: Session, run_id: int) -> Run:
    run = session.exec(select(Run).where(Run.id == run_id).with_for_update()).one_or_none()
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    return run


def finish_unstarted(session: Session, *, run: Run, status: RunStatus, error: str | None) -> None:
    """End a run that no worker holds right now (queued or waiting for approval): its steps end too."""
    assert run.id is not None
    step_status = StepStatus.timed_out if status == RunStatus.timed_out else StepStatus.cancelled
    session.execute(update(StepRun).where(col(StepRun.run_id) == run.id,
                                          col(StepRun.status).in_([StepStatus.pending, StepStatus.running]))
                    .values(status=step_status, finished_at=utcnow()))
    run.status, run.finished_at, run.error, run.secrets = status, utcnow(), error, None
    session.add(run)
    events.record(session, run_id=run.id, type="run.finished", data={"status": status, "error": error})


def cancel(session: Session, *, run_id: int, actor: Actor, reason: str | None, settings: Settings,
           client: redis.Redis | None) -> Run:
    """Cancel now when no worker holds the run; else flag it and the worker stops within a moment.

    Whoever cancels (API, console, chat, an alert's resolution), once the caller commits the run's new events
    reach its followers and a worker running it is told to stop (announce_cancel); nothing on a rollback."""
    run = _lock(session, run_id)
    if run.status.finished:
        raise Conflict(f"run {run_id} already finished ({run.status}); nothing to cancel")
    last = events.last_id(session, run_id=run_id)
    before = run.status
    run.cancel_requested_at, run.cancelled_by = utcnow(), actor.name
    if run.status in (RunStatus.queued, RunStatus.waiting_approval):
        finish_unstarted(session, run=run, status=RunStatus.cancelled, error=f"cancelled by {actor.name}")
    else:
        session.add(run)
        events.record(session, run_id=run_id, type="run.cancel_requested", data={"by": actor.name})
    audit.record(session, actor=actor, action="run.cancel", target_type="run", target_id=run_id,
                 before={"status": before}, after={"status": run.status}, reason=reason, incident_id=run.incident_id)
    announce_cancel(session, settings, client, run=run, after_id=last, by=actor.name)
    return run


def announce_cancel(session: Session, settings: Settings, client: redis.Redis | None, *, run: Run, after_id: int,
                    by: str) -> None:
    """After the commit: publish the cancel's events (stored after after_id) and, when a worker holds the
    run, set its cancel key, which the worker polls a few times a second (the database flag is the slower
    fallback). Registered with server.aftercommit, so a rollback announces nothing."""
    assert run.id is not None
    if client is not None and run.status == RunStatus.running:
        on_commit(session, partial(_tell_worker, client, events.cancel_key(settings, run.id), by))
    events.publish_on_commit(session, client, settings, run_id=run.id, after_id=after_id)


def _tell_worker(client: redis.Redis, key: str, by: str) -> None:
    with contextlib.suppress(redis.RedisError):
        client.set(key, by, ex=86400)


def decide(session: Session, *, run_id: int, step_id: str, actor: Actor, approve: bool, reason: str | None,
           settings: Settings, client: redis.Redis | None) -> Run:
    """Approve or reject the step a run waits on; the run is queued again and the worker takes it from there.

    The decider needs the operator role; where the step says `by: others` (or the approval_by_others setting
    makes that the default), the run's starter may not approve it: the four-eyes rule. Once the caller
    commits, the decision reaches the run's followers and the run is sent to its queue (nothing on a rollback),
    whoever decided (API, console, chat)."""
    if not actor.role.allows(Role.operator):
        raise Forbidden(f"deciding on an approval needs the operator role; {actor.name} is {actor.role.value}")
    run = _lock(session, run_id)
    step = session.exec(select(StepRun).where(StepRun.run_id == run_id, StepRun.step_id == step_id)).one_or_none()
    if step is None:
        raise NotFound(f"run {run_id} has no step {step_id!r}")
    if run.status != RunStatus.waiting_approval or step.approval != "waiting":
        waiting = session.exec(select(StepRun.step_id).where(StepRun.run_id == run_id,
                                                            StepRun.approval == "waiting")).first()
        hint = f"; it waits on step {waiting!r}" if waiting else ""
        raise Conflict(f"step {step_id!r} of run {run_id} is not waiting for approval (run is {run.status}){hint}")
    if not approve and not reason:
        raise InvalidInput("a rejection needs a reason", details=[{"field": "reason", "message": "required"}])
    if approve and actor.name == run.actor and _approvers(run, step_id, settings.approval_by_others) == "others":
        raise Forbidden(f"step {step_id!r} needs a second person's approval: {actor.name} started run {run_id} "
                        "and may reject it but not approve it")
    last = events.last_id(session, run_id=run_id)
    verdict = "approved" if approve else "rejected"
    step.approval, step.approval_by, step.approval_reason = verdict, actor.name, reason
    run.status = RunStatus.queued
    run.dispatched_at = utcnow()  # optimistic, as in create_run; send_after_commit clears it if the send fails
    session.add_all([step, run])
    events.record(session, run_id=run_id, type=f"step.{verdict}", step_id=step_id,
                  data={"by": actor.name, "reason": reason})
    audit.record(session, actor=actor, action=f"run.step.{'approve' if approve else 'reject'}", target_type="run",
                 target_id=run_id, before={"step": step_id, "approval": "waiting"},
                 after={"step": step_id, "approval": verdict}, reason=reason, incident_id=run.incident_id)
    events.publish_on_commit(session, client, settings, run_id=run_id, after_id=last)
    send_after_commit(session, settings, run_id=run_id, queue=run.queue)
    return run


def send_after_commit(session: Session, settings: Settings, *, run_id: int, queue: str) -> None:
    """Send a queued run (noted as sent in this transaction) to the broker once the session commits; when the
    broker refuses, clear the note in a session of its own, so beat's relay sends it soon. Every caller that
    queues a run (API, console, chat, an approval) sends it this way; nothing is sent on a rollback."""
    on_commit(session, partial(_send, engine_of(session), settings, run_id, queue))


def _send(engine: Engine, settings: Settings, run_id: int, queue: str) -> None:
    if not send_run(settings, run_id, queue):
        with Session(engine) as session:
            mark_undispatched(session, run_id=run_id)
            session.commit()


def send_run(settings: Settings, run_id: int, queue: str, *, countdown: float | None = None) -> bool:
    """Send the run's task; False (logged) when the broker is unreachable: the relay sends it later."""
    try:
        if countdown is None:
            send(RUN_EXECUTE_TASK, run_id, queue, settings=settings, queue=queue)
        else:  # server.dispatch_queue.send passes keywords to the task, so a delay goes through the sender itself
            sender(settings).send_task(RUN_EXECUTE_TASK, args=(run_id, queue), queue=queue, countdown=countdown)
    except Exception as exc:  # kombu raises OperationalError, redis its own: either way, the relay retries
        log.warning("run not enqueued; the relay will send it", extra={"run_id": run_id, "error": str(exc)})
        return False
    return True


def _approvers(run: Run, step_id: str, others_by_default: bool) -> str | None:
    """Who may approve the step, read from the definition the run is executing."""
    checked = check_text(run.definition, f"{run.runbook_id}.yaml")
    if checked.runbook is None:
        return "others"  # cannot tell: the stricter rule
    spec = next((s for s in checked.runbook.steps if s.id == step_id), None)
    return spec.approvers(others_by_default=others_by_default) if spec else "others"


def rerun(session: Session, *, run_id: int, actor: Actor, overrides: dict[str, Any], settings: Settings) -> Run:
    """A new run of the same definition (the text that ran, not today's file) with the same params."""
    old = get_run(session, run_id=run_id)
    checked = check_text(old.definition, f"{old.runbook_id}.yaml")
    if checked.runbook is None:
        raise Conflict(f"run {run_id}'s runbook no longer validates: {checked.errors[0]}")
    given = {k: v for k, v in old.params.items() if k not in checked.runbook.secret_params()}
    given.update(overrides)
    run, _steps = create_run(session, checked=checked, given=given, actor=actor, settings=settings,
                             incident_id=old.incident_id, dry_run=old.dry_run, rerun_of=run_id)
    return run


def mark_undispatched(session: Session, *, run_id: int) -> None:
    """The broker refused the task: leave the run for the relay."""
    session.execute(update(Run).where(col(Run.id) == run_id, col(Run.status) == RunStatus.queued)
                    .values(dispatched_at=None))


def mark_dispatched(session: Session, *, run_id: int) -> None:
    session.execute(update(Run).where(col(Run.id) == run_id, col(Run.status) == RunStatus.queued)
                    .values(dispatched_at=utcnow()))


def duration_s(start: datetime | None, end: datetime | None) -> float | None:
    if start is None:
        return None
    return round((as_utc(end or utcnow()) - as_utc(start)).total_seconds(), 3)


def stale_before(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=seconds)


def unfinished_steps(steps: list[StepRun]) -> list[StepRun]:
    return [s for s in steps if s.status not in FINISHED_STEP]
