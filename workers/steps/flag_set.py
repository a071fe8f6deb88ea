"""flag.set: turn a flag on or off (or change its default variant) in one environment, optionally for a while.

Compensation writes the flag's previous version back, unless someone changed the flag after this step:
undoing the step must not throw away a newer decision.
"""

from __future__ import annotations

from typing import Any

from server.db import session_scope
from server.errors import DomainError, PreconditionFailed
from server.flags import service
from server.flags.cache import announce_change
from server.flags.steps import FlagSetInputs
from server.models_base import as_utc
from workers.steps.base import Step, StepContext, StepFailed, register


@register("flag.set")
class FlagSet(Step[FlagSetInputs]):
    def run(self, inputs: FlagSetInputs, ctx: StepContext) -> dict[str, Any]:
        reason = inputs.reason or f"run {ctx.run_id}, step {ctx.step_id}"
        try:
            with session_scope(ctx.engine) as session:
                version = service.set_flag_state(session, key=inputs.flag, environment=inputs.environment,
                                                 enabled=inputs.enabled, default_variant=inputs.variant,
                                                 duration=inputs.for_, actor=ctx.actor, reason=reason,
                                                 incident_id=ctx.incident_id)
                announce_change(session, ctx.settings, None, key=version.flag_key, version=version.version)
        except DomainError as exc:
            raise StepFailed(exc.message) from None
        serving = service.serving(version.spec).get(inputs.environment, {})
        ctx.emit(f"flag {inputs.flag!r} is at version {version.version} in {inputs.environment}; it "
                 f"{service.describe_serving(version.spec, inputs.environment)}")
        return {"flag": version.flag_key, "environment": inputs.environment, "version": version.version,
                "serving": {k: serving.get(k) for k in ("variant", "value", "reason")},
                "previous_version": version.version - 1,
                "expires_at": as_utc(version.expires_at).isoformat() if version.expires_at else None}

    def compensate(self, inputs: FlagSetInputs, outputs: dict[str, Any], ctx: StepContext) -> None:
        if not outputs.get("version"):
            return  # run() never changed the flag
        try:
            with session_scope(ctx.engine) as session:
                version = service.rollback(session, key=outputs["flag"], to_version=int(outputs["previous_version"]),
                                           if_match=int(outputs["version"]), actor=ctx.actor,
                                           reason=f"rollback of run {ctx.run_id} (step {ctx.step_id})",
                                           incident_id=ctx.incident_id)
                announce_change(session, ctx.settings, None, key=version.flag_key, version=version.version)
        except PreconditionFailed:
            ctx.emit(f"flag {outputs['flag']!r} changed after this step (expired or edited); left as it is")
            return
