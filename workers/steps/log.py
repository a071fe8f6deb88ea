from __future__ import annotations

import logging
from typing import Any

from server.runbooks.kinds import LogInputs
from workers.steps.base import Step, StepContext, register

log = logging.getLogger("runbookd.runbook")


@register("log")
class Log(Step[LogInputs]):
    def run(self, inputs: LogInputs, ctx: StepContext) -> dict[str, Any]:
        ctx.emit(inputs.message)
        log.log(logging.getLevelName(inputs.level.upper()), ctx.redact(inputs.message),
                extra={"run_id": ctx.run_id, "step_id": ctx.step_id})
        return {"message": inputs.message}
