"""An incident's history: one timeline merged from the audit log, run events and flag versions, and the
post-incident report built on it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlmodel import Session, col, select

from server.audit.models import AuditEvent
from server.durations import format_duration
from server.flags.models import FlagVersion
from server.incidents.models import Incident, IncidentPublic, TimelineEntry
from server.incidents.rollback import flag_outcome_words, plan_flags  # its rule decides "reverted"
from server.loglevels.models import LogLevelOverride, service_label
from server.models_base import as_utc, utc_words
from server.redaction import redact
from server.runs import findings
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
        details = {"before": event.before, "after": event.after, "audit_id": event.id, "reason": event.reason}
        change = loglevel_change(event.action, details, event.actor)
        why = change["why"] if change else event.reason
        reason = f" ({why})" if why else ""
        summary = loglevel_words(change) if change else f"{event.action} {target}"
        out.append(TimelineEntry(ts=event.ts, kind=kind, actor=event.actor, action=event.action, target=target,
                                 summary=f"{summary}{reason}", details=details))
    return out


LOGLEVEL_VERBS = {"loglevel.raise": "Log level set", "loglevel.end": "Log level override ended",
                  "loglevel.expire": "Log level override expired"}


def loglevel_change(action: str, details: Any, actor: str | None) -> dict[str, Any] | None:
    """A log-level audit event in words: what happened, service, logger, level, until, who, why (None for other
    events). The console's incident timeline lists these fields; the timeline's summary (and so the report and
    `incident show`) says them in one sentence, loglevel_words."""
    if not action.startswith("loglevel.") or not isinstance(details, dict):
        return None
    after = details.get("after") or {}
    before = details.get("before") or {}
    shown = after or before
    raised = action == "loglevel.raise"
    return {
        "verb": LOGLEVEL_VERBS.get(action, action), "raised": raised,
        "service": shown.get("service"), "logger": shown.get("logger"), "level": shown.get("level"),
        "until": shown.get("expires_at") if raised else None,
        "ended": shown.get("ended_at") if not raised else None,
        "previous": (before.get("level") if raised and before else None),
        "who": actor,
        "why": details.get("reason") or (after.get("reason") if raised else None),
    }


def loglevel_words(change: dict[str, Any]) -> str:
    """A loglevel_change as one sentence, with the console's words: "Log level set: service checkout, logger
    payments.db, level DEBUG (was INFO), until 2026-01-31 12:30:00 UTC"."""
    text = (f"{change['verb']}: service {service_label(change['service'])}, logger {change['logger']}, "
            f"level {change['level']}")
    if change["previous"]:
        text += f" (was {change['previous']})"
    if change["until"]:
        text += f", until {utc_words(change['until'])}"
    elif change["raised"]:
        text += ", until someone ends it"
    if change["ended"]:
        text += f", ended {utc_words(change['ended'])}"
    return text


def _flag_entries(session: Session, key: str) -> list[TimelineEntry]:
    out = []
    for version in session.exec(select(FlagVersion).where(FlagVersion.incident_id == key)
                                .order_by(col(FlagVersion.id))):
        reason = f" ({version.reason})" if version.reason else ""
        out.append(TimelineEntry(
            ts=version.created_at, kind="flag", actor=version.actor, action=version.action,
            target=f"flag {version.flag_key}",
            summary=f"{flag_change_words(version)} (version {version.version}){reason}",
            details={"version": version.version, "diff": version.diff}))
    return out


def flag_change_words(version: FlagVersion) -> str:
    """A flag version as a person says it: "killed flag X in production for 30m", not "flag.update"."""
    key = version.flag_key
    span = ""
    if version.expires_at is not None:
        # `for 30m` was asked; the expiry was computed a moment before the version's timestamp.
        seconds = round((as_utc(version.expires_at) - as_utc(version.created_at)).total_seconds())
        span = f" for {format_duration(timedelta(seconds=seconds))}"
    if version.action == "flag.update":
        toggles = [(op["path"].split("/")[2], op["value"]) for op in version.diff or []
                   if op.get("op") in ("replace", "add") and str(op.get("path", "")).endswith("/enabled")
                   and str(op.get("path", "")).startswith("/environments/")]
        if len(toggles) == 1:
            env, enabled = toggles[0]
            return f"{'turned on' if enabled else 'killed'} flag {key} in {env}{span}"
        return f"changed flag {key}{span}"
    words = {"flag.create": f"created flag {key}{span}", "flag.delete": f"deleted flag {key}",
             "flag.restore": f"restored flag {key}", "flag.expire": f"flag {key} reverted by itself (its "
             "temporary change ended)", "flag.rollback": f"rolled back flag {key}{span}"}
    return words.get(version.action, f"{version.action} {key}")


