from __future__ import annotations

from typing import Any

from server.runbooks.kinds import AssertInputs
from workers.steps.base import Step, StepContext, StepFailed, register
from workers.toolkit.findings import finding


@register("assert")
class Assert(Step[AssertInputs]):
    def run(self, inputs: AssertInputs, ctx: StepContext) -> dict[str, Any]:
        value = ctx.evaluate(inputs.that) if isinstance(inputs.that, str) else inputs.that
        # Only a real true passes: a non-empty string or a number is a mistake in the runbook, not a yes.
        if value is not True:
            detail = inputs.message or f"assertion failed: {inputs.that}"
            if not isinstance(value, bool):
                detail += f" (it gave {value!r}, a {type(value).__name__}, not true/false)"
            raise StepFailed(detail, {"value": value if isinstance(value, bool | int | float | str) else repr(value)})
        if inputs.finding:
            return {"value": True, "findings": [finding("error", inputs.finding, output="value")]}
        return {"value": True}
