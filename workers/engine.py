"""The interpreter: executes a run's steps in order; what it persists and announces goes through the run's
journal (workers/journal.py).

A run is one Celery task that takes its id. It resumes at the first unfinished step, so a redelivered
task (its worker was killed) never repeats a finished step. A step with `on:` another queue hands the
run over to a worker of that queue; a step needing approval parks the run until someone decides.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import redis
from sqlalchemy import Engine

from server import logmask, tracing
from server.db import unreachable
from server.models_base import as_utc, utcnow
from server.redaction import MASK
from server.runbooks import expressions
from server.runbooks.catalog import CATALOG
from server.runbooks.schema import Runbook, StepSpec
from server.runbooks.validation import Checked, check_text
from server.runs.models import FINISHED_STEP, Run, RunStatus, StepRun, StepStatus
from server.runs.service import send_run
from server.settings import Settings
from workers import preview
from workers.artifacts import discard_scratch, to_json
from workers.journal import DEFER_WINDOW_S, TAKEN_OVER, Claimed, DbJournal, Definition, Journal, RunLost
from workers.stepexec import roll_back, run_step
from workers.steps.base import StepFailed, StepInterrupted, load_step_kinds

log = logging.getLogger("runbookd.engine")
CANCEL_POLL_S = 0.2


class RunAborted(Exception):
    """The run must stop: cancelled or timed out (its status says which); the engine ends it so."""

    def __init__(self, status: RunStatus, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Execution:
    """One run being executed: its definition, its journal and what the engine tracks between steps."""

    settings: Settings
    engine: Engine  # handed to steps that change runbookd's own state (StepContext.engine)
    journal: Journal
    runbook: Runbook
    queue: str
    params: dict[str, Any] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    rows: dict[str, StepRun] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    next_heartbeat: float = 0.0
    next_cancel_check: float = 0.0

    def __post_init__(self) -> None:
        run = self.journal.run
        self.params = {**run.params, **(run.secrets or {})}
        self.secrets = sorted((str(v) for v in (run.secrets or {}).values() if str(v)), key=len, reverse=True)
        self.rows = {r.step_id: r for r in self.journal.steps}
        self.failed = [sid for sid, r in self.rows.items() if r.status in (StepStatus.failed, StepStatus.timed_out)]

    @property
    def run(self) -> Run:
        return self.journal.run

    @property
    def run_id(self) -> int:
        assert self.run.id is not None
        return self.run.id

    def scrub(self, value: Any) -> Any:
        """Secret param values never reach outputs, errors or live lines, even when a step echoes them."""
        if not self.secrets:
            return value
        if isinstance(value, str):
            for secret in self.secrets:
                value = value.replace(secret, MASK)
            return logmask.mask(value)  # values rendered from a secret (`{{ params.pin|reverse }}`) too
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub(v) for v in value]
        return value

    def context(self) -> dict[str, Any]:
        steps = {sid: {"outputs": row.outputs or {}, "status": row.status, "error": row.error,
                       "attempts": row.attempts} for sid, row in self.rows.items()}
        run = {"id": self.run_id, "actor": self.run.actor, "incident": self.run.incident_id,
               "incident_id": self.run.incident_id, "runbook": self.run.runbook_id}
        return {"params": self.params, "steps": steps, "run": run}

    def save(self, row: StepRun | None = None, *, run: bool = False, event: tuple[str, dict[str, Any]] | None = None,
             defer: bool = False) -> None:
        stored = (row.step_id if row is not None else None, *event) if event is not None else None
        self.journal.save(row, run=run, event=stored, defer=defer)

    def watch(self) -> None:
        """Heartbeat and cancel checks while a step runs; raises RunAborted (or RunLost) when it must stop."""
        self.journal.write_claim()
        now = time.monotonic()
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + self.settings.run_heartbeat_interval
            try:
                ours, cancel = self.journal.heartbeat()
            except Exception as exc:
                if not unreachable(exc):
                    raise
                # The database is restarting: a missed heartbeat is harmless (the reaper's grace is far longer),
                # whereas raising would kill the step in flight. The step's own save waits for the database.
                log.warning("heartbeat skipped: database unreachable", extra={"run_id": self.run_id})
                ours, cancel = True, False
            if not ours:
                raise RunLost
            if cancel:
                raise RunAborted(RunStatus.cancelled, "cancelled")
        if now >= self.next_cancel_check:
            self.next_cancel_check = now + CANCEL_POLL_S
            by = self.journal.cancel_requested_by()
            if by is not None:
                raise RunAborted(RunStatus.cancelled, f"cancelled by {by}")
        if self.run.deadline_at is not None and utcnow() >= as_utc(self.run.deadline_at):
            raise RunAborted(RunStatus.timed_out, "the runbook's timeout passed")


def execute(run_id: int, queue: str, *, settings: Settings, engine: Engine, client: redis.Redis) -> str:
    """Run (or resume) a run as far as this worker can take it; returns what happened, for logs and tests."""
    return execute_with(lambda rid, definition: DbJournal.claim(settings, engine, client, rid, definition=definition),
                        run_id, queue, settings=settings, engine=engine)


def execute_with(claim: Callable[[int, Definition], Claimed], run_id: int, queue: str, *, settings: Settings,
                 engine: Engine) -> str:
    """execute() over any journal: `claim(run_id, definition)` gives a Claimed (DbJournal.claim,
    MemoryJournal.claim)."""
    parsed: list[Checked] = []

    def definition(run: Run) -> Runbook | None:
        # Named after the runbook's id, which is also the default id of a runbook that does not state one.
        parsed.append(_checked(run.definition, f"{run.runbook_id}.yaml"))
        return parsed[0].runbook

    got: Claimed = claim(run_id, definition)
    if got.journal is None:
        if got.retry_in is not None:
            send_run(settings, run_id, queue, countdown=got.retry_in)
        return got.why
    journal = got.journal
    try:
        checked = parsed[0]
        if checked.runbook is None:
            placeholder = Runbook.model_construct(id=journal.run.runbook_id, title="", steps=[])
            _finish(Execution(settings, engine, journal, placeholder, queue), RunStatus.failed,
                    f"the stored definition no longer validates: {checked.errors[0].message}")
            return "invalid definition"
        ex = Execution(settings, engine, journal, checked.runbook, queue)
        with tracing.run_span(ex):
            return _execute(ex)
    except RunLost:  # found by a heartbeat or a held claim's write: nothing of it is ours to write
        log.warning("run lost", extra={"run_id": run_id})
        return RunStatus.failed
    finally:
        journal.release()


def _execute(ex: Execution) -> str:
    """The run's steps in order, from the first unfinished one."""
    try:
        if ex.run.cancel_requested_at is not None:
            raise RunAborted(RunStatus.cancelled, f"cancelled by {ex.run.cancelled_by}")
        for spec in ex.runbook.steps:
            row = ex.rows[spec.id]
            if row.status in FINISHED_STEP:
                continue
            wanted = spec.on or ex.settings.default_queue
            if wanted != ex.queue:
                return _hand_over(ex, wanted)
            if not CATALOG[spec.uses].side_effect_free and not ex.run.dry_run:
                ex.journal.write_claim()  # a redelivered twin must not act outside the run too
            with tracing.step_span(ex, spec, row):
                outcome = _step(ex, spec, row)
            if outcome == "parked":
                return "waiting for approval"
            if outcome == "stop":
                _after_failure(ex)
                return "failed"
        _complete(ex)
    except RunLost:
        raise
    except RunAborted as aborted:
        _abort(ex, aborted)
        return aborted.status
    except Exception as exc:
        # A bug here must not leave the run "running" until the reaper (nor lose the last step's
        # deferred result): end it with the reason.
        log.exception("engine error", extra={"run_id": ex.run_id})
        _finish(ex, RunStatus.failed, f"engine error: {type(exc).__name__}: {exc}")
        return "engine error"
    return ex.run.status


