"""Runs as the API shows them: secrets stay masked, durations computed, steps in order."""

from __future__ import annotations

from server import tracing
from server.runs import artifacts, findings
from server.runs.models import Run, RunPublic, RunSummary, StepRun, StepRunPublic
from server.runs.service import duration_s
from server.settings import Settings


def summary(run: Run) -> RunSummary:
    assert run.id is not None
    return RunSummary(id=run.id, runbook=run.runbook_id, status=run.status, actor=run.actor,
                      incident_id=run.incident_id, dry_run=run.dry_run, created_at=run.created_at,
                      started_at=run.started_at, finished_at=run.finished_at,
                      duration_s=duration_s(run.started_at, run.finished_at), error=run.error)


def step_public(step: StepRun) -> StepRunPublic:
    return StepRunPublic(step_id=step.step_id, position=step.position, uses=step.uses, phase=step.phase,
                         status=step.status, attempts=step.attempts, started_at=step.started_at,
                         finished_at=step.finished_at,
                         duration_s=duration_s(step.started_at, step.finished_at) if step.finished_at else None,
                         outputs=step.outputs, error=step.error, approval=step.approval,
                         approval_by=step.approval_by, approval_reason=step.approval_reason,
                         compensated=step.compensated,
                         findings=[f.model_dump() for f in findings.of_outputs(step.outputs, step.step_id)],
                         problem_found=findings.problem_found(step.outputs))


def public(run: Run, steps: list[StepRun], settings: Settings, artifact_list: list[artifacts.ArtifactInfo]
           ) -> RunPublic:
    return RunPublic(**summary(run).model_dump(), runbook_hash=run.runbook_hash, params=run.params,
                     rerun_of=run.rerun_of, deadline_at=run.deadline_at, heartbeat_at=run.heartbeat_at,
                     worker=run.worker, cancel_requested_at=run.cancel_requested_at, outputs=run.outputs,
                     steps=[step_public(s) for s in steps],
                     url=f"{settings.effective_public_url}/api/v1/runs/{run.id}",
                     trace_id=tracing.trace_id_of(run.traceparent),
                     findings=[f.model_dump() for f in findings.of_run(run.outputs,
                                                                       [(s.step_id, s.outputs) for s in steps])],
                     artifacts=[a.model_dump() for a in artifact_list],
                     resumes=run.resumes, lost_workers=run.lost_workers or [])
