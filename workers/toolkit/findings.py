"""Findings: what a diagnostic step concluded, in the step contract.

A step's outputs may carry `findings`: a list of {severity, message, evidence}. severity is one of
SEVERITIES (a "warning" or "error" finding means the check confirmed a problem: the run's views say
"problem found" for that step while its status, which if: and control flow read, stays what it is);
message is one line; evidence points at what backs it: {"artifact": NAME} (a file of the run) or
{"output": FIELD} (a field of the step's outputs). server/runs/findings.py reads them back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SEVERITIES = ("info", "warning", "error")
MESSAGE_CHARS = 300


def finding(severity: str, message: str, *, artifact: Path | str | None = None,
            output: str | None = None) -> dict[str, Any]:
    """One finding; `artifact` is a file from workers.toolkit.artifacts.artifact() (or its name)."""
    assert severity in SEVERITIES, severity
    line = " ".join(str(message).split())
    if len(line) > MESSAGE_CHARS:
        line = line[:MESSAGE_CHARS - 1] + "…"
    evidence: dict[str, str] = {}
    if artifact is not None:
        evidence["artifact"] = artifact.name if isinstance(artifact, Path) else str(artifact)
    if output is not None:
        evidence["output"] = output
    return {"severity": severity, "message": line, "evidence": evidence or None}