@lru_cache(maxsize=64)
def _checked(text: str, source: str) -> Checked:
    """Runs of one runbook share one parsed definition; the engine never mutates it."""
    return check_text(text, source)


def _hand_over(ex: Execution, queue: str) -> str:
    """The next step runs on another host's queue: requeue the run there and let go of it."""
    ex.run.status, ex.run.queue, ex.run.worker, ex.run.dispatched_at = RunStatus.queued, queue, None, utcnow()
    ex.save(run=True, event=("run.handed_over", {"queue": queue}))
    ex.journal.hand_over(queue)
    return f"handed over to {queue}"


def _step(ex: Execution, spec: StepSpec, row: StepRun) -> str:
    """Run one step to its end; returns 'next', 'stop' (failed, the run must stop) or 'parked'."""
    context = ex.context()
    if ex.run.dry_run and spec.if_ is not None and preview.reads_steps(spec.if_):
        return _dry_run_step(ex, spec, row, context)  # no earlier step ran: show the condition, do not decide it
    if spec.if_ is not None:
        try:
            wanted = spec.if_ if isinstance(spec.if_, bool) else expressions.evaluate(
                expressions.whole_expression(spec.if_) or spec.if_, context)
        except expressions.ExpressionError as exc:
            return _fail(ex, spec, row, StepStatus.failed, f"if: {exc}")
        if not isinstance(wanted, bool):
            return _fail(ex, spec, row, StepStatus.failed,
                         f"if: {spec.if_!r} gave {wanted!r} ({type(wanted).__name__}), not true/false; "
                         "compare explicitly, e.g. `x == 'yes'`")
        if not wanted:
            row.status, row.finished_at = StepStatus.skipped, utcnow()
            ex.save(row, event=("step.finished", {"status": "skipped", "reason": "if: was false"}), defer=True)
            return "next"
    if spec.approval == "required" and not ex.run.dry_run:
        if row.approval is None:
            row.approval = "waiting"
            ex.run.status, ex.run.worker = RunStatus.waiting_approval, None
            shown = to_json(preview.preview(spec.uses, spec.with_, context, ex.scrub))
            row.outputs = {preview.APPROVAL_KEY: shown}  # replaced by the step's own outputs once it runs
            ex.save(row, run=True, event=("step.waiting_approval", {"title": spec.title, **shown}))
            return "parked"
        if row.approval == "rejected":
            return _fail(ex, spec, row, StepStatus.failed,
                         f"rejected by {row.approval_by}: {row.approval_reason or 'no reason given'}")
    if ex.run.dry_run:
        return _dry_run_step(ex, spec, row, context)
    status, outputs, error = run_step(ex, spec, row)
    if status == StepStatus.succeeded:
        row.status, row.outputs, row.error, row.finished_at = status, outputs, None, utcnow()
        ex.save(row, event=("step.finished", {"status": status, "attempts": row.attempts}),
                defer=_deferrable(ex, spec, row))
        return "next"
    return _fail(ex, spec, row, status, error or "failed", outputs)


