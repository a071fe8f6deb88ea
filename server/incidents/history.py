"""An incident's history: one timeline merged from the audit log, run events and flag versions, and the
post-incident report built on it."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from server.audit.models import AuditEvent
from server.durations import format_duration
from server.flags.models import FlagVersion
from server.incidents.models import Incident, IncidentPublic, TimelineEntry
from server.loglevels.models import LogLevelOverride
from server.models_base import as_utc
from server.redaction import redact
from server.runs.models import Run, RunEvent, StepRun

# Flag versions carry the diff, so their audit twins would only repeat them.
VERSIONED_FLAG_ACTIONS = {"flag.create", "flag.update", "flag.rollback", "flag.delete", "flag.restore", "flag.expire"}
MAX_OUTPUT_CHARS = 200


def _short(value: Any) -> Any:
    text = str(value)
    return value if len(text) <= MAX_OUTPUT_CHARS else text[:MAX_OUTPUT_CHARS] + "…"


def _audit_entries(session: Session, key: str) -> list[TimelineEntry]:
    out = []
    for event in session.exec(select(AuditEvent).where(AuditEvent.incident_id == key).order_by(col(AuditEvent.id))):
        if event.target_type == "flag" and event.action in VERSIONED_FLAG_ACTIONS:
            continue
        kind = event.action.split(".", 1)[0]
        target = f"{event.target_type} {event.target_id}" if event.target_id else event.target_type
        reason = f" ({event.reason})" if event.reason else ""
        out.append(TimelineEntry(ts=event.ts, kind=kind, actor=event.actor, action=event.action, target=target,
                                 summary=f"{event.actor}: {event.action} {target}{reason}",
                                 details={"before": event.before, "after": event.after, "audit_id": event.id}))
    return out


def _flag_entries(session: Session, key: str) -> list[TimelineEntry]:
    out = []
    for version in session.exec(select(FlagVersion).where(FlagVersion.incident_id == key)
                                .order_by(col(FlagVersion.id))):
        until = f", until {as_utc(version.expires_at):%H:%M:%S}" if version.expires_at else ""
        reason = f" ({version.reason})" if version.reason else ""
        out.append(TimelineEntry(
            ts=version.created_at, kind="flag", actor=version.actor, action=version.action,
            target=f"flag {version.flag_key}",
            summary=f"{version.actor}: {version.action} {version.flag_key} -> version {version.version}{until}{reason}",
            details={"version": version.version, "diff": version.diff}))
    return out


def _run_entries(session: Session, key: str) -> list[TimelineEntry]:
    runs = {r.id: r for r in session.exec(select(Run).where(Run.incident_id == key))}
    if not runs:
        return []
    outputs = {(s.run_id, s.step_id): s for s in session.exec(select(StepRun).where(col(StepRun.run_id).in_(runs)))}
    out = []
    for event in session.exec(select(RunEvent).where(col(RunEvent.run_id).in_(runs)).order_by(col(RunEvent.id))):
        if event.type == "run.queued":
            continue  # the audit log's run.create says the same, with who asked
        run = runs[event.run_id]
        data = dict(event.data or {})
        details: dict[str, Any] = {"run_id": run.id, **data}
        step = f" step {event.step_id}" if event.step_id else ""
        if event.type == "step.finished" and event.step_id:
            row = outputs.get((event.run_id, event.step_id))
            if row is not None and row.outputs:
                details["outputs"] = {k: _short(v) for k, v in redact(row.outputs).items()}
            details["phase"] = row.phase if row else None
        status = f": {data['status']}" if "status" in data else ""
        out.append(TimelineEntry(ts=event.ts, kind="step" if event.step_id else "run", actor=run.actor,
                                 action=event.type, target=f"run {run.id}",
                                 summary=f"run {run.id} ({run.runbook_id}){step} {event.type}{status}",
                                 details=details))
    return out


def timeline(session: Session, *, incident: Incident) -> list[TimelineEntry]:
    """Everything done under the incident, oldest first: who did what, what runs found, what changed."""
    entries = _audit_entries(session, incident.key) + _flag_entries(session, incident.key)
    entries += _run_entries(session, incident.key)
    return sorted(entries, key=lambda e: as_utc(e.ts))


def _since(start: Any, end: Any) -> str | None:
    return format_duration(as_utc(end) - as_utc(start)) if start and end else None


def report(session: Session, *, incident: Incident) -> dict[str, Any]:
    """The post-incident report as data: summary, times, timeline, runs and findings, changes and their fate."""
    key = incident.key
    runs = []
    for run in session.exec(select(Run).where(Run.incident_id == key).order_by(col(Run.id))):
        steps = session.exec(select(StepRun).where(StepRun.run_id == run.id).order_by(col(StepRun.position))).all()
        runs.append({"id": run.id, "runbook": run.runbook_id, "status": run.status, "actor": run.actor,
                     "error": run.error,
                     "steps": [{"id": s.step_id, "phase": s.phase, "status": s.status, "error": s.error,
                                "outputs": {k: _short(v) for k, v in redact(s.outputs or {}).items()}}
                               for s in steps]})
    flags: dict[str, dict[str, Any]] = {}
    for version in session.exec(select(FlagVersion).where(FlagVersion.incident_id == key)
                                .order_by(col(FlagVersion.id))):
        entry = flags.setdefault(version.flag_key, {"flag": version.flag_key, "versions": []})
        entry["versions"].append({"version": version.version, "action": version.action, "actor": version.actor,
                                  "reason": version.reason})
    from server.incidents.rollback import plan_flags  # the same rule the rollback uses decides "reverted"

    for item in plan_flags(session, key=key):
        if item.flag in flags:
            flags[item.flag]["reverted"] = item.outcome in ("already_restored",)
            flags[item.flag]["state"] = item.outcome
    overrides = [{"id": o.id, "service": o.service, "logger": o.logger, "level": o.level, "by": o.created_by,
                  "ended": o.ended_at is not None, "end_reason": o.end_reason}
                 for o in session.exec(select(LogLevelOverride).where(LogLevelOverride.incident_id == key))]
    public = IncidentPublic.of(incident)
    return {
        "incident": public.model_dump(mode="json"),
        "time_to_mitigate": _since(incident.opened_at, incident.mitigated_at),
        "time_to_resolve": _since(incident.opened_at, incident.resolved_at),
        "runs": runs,
        "flag_changes": list(flags.values()),
        "loglevel_overrides": overrides,
        "timeline": [e.model_dump(mode="json") for e in timeline(session, incident=incident)],
    }


def report_markdown(data: dict[str, Any]) -> str:
    inc = data["incident"]
    lines = [f"# {inc['id']}: {inc['title']}", "",
             f"- Severity: {inc['severity']}; status: {inc['status']}; commander: {inc['commander']}",
             f"- Opened {inc['opened_at']} by {inc['opened_by']}",
             f"- Time to mitigate: {data['time_to_mitigate'] or 'not mitigated'}; "
             f"time to resolve: {data['time_to_resolve'] or 'not resolved'}"]
    if inc.get("summary"):
        lines += ["", "## Summary", "", inc["summary"]]
    lines += ["", "## Runbooks run", ""]
    for run in data["runs"] or [{"id": None}]:
        if run["id"] is None:
            lines.append("None.")
            continue
        lines.append(f"- Run {run['id']} `{run['runbook']}` by {run['actor']}: **{run['status']}**")
        for step in run["steps"]:
            found = ", ".join(f"{k}={v}" for k, v in list(step["outputs"].items())[:4])
            lines.append(f"  - {step['phase'] or '-'} `{step['id']}` {step['status']}"
                         + (f": {found}" if found else "") + (f" (error: {step['error']})" if step["error"] else ""))
    lines += ["", "## Changes made", ""]
    for flag in data["flag_changes"]:
        versions = ", ".join(f"v{v['version']} {v['action']} by {v['actor']}" for v in flag["versions"])
        lines.append(f"- Flag `{flag['flag']}`: {versions}; now: {flag.get('state', 'unknown').replace('_', ' ')}")
    for o in data["loglevel_overrides"]:
        state = f"ended ({o['end_reason']})" if o["ended"] else "still in effect"
        lines.append(f"- Log level {o['service']} `{o['logger']}` {o['level']} by {o['by']}: {state}")
    if not data["flag_changes"] and not data["loglevel_overrides"]:
        lines.append("None.")
    lines += ["", "## Timeline", "", "| time (UTC) | who | what |", "|---|---|---|"]
    for entry in data["timeline"]:
        lines.append(f"| {entry['ts'][:19].replace('T', ' ')} | {entry['actor'] or ''} | "
                     f"{entry['summary'].replace('|', '/')} |")
    return "\n".join(lines) + "\n"
