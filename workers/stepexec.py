"""One step's attempts: render inputs, run the kind in a thread we can stop waiting for (an instant kind
on the engine's own), retry, time out."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from server.auth.models import Actor, Role, Source
from server.models_base import as_utc, utcnow
from server.runbooks import expressions
from server.runbooks.catalog import CATALOG
from server.runbooks.schema import StepSpec
from server.runs.models import StepRun, StepStatus
from workers.artifacts import StepArtifacts, cap_outputs
from workers.steps.base import REGISTRY, StepContext, StepFailed, StepInterrupted, StepTimedOut, load_step_kinds

if TYPE_CHECKING:
    from workers.engine import Execution

log = logging.getLogger("runbookd.engine")
MAX_LIVE_LINES = 2000  # output lines one step may publish live; all of it is still in its outputs
STOP_GRACE_S = 2.0  # how long a cancelled step gets to clean up (kill its process group) before we move on

Outcome = tuple[StepStatus, dict[str, Any] | None, str | None]


def _run_deadline(ex: Execution) -> float | None:
    if ex.run.deadline_at is None:
        return None
    return time.monotonic() + (as_utc(ex.run.deadline_at) - utcnow()).total_seconds()


def _render_inputs(ex: Execution, spec: StepSpec) -> Any:
    raw = expressions.render(spec.with_, ex.context())
    return CATALOG[spec.uses].inputs.model_validate(raw)


def _finish_outputs(ex: Execution, spec: StepSpec, row: StepRun, outputs: Any) -> dict[str, Any]:
    """The attempt's outputs as stored: its scratch files and any output over the cap stored as artifacts in
    the database (workers/artifacts.py), secrets masked."""
    if not isinstance(outputs, dict):
        outputs = {"value": outputs}
    assert ex.settings.artifacts_dir is not None
    store = StepArtifacts(ex.engine, ex.settings.artifacts_dir, ex.run_id, spec.id, row.attempts,
                          ex.settings.artifacts_max_run_bytes, scrub=ex.scrub if ex.secrets else None,
                          fence=ex.journal.fenced)
    outputs = store.collect(outputs)
    return cap_outputs(ex.scrub(outputs), step_id=spec.id, attempt=row.attempts, cap=ex.settings.step_output_cap,
                       put=store.put)


def _attempt(ex: Execution, spec: StepSpec, row: StepRun) -> Outcome:
    try:
        inputs = _render_inputs(ex, spec)
    except expressions.ExpressionError as exc:
        return StepStatus.failed, None, f"inputs: {exc}"
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return StepStatus.failed, None, f"inputs after rendering: {problems}"
    deadline = _run_deadline(ex)
    if spec.timeout is not None:
        own = time.monotonic() + spec.timeout.total_seconds()
        deadline = own if deadline is None else min(deadline, own)
    ctx = step_context(ex, spec, row, deadline)
    implementation = (REGISTRY.get(spec.uses) or load_step_kinds()[spec.uses])()
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["outputs"] = implementation.run(inputs, ctx)
        except BaseException as exc:  # handed to the engine's thread, which decides what it means
            result["error"] = exc

    if CATALOG[spec.uses].instant:
        target()
        thread = None
    else:
        thread = threading.Thread(target=target, name=f"step-{ex.run_id}-{spec.id}", daemon=True)
        thread.start()
    step_timed_out = False
    while thread is not None:
        thread.join(0.05)
        if not thread.is_alive():
            break
        ex.journal.step_running(row)
        try:
            ex.watch()
        except BaseException:
            ctx.cancelled.set()
            thread.join(STOP_GRACE_S)
            raise
        if deadline is not None and time.monotonic() >= deadline:
            step_timed_out = True
            ctx.cancelled.set()
            thread.join(STOP_GRACE_S)
            break
    error = result.get("error")
    if step_timed_out or isinstance(error, StepTimedOut):
        ex.watch()  # when it was the whole run's deadline, this raises and the run ends timed_out
        limit = spec.timeout.total_seconds() if spec.timeout else None
        return StepStatus.timed_out, None, f"timed out after {limit:g}s" if limit else "timed out"
    if isinstance(error, StepInterrupted):
        ex.next_heartbeat = ex.next_cancel_check = 0.0
        ex.watch()
        return StepStatus.cancelled, None, "cancelled"
    if isinstance(error, StepFailed):
        kept = _finish_outputs(ex, spec, row, error.outputs) if error.outputs else None
        return StepStatus.failed, kept, error.message
    if isinstance(error, expressions.ExpressionError):
        return StepStatus.failed, None, str(error)
    if error is not None:
        log.error("step raised", exc_info=error, extra={"run_id": ex.run_id, "step_id": spec.id})
        return StepStatus.failed, None, f"{spec.uses} raised {type(error).__name__}: {error}"
    return StepStatus.succeeded, _finish_outputs(ex, spec, row, result.get("outputs") or {}), None


def step_context(ex: Execution, spec: StepSpec, row: StepRun, deadline: float | None) -> StepContext:
    live = {"lines": 0}

    def emit(line: str) -> None:
        live["lines"] += 1
        if live["lines"] <= MAX_LIVE_LINES:
            ex.journal.line({"id": None, "run_id": ex.run_id, "ts": utcnow().isoformat(), "type": "step.output",
                             "step_id": spec.id, "data": {"line": ex.scrub(line)}})

    def evaluate(expression: str, extra: dict[str, Any] | None = None) -> Any:
        return expressions.evaluate(expressions.whole_expression(expression) or expression,
                                    {**ex.context(), **(extra or {})})

    actor = Actor(name=ex.run.actor, role=Role.operator, source=Source.system)
    return StepContext(run_id=ex.run_id, step_id=spec.id, attempt=row.attempts, actor=actor,
                       incident_id=ex.run.incident_id, settings=ex.settings, engine=ex.engine, deadline=deadline,
                       cancelled=threading.Event(), emit=emit, evaluate=evaluate, redact=ex.scrub)


def _pause(ex: Execution, seconds: float) -> None:
    """Back off between attempts, still heartbeating and still cancellable."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        ex.watch()
        time.sleep(min(0.05, max(0.0, until - time.monotonic())))


