"""Beat's sweeps over runs: the relay (queued runs never sent) and the reaper (runs whose worker vanished:
resumed elsewhere, or failed)."""

from __future__ import annotations

import logging
from datetime import timedelta

import redis
from sqlalchemy import Engine, or_
from sqlmodel import Session, col, select

from server.audit import service as audit
from server.auth.models import Actor
from server.db import session_scope
from server.models_base import as_utc, utcnow
from server.runbooks.validation import check_text
from server.runs import events
from server.runs.models import Run, RunStatus, StepRun, StepStatus
from server.runs.service import finish_unstarted, mark_dispatched, mark_undispatched, send_run
from server.settings import Settings

log = logging.getLogger("runbookd.runs")
RELAY_MIN_AGE_S = 2.0  # leave the api a moment to send what it just committed


def dispatch(engine: Engine, settings: Settings, run_id: int, queue: str) -> bool:
    """Send the run's task and note that it was sent (the relay's send of a run nobody sent)."""
    if not send_run(settings, run_id, queue):
        return False
    with session_scope(engine) as session:
        mark_dispatched(session, run_id=run_id)
    return True


def relay(engine: Engine, settings: Settings, *, limit: int = 500, min_age_s: float = RELAY_MIN_AGE_S) -> int:
    """Send queued runs that were never sent (or whose message seems lost); returns how many were sent."""
    now = utcnow()
    with session_scope(engine) as session:
        rows = session.exec(
            select(Run.id, Run.queue).where(
                Run.status == RunStatus.queued,
                or_(col(Run.dispatched_at).is_(None),
                    col(Run.dispatched_at) < now - timedelta(seconds=settings.run_resend_after)),
                col(Run.created_at) < now - timedelta(seconds=min_age_s),
            ).order_by(col(Run.id)).limit(limit)).all()
    sent = 0
    for run_id, queue in rows:
        assert run_id is not None
        if not dispatch(engine, settings, run_id, queue):
            break  # the broker is still down; the next sweep tries again
        sent += 1
    if sent:
        log.info("relayed queued runs", extra={"count": sent})
    return sent


def reap(engine: Engine, settings: Settings, client: redis.Redis | None = None) -> int:
    """Running runs without a heartbeat for the grace period: resumed on another worker (re-sent to their
    queue, at most RUNBOOKD_MAX_RESUMES times, unless the runbook says `on_worker_lost: fail`) or failed
    naming every worker lost; runs past their deadline time out. Returns how many runs were resumed or ended.

    Either way the run's epoch moves on (fencing, see workers/claims.py): a worker that was only cut off and
    comes back commits nothing more of it."""
    now = utcnow()
    stale = now - timedelta(seconds=settings.run_reap_grace)
    ended = 0
    with session_scope(engine) as session:
        candidates = session.exec(select(Run).where(
            or_(
                (col(Run.status) == RunStatus.running) & (col(Run.heartbeat_at) < stale),
                (col(Run.status).in_([RunStatus.waiting_approval, RunStatus.running]))
                & (col(Run.deadline_at) < now - timedelta(seconds=settings.run_heartbeat_interval * 2)),
            )).with_for_update()).all()
        touched: list[int] = []
        resumed: list[tuple[int, str]] = []
        for run in candidates:
            assert run.id is not None
            before = run.status
            if run.deadline_at is not None and as_utc(run.deadline_at) < now:
                status, why = RunStatus.timed_out, "the runbook's timeout passed"
            else:
                lost = run.worker or "unknown"
                last = as_utc(run.heartbeat_at).isoformat() if run.heartbeat_at else "never"
                why = f"worker {lost} lost: no heartbeat since {last} (grace {settings.run_reap_grace:g}s)"
                refused = _no_resume(run, settings)
                if refused is None:
                    _resume(session, run, lost=lost, why=why, settings=settings)
                    touched.append(run.id)
                    resumed.append((run.id, run.queue))
                    ended += 1
                    continue
                status, why = RunStatus.failed, f"{why}; {refused}"
            run.epoch = (run.epoch or 0) + 1  # the lost worker, should it come back, writes nothing more
            for step in session.exec(select(StepRun).where(StepRun.run_id == run.id,
                                                           StepRun.status == StepStatus.running)):
                step.status = StepStatus.timed_out if status == RunStatus.timed_out else StepStatus.failed
                step.error, step.finished_at = why, now
                session.add(step)
            finish_unstarted(session, run=run, status=status, error=why)
            audit.record(session, actor=Actor.system(), action="run.reap", target_type="run", target_id=run.id,
                         before={"status": before}, after={"status": status}, reason=why,
                         incident_id=run.incident_id)
            touched.append(run.id)
            ended += 1
    for run_id, queue in resumed:
        if not send_run(settings, run_id, queue):  # the relay sends it once the broker is back
            with session_scope(engine) as session:
                mark_undispatched(session, run_id=run_id)
    for run_id in touched:
        with session_scope(engine) as session:
            latest = events.history(session, run_id=run_id)[-1:]
        events.publish(client, settings, run_id, [events.as_message(e) for e in latest])
    if ended:
        log.warning("reaped runs", extra={"count": ended, "resumed": len(resumed)})
    return ended


def _no_resume(run: Run, settings: Settings) -> str | None:
    """Why a run whose worker was lost must fail rather than resume; None when it may resume."""
    checked = check_text(run.definition, f"{run.runbook_id}.yaml")
    if checked.runbook is None:
        return "the run was not resumed: its stored definition no longer validates"
    if checked.runbook.on_worker_lost == "fail":
        return "the run was not resumed: the runbook says on_worker_lost: fail"
    if (run.resumes or 0) >= settings.max_resumes:
        workers = ", ".join([*(run.lost_workers or []), run.worker or "unknown"])
        return (f"the run was not resumed again: resumed {run.resumes or 0} time(s) already "
                f"(RUNBOOKD_MAX_RESUMES={settings.max_resumes}); workers lost: {workers}")
    return None


def _resume(session: Session, run: Run, *, lost: str, why: str, settings: Settings) -> None:
    """Queue the run again for another worker, which continues it at its first unfinished step (the step
    the lost worker was running runs again). The caller sends it after the commit."""
    assert run.id is not None
    before = {"status": run.status, "worker": lost, "epoch": run.epoch}
    run.resumes = (run.resumes or 0) + 1
    run.lost_workers = [*(run.lost_workers or []), lost]
    run.epoch = (run.epoch or 0) + 1
    # Queued again, already dispatched (the send follows the commit; mark_undispatched if it fails, so the
    # relay does not send it twice). The worker stays, as the one the next claim takes the run over from.
    run.status, run.dispatched_at = RunStatus.queued, utcnow()
    session.add(run)
    reason = f"{why}; resumed on another worker ({run.resumes} of at most {settings.max_resumes})"
    events.record(session, run_id=run.id, type="run.worker_lost",
                  data={"worker": lost, "reason": reason, "resumes": run.resumes, "max_resumes": settings.max_resumes})
    audit.record(session, actor=Actor.system(), action="run.resume", target_type="run", target_id=run.id,
                 before=before, after={"status": run.status, "epoch": run.epoch, "resumes": run.resumes},
                 reason=reason, incident_id=run.incident_id)
