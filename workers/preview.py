"""What a step will do, before it does it: its rendered inputs (secrets masked) and one line a person checks
before approving, the argv of a shell step or the method and URL of an HTTP request. The engine puts this in
the waiting step's outputs and its step.waiting_approval event, and in each step of a dry run."""

from __future__ import annotations

import shlex
from typing import Any

from server.redaction import redact
from server.runbooks import expressions

APPROVAL_KEY = "awaiting_approval"  # the waiting step's outputs until it runs (its real outputs replace them)


def action_line(uses: str, inputs: Any) -> str | None:
    """`argv: systemctl restart checkout.service`, `POST https://…`: the one thing an approver must read."""
    if not isinstance(inputs, dict):
        return None
    if uses == "shell":
        argv = inputs.get("argv")
        if argv is None and isinstance(inputs.get("command"), str):
            try:
                argv = shlex.split(inputs["command"])
            except ValueError:
                return f"command: {inputs['command']}"
        if isinstance(argv, list):
            return "argv: " + shlex.join(str(a) for a in argv)
    if uses in ("http.request", "notify"):
        return f"{inputs.get('method', 'POST' if uses == 'notify' else 'GET')} {inputs.get('url')}"
    if uses == "http.replay":
        return f"replay {inputs.get('capture')} against {inputs.get('base_url')}"
    if uses == "flag.set":
        enabled = inputs.get("enabled")
        state = ("on" if enabled else "off") if isinstance(enabled, bool) else f"variant {inputs.get('variant')}"
        return f"flag {inputs.get('flag')} {state} in {inputs.get('environment', 'production')}" + (
            f" for {inputs['for']}" if inputs.get("for") else "")
    return None


def preview(uses: str, with_: Any, context: dict[str, Any], scrub: Any) -> dict[str, Any]:
    """{"inputs": rendered and masked, "action": one line or None}; an input that cannot be rendered yet
    (it reads a step that has not run) is shown unrendered, with why."""
    try:
        inputs = scrub(redact(expressions.render(with_, context)))
        note = None
    except expressions.ExpressionError as exc:
        inputs, note = scrub(redact(with_)), f"not rendered yet: {exc}"
    shown: dict[str, Any] = {"uses": uses, "inputs": inputs, "action": action_line(uses, inputs)}
    if note:
        shown["note"] = note
    return shown


def reads_steps(condition: Any) -> bool:
    """Whether an if: depends on earlier steps' results (so a dry run cannot decide it)."""
    return isinstance(condition, str) and "steps." in condition