def run_step(ex: Execution, spec: StepSpec, row: StepRun) -> Outcome:
    """Every attempt the retry policy allows; a resumed run counts the attempts made before the crash."""
    backoff = spec.retry.backoff.total_seconds()
    while True:
        row.attempts += 1
        row.status, row.started_at, row.error = StepStatus.running, row.started_at or utcnow(), None
        # Stored (and published) when the step outlives one poll, or with its result: a crash inside that
        # window just means the resumed attempt is counted as the first.
        ex.journal.step_started(row, ("step.started", {"attempt": row.attempts, "uses": spec.uses,
                                                       "phase": spec.phase, "title": spec.title}))
        status, outputs, error = _attempt(ex, spec, row)
        if status in (StepStatus.succeeded, StepStatus.cancelled) or row.attempts >= spec.retry.attempts:
            return status, outputs, error
        ex.save(row, event=("step.retrying", {"attempt": row.attempts, "error": ex.scrub(error)}))
        _pause(ex, backoff * 2 ** (row.attempts - 1))


def roll_back(ex: Execution) -> None:
    """on_failure: rollback: undo finished steps, newest first, for kinds that know how."""
    for spec in reversed(ex.runbook.steps):
        row = ex.rows[spec.id]
        if row.status != StepStatus.succeeded or not CATALOG[spec.uses].compensates:
            continue
        implementation = (REGISTRY.get(spec.uses) or load_step_kinds()[spec.uses])()
        try:
            implementation.compensate(_render_inputs(ex, spec), row.outputs or {},
                                      step_context(ex, spec, row, time.monotonic() + 60))
            row.compensated = "done"
            ex.save(row, event=("step.compensated", {"ok": True}))
        except Exception as exc:
            log.error("compensation failed", exc_info=exc, extra={"run_id": ex.run_id, "step_id": spec.id})
            row.compensated = "failed"
            ex.save(row, event=("step.compensated", {"ok": False, "error": ex.scrub(f"{type(exc).__name__}: {exc}")}))
