"""Findings as the run's views show them: read from each step's outputs (workers/toolkit/findings.py is the
contract) and from the runbook's own `outputs.findings`, checked, ordered worst first.

A step that emitted a "warning" or "error" finding reads as "problem found" wherever a run is shown; its
status, which `if:` expressions and control flow read, is left as it is.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

Severity = Literal["info", "warning", "error"]
RANK = {"error": 0, "warning": 1, "info": 2}
PROBLEM = {"warning", "error"}
MARK = {"error": "✖", "warning": "▲", "info": "•"}


class Finding(BaseModel):
    severity: Severity
    message: str = Field(min_length=1, max_length=300)
    evidence: dict[str, str] | None = None
    step_id: str | None = None  # None: the runbook's own outputs

    @field_validator("message")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return " ".join(value.split())


def of_outputs(outputs: Any, step_id: str | None) -> list[Finding]:
    """The well-formed findings in a step's (or run's) outputs; a malformed one becomes a note saying so."""
    raw = outputs.get("findings") if isinstance(outputs, dict) else None
    if not isinstance(raw, list):
        return []
    found = []
    for item in raw[:50]:
        try:
            found.append(Finding.model_validate({**item, "step_id": step_id} if isinstance(item, dict) else item))
        except ValidationError as exc:
            found.append(Finding(severity="info", step_id=step_id,
                                 message=f"a finding could not be read: {exc.errors()[0]['msg']}"[:300]))
    return found


def problem_found(outputs: Any) -> bool:
    return any(f.severity in PROBLEM for f in of_outputs(outputs, None))


def of_run(run_outputs: Any, steps: list[tuple[str, Any]]) -> list[Finding]:
    """Every finding of a run, worst first, then in step order."""
    found = of_outputs(run_outputs, None)
    for step_id, outputs in steps:
        found += of_outputs(outputs, step_id)
    return sorted(found, key=lambda f: RANK[f.severity])


def evidence_text(finding: Finding | dict[str, Any]) -> str:
    evidence = (finding.evidence if isinstance(finding, Finding) else finding.get("evidence")) or {}
    if "artifact" in evidence:
        return f"artifact {evidence['artifact']}"
    if "output" in evidence:
        return f"output {evidence['output']}"
    return ""


def line(finding: Finding | dict[str, Any]) -> str:
    """`✖ leaking: pid 12 RSS grows +147.7 MiB/min (… ) [artifact leaking.1.rss.svg]`, one per finding."""
    data = finding.model_dump() if isinstance(finding, Finding) else finding
    where = f"{data['step_id']}: " if data.get("step_id") else ""
    evidence = evidence_text(finding)
    return f"{MARK.get(data['severity'], '•')} {where}{data['message']}" + (f" [{evidence}]" if evidence else "")
