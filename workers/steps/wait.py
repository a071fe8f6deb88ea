from __future__ import annotations

import time
from typing import Any

import httpx

from server.runbooks.kinds import WaitInputs
from workers.steps.base import Step, StepContext, StepFailed, register
from workers.steps.http_request import send


@register("wait")
class Wait(Step[WaitInputs]):
    def run(self, inputs: WaitInputs, ctx: StepContext) -> dict[str, Any]:
        started = time.monotonic()
        if inputs.duration is not None:
            ctx.sleep(inputs.duration.total_seconds())
            return {"waited_s": round(time.monotonic() - started, 3), "polls": 0}
        assert inputs.until is not None
        give_up = started + inputs.deadline.total_seconds()
        polls = 0
        while True:
            polls += 1
            probe: dict[str, Any] | None = None
            if inputs.url:
                try:
                    probe = send("GET", inputs.url, timeout=ctx.remaining(10.0) or 10.0)
                except httpx.HTTPError as exc:
                    probe = {"status": None, "error": f"{type(exc).__name__}: {exc}", "json": None, "body": ""}
            value = ctx.evaluate(inputs.until, {"probe": probe})
            if value is True:
                return {"waited_s": round(time.monotonic() - started, 3), "polls": polls}
            if value is not False:
                raise StepFailed(f"until: {inputs.until!r} gave {value!r}, not true/false")
            if time.monotonic() + inputs.interval.total_seconds() > give_up:
                raise StepFailed(f"{inputs.until!r} still false after {polls} polls "
                                 f"({inputs.deadline.total_seconds():g}s deadline)")
            ctx.sleep(inputs.interval.total_seconds())
