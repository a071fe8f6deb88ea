"""loglevel.raise: raise one logger of one service for a while; compensation ends the override early."""

from __future__ import annotations

from typing import Any

from server.db import session_scope
from server.errors import DomainError
from server.loglevels import service
from server.loglevels.steps import LogLevelRaiseInputs
from server.loglevels.sync import announce
from workers.steps.base import Step, StepContext, StepFailed, register


@register("loglevel.raise")
class LogLevelRaise(Step[LogLevelRaiseInputs]):
    def run(self, inputs: LogLevelRaiseInputs, ctx: StepContext) -> dict[str, Any]:
        reason = inputs.reason or f"run {ctx.run_id}, step {ctx.step_id}"
        try:
            with session_scope(ctx.engine) as session:
                row = service.raise_level(session, service=inputs.service, logger=inputs.logger,
                                          level=inputs.level, duration=inputs.for_, actor=ctx.actor, reason=reason,
                                          incident_id=ctx.incident_id,
                                          max_duration=ctx.settings.loglevel_max_duration)
                announce(session, None, ctx.settings, {row.service})
        except DomainError as exc:
            raise StepFailed(exc.message) from None
        return {"override_id": row.id, "service": row.service, "logger": row.logger, "level": row.level,
                "expires_at": row.expires_at.isoformat() if row.expires_at else None}

    def compensate(self, inputs: LogLevelRaiseInputs, outputs: dict[str, Any], ctx: StepContext) -> None:
        override_id = outputs.get("override_id")
        if override_id is None:
            return  # run() never got as far as creating it
        with session_scope(ctx.engine) as session:
            row = service.end_override(session, override_id=int(override_id), actor=ctx.actor,
                                       reason=f"rollback of run {ctx.run_id} (step {ctx.step_id})")
            announce(session, None, ctx.settings, {row.service})