def _run_entries(session: Session, key: str) -> list[TimelineEntry]:
    """One row per run start and end, and one per step with its result (its start and end folded)."""
    runs = {r.id: r for r in session.exec(select(Run).where(Run.incident_id == key))}
    if not runs:
        return []
    rows = {(s.run_id, s.step_id): s for s in session.exec(select(StepRun).where(col(StepRun.run_id).in_(runs)))}
    out = []
    folded: dict[tuple[int, str], TimelineEntry] = {}
    for event in session.exec(select(RunEvent).where(col(RunEvent.run_id).in_(runs)).order_by(col(RunEvent.id))):
        if event.type == "run.queued" or event.type == "step.output":
            continue  # the audit log's run.create says the same, with who asked; output lines are in the run
        run = runs[event.run_id]
        assert run.id is not None
        data = dict(event.data or {})
        if event.step_id:
            row = rows.get((event.run_id, event.step_id))
            entry = folded.get((run.id, event.step_id))
            if entry is None:
                entry = folded[(run.id, event.step_id)] = TimelineEntry(
                    ts=event.ts, kind="step", actor=run.actor, action="step", target=f"run {run.id}",
                    summary="", details={"run_id": run.id, "step_id": event.step_id})
                out.append(entry)
            entry.summary = _step_words(run, event.step_id, row, data.get("status") or event.type)
            if row is not None:
                entry.details = {"run_id": run.id, "step_id": event.step_id, "phase": row.phase,
                                 "status": row.status, "findings": [f.model_dump() for f in
                                                                    findings.of_outputs(row.outputs, row.step_id)],
                                 "outputs": {k: _short(v) for k, v in redact(row.outputs or {}).items()
                                             if k not in HIDDEN_OUTPUTS}}
            continue
        summary = f"run {run.id} ({run.runbook_id}) {event.type.removeprefix('run.')}"
        if event.type == "run.finished":
            summary += f": {data.get('status', run.status)}"
            found = findings.of_run(run.outputs, [(s.step_id, s.outputs) for k, s in rows.items() if k[0] == run.id])
            worst = [f for f in found if f.severity in findings.PROBLEM]
            if worst:
                summary += f"; found: {worst[0].message}" + (f" (+{len(worst) - 1} more)" if len(worst) > 1 else "")
        out.append(TimelineEntry(ts=event.ts, kind="run", actor=run.actor, action=event.type, target=f"run {run.id}",
                                 summary=summary, details={"run_id": run.id, **data}))
    return out


HIDDEN_OUTPUTS = {"headers", "body", "stdout", "stderr", "files", "findings", "samples", "threads", "matches",
                  "log", "top_total"}


def _step_words(run: Run, step_id: str, row: StepRun | None, latest: str) -> str:
    status = row.status if row is not None else latest
    text = f"run {run.id} ({run.runbook_id}) step {step_id}: {status}"
    if row is not None and findings.problem_found(row.outputs):
        text = f"run {run.id} ({run.runbook_id}) step {step_id}: problem found ({status})"
        worst = min(findings.of_outputs(row.outputs, step_id), key=lambda f: findings.RANK[f.severity])
        text += f": {worst.message}"
    elif row is not None and row.error:
        text += f": {_short(row.error)}"
    return text


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
        found = findings.of_run(redact(run.outputs), [(s.step_id, redact(s.outputs)) for s in steps])
        runs.append({"id": run.id, "runbook": run.runbook_id, "status": run.status, "actor": run.actor,
                     "error": run.error, "findings": [f.model_dump() for f in found],
                     "steps": [{"id": s.step_id, "phase": s.phase, "status": s.status, "error": s.error,
                                "problem_found": findings.problem_found(s.outputs),
                                "outputs": {k: _short(v) for k, v in redact(s.outputs or {}).items()
                                            if k not in HIDDEN_OUTPUTS and not isinstance(v, dict)}}
                               for s in steps]})
    flags: dict[str, dict[str, Any]] = {}
    for version in session.exec(select(FlagVersion).where(FlagVersion.incident_id == key)
                                .order_by(col(FlagVersion.id))):
        entry = flags.setdefault(version.flag_key, {"flag": version.flag_key, "versions": []})
        entry["versions"].append({"version": version.version, "action": version.action, "actor": version.actor,
                                  "reason": version.reason, "what": flag_change_words(version),
                                  "at": as_utc(version.created_at).isoformat()})

    for item in plan_flags(session, key=key):
        if item.flag in flags:
            flags[item.flag]["reverted"] = item.outcome in ("already_restored",)
            flags[item.flag]["state"] = item.outcome
            flags[item.flag]["now"] = flag_outcome_words(item.outcome, item.target_version)
    overrides = [{"id": o.id, "service": o.service, "logger": o.logger, "level": o.level, "by": o.created_by,
                  "at": as_utc(o.created_at).isoformat(), "reason": o.reason, "ended": o.ended_at is not None,
                  "end_reason": o.end_reason}
                 for o in session.exec(select(LogLevelOverride).where(LogLevelOverride.incident_id == key)
                                       .order_by(col(LogLevelOverride.id)))]
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