def _dry_run_step(ex: Execution, spec: StepSpec, row: StepRun, context: dict[str, Any]) -> str:
    """A dry run's step: its rendered inputs and what it would do, including waiting for approval."""
    shown = preview.preview(spec.uses, spec.with_, context, ex.scrub)
    condition = f" if {spec.if_}" if spec.if_ is not None and preview.reads_steps(spec.if_) else ""
    if spec.approval == "required":
        shown["approval"] = f"would wait for approval{condition}"
    elif condition:
        shown["condition"] = f"would run{condition}"
    row.status, row.finished_at = StepStatus.skipped, utcnow()
    row.outputs = to_json({"dry_run": True, **shown})
    ex.save(row, event=("step.finished", {"status": "skipped", "reason": "dry run"}), defer=True)
    return "next"


def _deferrable(ex: Execution, spec: StepSpec, row: StepRun) -> bool:
    """Whether a succeeded step's commit may wait for the next save: the last step's (the run's end
    follows at once), or a quick one's that did nothing outside the run (a crash repeats it unseen)."""
    if spec is ex.runbook.steps[-1]:
        return True
    if not CATALOG[spec.uses].side_effect_free or row.started_at is None or row.finished_at is None:
        return False
    return (as_utc(row.finished_at) - as_utc(row.started_at)).total_seconds() < DEFER_WINDOW_S


def _fail(ex: Execution, spec: StepSpec, row: StepRun, status: StepStatus, error: str,
          outputs: dict[str, Any] | None = None) -> str:
    row.status, row.error, row.finished_at = status, ex.scrub(error), utcnow()
    if outputs is not None:
        row.outputs = outputs
    ex.save(row, event=("step.finished", {"status": status, "error": row.error, "attempts": row.attempts}))
    if spec.continue_on_error:
        return "next"
    ex.failed.append(spec.id)
    return "next" if ex.runbook.on_failure == "continue" else "stop"


def _after_failure(ex: Execution) -> None:
    if ex.runbook.on_failure == "rollback":
        roll_back(ex)
    _finish(ex, RunStatus.failed, f"step {ex.failed[-1]!r} failed: {ex.rows[ex.failed[-1]].error}")


def _abort(ex: Execution, aborted: RunAborted) -> None:
    step_status = StepStatus.timed_out if aborted.status == RunStatus.timed_out else StepStatus.cancelled
    for row in ex.rows.values():
        if row.status in (StepStatus.pending, StepStatus.running):
            row.status, row.finished_at = step_status, utcnow()
            row.error = row.error or aborted.message
            ex.save(row)
    _finish(ex, aborted.status, aborted.message)


def _complete(ex: Execution) -> None:
    if ex.failed:
        _finish(ex, RunStatus.failed, f"{len(ex.failed)} step(s) failed: {', '.join(ex.failed)}")
        return
    if ex.run.dry_run:  # no step ran, so outputs that read them cannot be rendered
        _finish(ex, RunStatus.succeeded, None)
        return
    try:
        ex.run.outputs = ex.scrub(to_json(expressions.render(ex.runbook.outputs, ex.context())))
    except expressions.ExpressionError as exc:
        _finish(ex, RunStatus.failed, f"outputs: {exc}")
        return
    _finish(ex, RunStatus.succeeded, None)


def _finish(ex: Execution, status: RunStatus, error: str | None) -> None:
    ex.run.status, ex.run.error, ex.run.finished_at = status, ex.scrub(error), utcnow()
    ex.run.secrets = None  # secret values live only as long as the run needs them
    ex.save(run=True, event=("run.finished", {"status": status, "error": ex.run.error}))
    ex.journal.ended(status)
    discard_scratch(ex.settings.artifacts_dir, ex.run_id)  # what the run kept is in the database


__all__ = ["CATALOG", "TAKEN_OVER", "Definition", "Execution", "RunAborted", "RunLost", "StepFailed",
           "StepInterrupted", "execute", "execute_with", "load_step_kinds"]
