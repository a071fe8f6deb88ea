from __future__ import annotations

from typing import Any

import httpx

from server.runbooks.kinds import NotifyInputs
from workers.steps.base import Step, StepContext, StepFailed, register
from workers.toolkit import netguard


@register("notify")
class Notify(Step[NotifyInputs]):
    def run(self, inputs: NotifyInputs, ctx: StepContext) -> dict[str, Any]:
        # {"text": ...} is what both Slack and Mattermost incoming webhooks accept.
        payload: dict[str, Any] = {"text": inputs.text}
        if inputs.channel:
            payload["channel"] = inputs.channel
        if inputs.username:
            payload["username"] = inputs.username
        timeout = ctx.remaining(inputs.timeout.total_seconds()) or inputs.timeout.total_seconds()
        try:
            with httpx.Client(transport=netguard.transport()) as client:
                response = client.post(inputs.url, json=payload, timeout=timeout)
        except httpx.HTTPError as exc:
            raise StepFailed(f"webhook unreachable: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 300:
            raise StepFailed(f"webhook answered {response.status_code}: {response.text[:200]}",
                             {"status": response.status_code})
        return {"status": response.status_code}
