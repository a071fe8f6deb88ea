"""Chat messages: compact run summaries, approval buttons, and the reply envelope both platforms accept."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from server.redaction import redact
from server.runs import findings

MAX_TEXT = 2800      # Slack truncates section text at 3,000 characters
MAX_OUTPUT = 300     # per key output, before the "see the run" link
STATUS_ICON = {"succeeded": ":white_check_mark:", "failed": ":x:", "cancelled": ":no_entry_sign:",
               "timed_out": ":hourglass:", "skipped": ":fast_forward:", "running": ":arrows_counterclockwise:",
               "waiting_approval": ":raised_hand:", "queued": ":inbox_tray:", "pending": ":white_circle:"}

FINDING_ICON = {"error": ":red_circle:", "warning": ":warning:", "info": ":information_source:"}


@dataclass
class Reply:
    text: str
    public: bool = False             # in_channel, else only the caller sees it
    blocks: list[dict[str, Any]] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"response_type": "in_channel" if self.public else "ephemeral",
                                "text": self.text[:MAX_TEXT]}
        if self.blocks:
            body["blocks"] = self.blocks
        return body


def _clip(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_OUTPUT else text[:MAX_OUTPUT] + "… (truncated)"


def run_summary(run: Any, steps: list[Any], url: str) -> str:
    """Status, each step with its phase and result, key outputs, duration, and the run's URL."""
    duration = ""
    if run.started_at and run.finished_at:
        duration = f" in {(run.finished_at - run.started_at).total_seconds():.1f}s"
    lines = [f"{STATUS_ICON.get(run.status, '')} Run #{run.id} `{run.runbook_id}` {run.status}{duration}"
             f" (by {run.actor}{', ' + run.incident_id if run.incident_id else ''})"]
    found = findings.of_run(redact(run.outputs), [(s.step_id, redact(s.outputs)) for s in steps])
    if found:  # what the run found leads: the step list is the how
        lines.append("*Findings:*")
        lines += [f"{FINDING_ICON[f.severity]} {_clip(findings.line(f)[2:])}" for f in found[:8]]
        lines.append("*Steps:*")
    for step in steps:
        phase = f"[{step.phase}] " if step.phase else ""
        error = f": {_clip(step.error)}" if step.error else ""
        status = f"{STATUS_ICON.get(step.status, '')} {step.status}"
        if findings.problem_found(step.outputs):
            status = f":mag: problem found ({step.status})"
        lines.append(f"• {phase}`{step.step_id}` {status}{error}")
        for name, value in list(redact(step.outputs or {}).items())[:4]:
            if name not in ("body", "stdout", "stderr", "headers", "findings", "files"):
                lines.append(f"    {name} = {_clip(value)}")
    lines.append(f"<{url}|Full run, outputs and artifacts>")
    text = "\n".join(lines)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 80] + f"\n… truncated: see <{url}|the run>"


def approval_details(outputs: Any) -> str:
    """What the waiting step will do, as the engine rendered it (secrets masked): the action line, then inputs."""
    shown = (outputs or {}).get("awaiting_approval") if isinstance(outputs, dict) else None
    if not isinstance(shown, dict):
        return ""
    text = f"\nIt will run `{shown.get('uses')}`"
    if shown.get("action"):
        text += f": `{_clip(shown['action'])}`"
    inputs = redact(shown.get("inputs"))
    if inputs:
        text += "\n```" + _clip(json.dumps(inputs, default=str, indent=1)) + "```"
    return text


def approval_blocks(run_id: int, step_id: str, text: str) -> list[dict[str, Any]]:
    value = f"{run_id}:{step_id}"
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "actions", "block_id": f"approval-{run_id}-{step_id}", "elements": [
            {"type": "button", "style": "primary", "action_id": "approve", "value": value,
             "text": {"type": "plain_text", "text": "Approve"}},
            {"type": "button", "style": "danger", "action_id": "reject", "value": value,
             "text": {"type": "plain_text", "text": "Reject"}},
        ]},
    ]
