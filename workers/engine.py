"""The interpreter: executes a run's steps in order, committing each step's result as it finishes.

A run is one Celery task that takes its id. It resumes at the first unfinished step, so a redelivered
task (its worker was killed) never repeats a finished step. A step with `on:` another queue hands the
run over to a worker of that queue; a step needing approval parks the run until someone decides.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import redis
from sqlalchemy import Connection, Engine

from server.db import session_scope
from server.models_base import as_utc, utcnow
from server.redaction import MASK
from server.runbooks import expressions
from server.runbooks.catalog import CATALOG
from server.runbooks.schema import Runbook, StepSpec
from server.runbooks.validation import Checked, check_text
from server.runs import events
from server.runs.models import FINISHED_STEP, Run, RunStatus, StepRun, StepStatus
from server.runs.service import mark_undispatched
from server.runs.sweeps import send_run
from server.settings import Settings
from workers import claims
from workers.artifacts import to_json
from workers.stepexec import roll_back, run_step
from workers.steps.base import StepFailed, StepInterrupted, load_step_kinds

log = logging.getLogger("runbookd.engine")
CANCEL_POLL_S = 0.2
TAKEN_OVER = "the run was taken over or ended by another worker, the reaper or a cancel"
DEFER_WINDOW_S = 0.1  # the longest a finished step's result waits in memory for the next commit (Execution.save)
# What the engine changes on its rows; save() writes these columns and no others.
STEP_PROGRESS = ("status", "attempts", "started_at", "finished_at", "outputs", "error", "approval", "compensated")
RUN_PROGRESS = ("status", "queue", "worker", "dispatched_at", "finished_at", "error", "secrets", "outputs")
# Steps by (run, step id): a run's first claim builds its pending rows without reading their ids back.
STEP_KEY = ("run_id", "step_id")
SAVE_STEP, SAVE_RUN = claims.row_update(StepRun, STEP_PROGRESS, STEP_KEY), claims.row_update(Run, RUN_PROGRESS)


Entry = events.Item | dict[str, Any]  # an event to store, or an output line (a message) to publish in its place


class RunAborted(Exception):
    """The run must stop: cancelled or timed out (its status says which); the engine ends it so."""

    def __init__(self, status: RunStatus, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class RunLost(Exception):
    """The run is no longer ours (taken over or ended by another worker, the reaper or a cancel): nothing
    of it is ours to write, the engine lets go of it."""

    def __init__(self) -> None:
        super().__init__(TAKEN_OVER)


@dataclass
class Execution:
    settings: Settings
    engine: Engine
    redis: redis.Redis
    run: Run
    runbook: Runbook
    queue: str
    params: dict[str, Any] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    rows: dict[str, StepRun] = field(default_factory=dict)
    next_heartbeat: float = 0.0
    next_cancel_check: float = 0.0
    failed: list[str] = field(default_factory=list)
    # A step's start, announced but not stored yet, and the output lines it printed meanwhile (see line()).
    unsaved: list[Entry] = field(default_factory=list)
    deferred_rows: list[StepRun] = field(default_factory=list)  # finished, committed with the next save
    deferred_events: list[Entry] = field(default_factory=list)
    deferred_since: float = 0.0
    unpublished: list[dict[str, Any]] = field(default_factory=list)  # stored, to go out with the next publish
    # Held while publishing and while touching `unsaved`: a step's thread prints lines (line()) meanwhile.
    unpublished_lock: threading.Lock = field(default_factory=threading.Lock)
    held: Connection | None = None  # a first claim not written yet (claims.claim): written with the next save

    @property
    def run_id(self) -> int:
        assert self.run.id is not None
        return self.run.id

    # -- helpers ---------------------------------------------------------------------------------
    def scrub(self, value: Any) -> Any:
        """Secret param values never reach outputs, errors or live lines, even when a step echoes them."""
        if not self.secrets:
            return value
        if isinstance(value, str):
            for secret in self.secrets:
                value = value.replace(secret, MASK)
            return value
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

    def publish(self, messages: list[dict[str, Any]]) -> None:
        """Publish these after any stored event still waiting to go out (the claim's run.started)."""
        with self.unpublished_lock:
            self._publish(messages)

    def _publish(self, messages: list[dict[str, Any]]) -> None:  # under unpublished_lock: one at a time, in order
        messages, self.unpublished = [*self.unpublished, *messages], []
        events.publish(self.redis, self.settings, self.run_id, messages)

    def line(self, message: dict[str, Any]) -> None:
        """A step's output line, live only (not stored). While the step's start is not stored yet (see
        announce), the line waits behind it and goes out in order with the step's next save: followers
        never see a line before its step.started, and a quick step's lines cost no publish of their own."""
        with self.unpublished_lock:
            if self.unsaved:
                self.unsaved.append(message)
            else:
                self._publish([message])

    def save(self, row: StepRun | None = None, run: bool = False, event: tuple[str, dict[str, Any]] | None = None,
             *, defer: bool = False) -> None:
        """Commit a step row (and/or the run row) with its events in one transaction, then publish them.

        The row's events not stored yet (a quick step's step.started, see announce) are stored first.
        `defer` keeps a finished step's result for the next save's transaction, for at most DEFER_WINDOW_S:
        the engine does so for the last step (the next save is the run's end) and for quick steps whose
        kind is side-effect free (see _deferrable), so a runbook of quick steps commits once at its end
        instead of once per step. A worker that dies in between runs those steps again on redelivery, as
        if it had died just before their commit; nobody saw them finish, since events go out after commits.
        Core statements rather than the ORM's unit of work: this runs several times per run, and the
        flush machinery cost more than the SQL.
        """
        taken: list[Entry] = []
        if row is not None:
            with self.unpublished_lock:  # left in place until published: lines printed meanwhile queue behind
                taken = list(self.unsaved)
        entries = [*taken, *([(row.step_id if row is not None else None, *event)] if event is not None else [])]
        now = time.monotonic()
        waiting = self.deferred_rows or self.deferred_events
        if defer and row is not None and (not waiting or now - self.deferred_since < DEFER_WINDOW_S):
            if not waiting:
                self.deferred_since = now
            with self.unpublished_lock:  # the step has ended: nothing prints after `taken`
                self.unsaved = []
            self.deferred_rows.append(row)
            self.deferred_events += entries
            return
        rows, self.deferred_rows = [*self.deferred_rows, *([row] if row is not None else [])], []
        entries, self.deferred_events = [*self.deferred_events, *entries], []
        items = [e for e in entries if isinstance(e, tuple)]
        stored: list[dict[str, Any]] = []
        with self._transaction(run=run) as conn:
            if rows:
                conn.execute(SAVE_STEP, [claims.row_values(r, STEP_PROGRESS, STEP_KEY) for r in rows])
            if items:
                stored = events.record_many(conn, run_id=self.run_id, items=items)
        in_order = iter(stored)  # stored events replace their items; lines stay where they were printed
        messages = [next(in_order) if isinstance(e, tuple) else e for e in entries]
        with self.unpublished_lock:
            late, self.unsaved = [e for e in self.unsaved[len(taken):] if isinstance(e, dict)], []  # lines only
            self._publish([*messages, *late])

    @contextlib.contextmanager
    def _transaction(self, *, run: bool) -> Iterator[Connection]:
        """A save's transaction, the run's row written first when `run`: a new one, or the held first
        claim's, the claim written first, with the run's row in the same statement (see claims.claim)."""
        held, self.held = self.held, None
        if held is None:
            with claims.progress_connection(self.engine, self.settings) as conn:
                if run:
                    conn.execute(SAVE_RUN, claims.row_values(self.run, RUN_PROGRESS))
                yield conn
            return
        with held:  # closing it without the commit rolls back
            if not claims.take(held, self.run, also=RUN_PROGRESS if run else ()):
                self.deferred_rows, self.deferred_events = [], []
                raise RunLost
            yield held
            held.commit()

    def write_claim(self) -> None:
        """Write a held first claim now: before a step that acts outside the run, or a heartbeat."""
        if self.held is not None:
            self.save()

    def release(self) -> None:
        """Let go of a held claim that was never written (the run ended before any save): rolled back."""
        if self.held is not None:
            self.held.close()
            self.held = None

    def announce(self, row: StepRun, event: tuple[str, dict[str, Any]]) -> None:
        """Note an event (a step's start) to store with the row's next save: at the step's end when it is
        quick, or at the first poll while it runs (flush_announced). Followers see it once stored."""
        with self.unpublished_lock:
            self.unsaved.append((row.step_id, *event))

    def flush_announced(self, row: StepRun) -> None:
        """A step that takes a while gets its running status and step.started stored (and published) at once."""
        if self.unsaved:
            self.save(row)

    def watch(self) -> None:
        """Heartbeat and cancel checks while a step runs; raises RunAborted when the run must stop."""
        self.write_claim()  # the heartbeat asks whether the run is ours
        now = time.monotonic()
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + self.settings.run_heartbeat_interval
            ours, cancel = claims.heartbeat(self.engine, self.run_id)
            if not ours:
                raise RunLost
            if cancel:
                raise RunAborted(RunStatus.cancelled, "cancelled")
        if now >= self.next_cancel_check:
            self.next_cancel_check = now + CANCEL_POLL_S
            try:
                by = self.redis.get(events.cancel_key(self.settings, self.run_id))
            except redis.RedisError:
                by = None
            if by is not None:
                who = by.decode(errors="replace") if isinstance(by, bytes) else str(by)
                raise RunAborted(RunStatus.cancelled, f"cancelled by {who}")
        if self.run.deadline_at is not None and utcnow() >= as_utc(self.run.deadline_at):
            raise RunAborted(RunStatus.timed_out, "the runbook's timeout passed")


def execute(run_id: int, queue: str, *, settings: Settings, engine: Engine, client: redis.Redis) -> str:
    """Run (or resume) a run as far as this worker can take it; returns what happened, for logs and tests."""
    parsed: list[Checked] = []

    def definition(run: Run) -> Runbook | None:
        # Named after the runbook's id, which is also the default id of a runbook that does not state one.
        parsed.append(_checked(run.definition, f"{run.runbook_id}.yaml"))
        return parsed[0].runbook

    got = claims.claim(engine, settings, run_id, definition=definition)
    if got.run is None:
        if got.retry_in is not None:
            send_run(settings, run_id, queue, countdown=got.retry_in)
        return got.why
    run = got.run
    checked = parsed[0]
    if checked.runbook is None:
        placeholder = Runbook.model_construct(id=run.runbook_id, title="", steps=[])
        _finish(Execution(settings, engine, client, run, placeholder, queue), RunStatus.failed,
                f"the stored definition no longer validates: {checked.errors[0].message}")
        return "invalid definition"
    ex = Execution(settings, engine, client, run, checked.runbook, queue, held=got.held)
    try:
        return _execute(ex, got)
    except RunLost:  # found by a heartbeat or a held claim's write
        log.warning("run lost", extra={"run_id": run_id})
        return RunStatus.failed.value
    finally:
        ex.release()


def _execute(ex: Execution, got: claims.Claim) -> str:
    run, settings, queue = ex.run, ex.settings, ex.queue
    if got.started:  # a held claim: run.started is stored with the first save, the claim's own write
        ex.deferred_events.append(got.started)
        ex.deferred_since = time.monotonic()
    if got.event:  # run.started goes out with the first step's events (within a poll), one publish less
        ex.unpublished.append(got.event)
    ex.params = {**run.params, **(run.secrets or {})}
    ex.secrets = sorted((str(v) for v in (run.secrets or {}).values() if str(v)), key=len, reverse=True)
    ex.rows = {r.step_id: r for r in got.steps}
    ex.failed = [sid for sid, r in ex.rows.items() if r.status in (StepStatus.failed, StepStatus.timed_out)]
    try:
        if run.cancel_requested_at is not None:
            raise RunAborted(RunStatus.cancelled, f"cancelled by {run.cancelled_by}")
        for spec in ex.runbook.steps:
            row = ex.rows[spec.id]
            if row.status in FINISHED_STEP:
                continue
            wanted = spec.on or settings.default_queue
            if wanted != queue:
                return _hand_over(ex, wanted)
            if not CATALOG[spec.uses].side_effect_free and not ex.run.dry_run:
                ex.write_claim()  # a redelivered twin must not act outside the run too
            outcome = _step(ex, spec, row)
            if outcome == "parked":
                return "waiting for approval"
            if outcome == "stop":
                _after_failure(ex)
                return "failed"
        _complete(ex)
    except RunLost:
        raise  # nothing of it is ours to write: execute() lets go of the run
    except RunAborted as aborted:
        _abort(ex, aborted)
        return aborted.status.value
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
    ex.run.status, ex.run.queue, ex.run.worker, ex.run.dispatched_at = RunStatus.queued.value, queue, None, utcnow()
    ex.save(run=True, event=("run.handed_over", {"queue": queue}))
    if not send_run(ex.settings, ex.run_id, queue):
        with session_scope(ex.engine) as session:
            mark_undispatched(session, run_id=ex.run_id)
    return f"handed over to {queue}"


def _step(ex: Execution, spec: StepSpec, row: StepRun) -> str:
    """Run one step to its end; returns 'next', 'stop' (failed, the run must stop) or 'parked'."""
    context = ex.context()
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
            row.status, row.finished_at = StepStatus.skipped.value, utcnow()
            ex.save(row, event=("step.finished", {"status": "skipped", "reason": "if: was false"}), defer=True)
            return "next"
    if spec.approval == "required" and not ex.run.dry_run:
        if row.approval is None:
            row.approval = "waiting"
            ex.run.status, ex.run.worker = RunStatus.waiting_approval.value, None
            ex.save(row, run=True, event=("step.waiting_approval", {"title": spec.title}))
            return "parked"
        if row.approval == "rejected":
            return _fail(ex, spec, row, StepStatus.failed,
                         f"rejected by {row.approval_by}: {row.approval_reason or 'no reason given'}")
    if ex.run.dry_run:
        try:
            preview = ex.scrub(expressions.render(spec.with_, context))
        except expressions.ExpressionError as exc:
            preview = {"unrendered": spec.with_, "note": str(exc)}
        row.status, row.finished_at = StepStatus.skipped.value, utcnow()
        row.outputs = to_json({"dry_run": True, "uses": spec.uses, "inputs": preview})
        ex.save(row, event=("step.finished", {"status": "skipped", "reason": "dry run"}), defer=True)
        return "next"
    status, outputs, error = run_step(ex, spec, row)
    if status == StepStatus.succeeded:
        row.status, row.outputs, row.error, row.finished_at = status.value, outputs, None, utcnow()
        ex.save(row, event=("step.finished", {"status": status.value, "attempts": row.attempts}),
                defer=_deferrable(ex, spec, row))
        return "next"
    return _fail(ex, spec, row, status, error or "failed", outputs)


def _deferrable(ex: Execution, spec: StepSpec, row: StepRun) -> bool:
    """Whether a succeeded step's commit may wait for the next save (see Execution.save): the last step's
    (the run's end follows at once), or a quick one's that did nothing outside the run."""
    if spec is ex.runbook.steps[-1]:
        return True
    if not CATALOG[spec.uses].side_effect_free or row.started_at is None or row.finished_at is None:
        return False
    return (as_utc(row.finished_at) - as_utc(row.started_at)).total_seconds() < DEFER_WINDOW_S


def _fail(ex: Execution, spec: StepSpec, row: StepRun, status: StepStatus, error: str,
          outputs: dict[str, Any] | None = None) -> str:
    row.status, row.error, row.finished_at = status.value, ex.scrub(error), utcnow()
    if outputs is not None:
        row.outputs = outputs
    ex.save(row, event=("step.finished", {"status": status.value, "error": row.error, "attempts": row.attempts}))
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
            row.status, row.finished_at = step_status.value, utcnow()
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
    ex.run.status, ex.run.error, ex.run.finished_at = status.value, ex.scrub(error), utcnow()
    ex.run.secrets = None  # secret values live only as long as the run needs them
    ex.save(run=True, event=("run.finished", {"status": status.value, "error": ex.run.error}))
    if status == RunStatus.cancelled:  # the cancel request's key; any other expires by itself within a day
        with contextlib.suppress(redis.RedisError):
            ex.redis.delete(events.cancel_key(ex.settings, ex.run_id))


__all__ = ["CATALOG", "Execution", "RunAborted", "StepFailed", "StepInterrupted", "execute", "load_step_kinds"]