def _cell(value: Any) -> str:
    return " ".join(str(value if value is not None else "").split()).replace("|", "/")


ENDED_WORDS = {"end": "ended", "expire": "expired"}


def report_markdown(data: dict[str, Any]) -> str:
    """The report for people: prose where a sentence says it, tables for lists; no raw outputs."""
    inc = data["incident"]
    runs = data["runs"]
    found = [(run, f) for run in runs for f in run.get("findings", [])]
    problems = [(run, f) for run, f in found if f["severity"] in findings.PROBLEM]
    lines = [f"# {inc['id']}: {inc['title']}", "",
             f"A {inc['severity']} incident opened {utc_words(inc['opened_at'])} by {inc['opened_by']}"
             + (f", commanded by {inc['commander']}" if inc.get("commander") else "") + f"; it is {inc['status']}. "
             f"Time to mitigate: {data['time_to_mitigate'] or 'not mitigated'}; "
             f"time to resolve: {data['time_to_resolve'] or 'not resolved'}. "
             f"{len(runs)} runbook run(s) found {len(problems)} problem(s); "
             f"{len(data['flag_changes'])} flag(s) and {len(data['loglevel_overrides'])} log level(s) were changed."]
    if inc.get("summary"):
        lines += ["", "## Summary", "", inc["summary"]]
    lines += ["", "## What was found", ""]
    if found:
        lines += ["| severity | run | step | finding | evidence |", "|---|---|---|---|---|"]
        for run, f in found:
            lines.append(f"| {f['severity']} | {run['id']} `{run['runbook']}` | {_cell(f.get('step_id') or '-')} | "
                         f"{_cell(f['message'])} | {_cell(findings.evidence_text(f)) or '-'} |")
    else:
        lines.append("No run reported a finding.")
    lines += ["", "## Runbooks run", ""]
    if runs:
        lines += ["| run | runbook | by | result | steps that found a problem |", "|---|---|---|---|---|"]
        for run in runs:
            flagged = [st["id"] for st in run["steps"] if st.get("problem_found")]
            result = run["status"] + (f": {_cell(run['error'])}" if run.get("error") else "")
            lines.append(f"| {run['id']} | `{run['runbook']}` | {_cell(run['actor'])} | {result} | "
                         f"{', '.join(flagged) or '-'} |")
    else:
        lines.append("None.")
    lines += ["", "## Changes made", ""]
    changes = [(v["at"], v["what"], v["actor"], v["reason"], flag.get("now", "unknown"))
               for flag in data["flag_changes"] for v in flag["versions"]]
    changes += [(o["at"], f"set log level of {service_label(o['service'])} `{o['logger']}` to {o['level']}", o["by"],
                 o["reason"],
                 ENDED_WORDS.get(o["end_reason"], f"ended ({o['end_reason']})") if o["ended"] else "still in effect")
                for o in data["loglevel_overrides"]]
    changes.sort(key=lambda change: change[0])  # flags and log levels in the order they were made
    if changes:
        lines += ["| when (UTC) | change | by | why | now |", "|---|---|---|---|---|"]
        for at, what, who, why, now in changes:
            lines.append(f"| {at[:19].replace('T', ' ')} | {_cell(what)} | {_cell(who)} | {_cell(why) or '-'} | "
                         f"{_cell(now)} |")
    else:
        lines.append("None.")
    lines += ["", "## Timeline", "", "| time (UTC) | who | what |", "|---|---|---|"]
    for entry in data["timeline"]:
        lines.append(f"| {entry['ts'][:19].replace('T', ' ')} | {_cell(entry['actor'])} | "
                     f"{_cell(entry['summary'])} |")
    return "\n".join(lines) + "\n"
