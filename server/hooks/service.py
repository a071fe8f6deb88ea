"""Deciding a delivery: which rules each alert matches, which runs start, which alerts are duplicates,
suppressed by a guard or ignored (each with the reason), and what happens to incidents, all in the caller's
one transaction: a delivery is committed whole or not at all, and answered only after the commit.

Deliveries are serialised (a PostgreSQL advisory lock; SQLite's writers are serialised already), so guards
count exactly and a concurrent copy of a delivery sees the first one's firings and starts nothing again. Each
firing's key (rule, group key, fingerprint, startsAt) is unique in trigger_firings and is the run's
idempotency key too.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy import Engine, text
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, select

from server.audit import service as audit
from server.auth.models import Actor, Role, Source
from server.chat.models import ChatFollowup
from server.durations import format_duration
from server.errors import NotFound
from server.hooks import rules as rules_mod
from server.hooks.models import HookDelivery, TriggerFiring, TriggerGroup
from server.hooks.payloads import Alert, Delivery
from server.hooks.rules import Rule, RuleSet
from server.incidents import service as incidents
from server.incidents.models import IncidentCreate, IncidentStatus, IncidentUpdate
from server.models_base import as_utc, utcnow
from server.runbooks import expressions
from server.runbooks import params as param_rules
from server.runbooks.validation import Checked
from server.runs import service as runs
from server.runs.models import Run, RunStatus
from server.settings import Settings

log = logging.getLogger("runbookd.hooks")
DELIVERY_LOCK = 0x72626B68  # "rbkh": the advisory lock id that serialises deliveries on PostgreSQL
UNFINISHED = [s.value for s in RunStatus if not s.finished]
CHUNK = 500
ATTEMPTS = 3
MAX_STORED_ALERTS = 2000
MAX_STORED_DECISIONS = 5000


def hook_actor(source: str) -> Actor:
    return Actor(name=f"hook:{source}", role=Role.hook, source=Source.hook)


@dataclass
class Outcome:
    delivery: HookDelivery
    dispatch: list[tuple[int, str]] = field(default_factory=list)  # (run id, queue) to send after the commit

    def body(self) -> dict[str, Any]:
        d = self.delivery
        return {"delivery_id": d.id, "alerts": d.alerts, "started": d.started, "duplicates": d.duplicates,
                "suppressed": d.suppressed, "ignored": d.ignored,
                "runs": [x["run_id"] for x in d.result.get("decisions", []) if x.get("outcome") == "started"]}


def _chunks(items: list[Any]) -> list[list[Any]]:
    return [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]


def lock_deliveries(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": DELIVERY_LOCK})


@dataclass
class _Guards:
    """What the guards count, read once per delivery and kept up to date as runs start."""

    active: Counter[str]
    last_minute: Counter[str]
    blocked: dict[tuple[str, str], str]  # (rule, fingerprint) -> why a new run is refused

    @classmethod
    def read(cls, session: Session, pairs: set[tuple[Rule, str]], now: datetime) -> _Guards:
        """One query: the rules' runs still active or started within the longest window any guard looks at
        (a minute, or a cooldown). By rule, not by fingerprint: a 1,000-alert delivery needs no 1,000-value IN
        list, and the rows are few because the guards bound them."""
        rules = {r.id: r for r, _fp in pairs}
        active: Counter[str] = Counter()
        minute: Counter[str] = Counter()
        blocked: dict[tuple[str, str], str] = {}
        if not rules:
            return cls(active, minute, blocked)
        wanted = {(r.id, fp) for r, fp in pairs if r.spec.dedupe}
        window = max([timedelta(seconds=60), *(r.spec.cooldown for r in rules.values())])
        minute_ago = now - timedelta(seconds=60)
        for part in _chunks(sorted(rules)):
            rows = session.execute(
                sa_select(col(TriggerFiring.rule_id), col(TriggerFiring.fingerprint), col(TriggerFiring.run_id),
                          col(TriggerFiring.created_at), col(Run.status))
                .join(Run, col(Run.id) == TriggerFiring.run_id, isouter=True)
                .where(col(TriggerFiring.action) == "run", col(TriggerFiring.rule_id).in_(part),
                       (col(Run.status).in_(UNFINISHED)) | (col(TriggerFiring.created_at) >= now - window))
                .order_by(col(TriggerFiring.id)))
            for rule_id, fp, run_id, created, status in rows:
                rule, created = rules[rule_id], as_utc(created)
                unfinished = status in UNFINISHED
                active[rule_id] += unfinished
                minute[rule_id] += created >= minute_ago
                if (rule_id, fp) not in wanted:
                    continue
                if unfinished:
                    blocked[(rule_id, fp)] = f"dedupe: run {run_id} for this alert is still {status}"
                elif created >= now - rule.spec.cooldown and (rule_id, fp) not in blocked:
                    blocked[(rule_id, fp)] = (f"dedupe: run {run_id} for this alert started at {created:%H:%M:%S} "
                                              f"UTC, within the cooldown ({format_duration(rule.spec.cooldown)})")
        return cls(active, minute, blocked)

    def refuse(self, rule: Rule, fingerprint: str) -> str | None:
        why = self.blocked.get((rule.id, fingerprint)) if rule.spec.dedupe else None
        if why:
            return why
        if rule.spec.max_concurrent is not None and self.active[rule.id] >= rule.spec.max_concurrent:
            return f"max_concurrent: {self.active[rule.id]} runs of rule {rule.id} are already active"
        limit = rule.spec.max_runs_per_minute
        if limit is not None and self.last_minute[rule.id] >= limit:
            return f"max_runs_per_minute: rule {rule.id} started {limit} runs in the last minute"
        return None

    def started(self, rule: Rule, fingerprint: str, run_id: int) -> None:
        self.active[rule.id] += 1
        self.last_minute[rule.id] += 1
        self.blocked[(rule.id, fingerprint)] = f"dedupe: run {run_id} for this alert was started by this delivery"


@dataclass
class _Work:
    session: Session
    settings: Settings
    runbooks: dict[str, Checked]
    delivery: Delivery
    actor: Actor
    row: HookDelivery
    client: redis.Redis | None = None  # where a cancelled run's events and its worker's stop signal go
    decisions: list[dict[str, Any]] = field(default_factory=list)
    dispatch: list[tuple[int, str]] = field(default_factory=list)
    groups: dict[tuple[str, str], str] = field(default_factory=dict)  # (rule, group hash) -> incident id
    # Strong references: the session's identity map is weak, and create_run reads each incident again.
    incidents: list[Any] = field(default_factory=list)

    @property
    def group_hash(self) -> str:
        return rules_mod.firing_key(self.delivery.group_key)

    def decide(self, alert: Alert, rule: Rule | None, outcome: str, reason: str | None = None,
               **extra: Any) -> None:
        self.decisions.append({"fingerprint": alert.fingerprint, "status": alert.status,
                               "alertname": alert.labels.get("alertname"),
                               "rule": rule.id if rule else None, "outcome": outcome, "reason": reason, **extra})


def _key(rule: Rule, delivery: Delivery, alert: Alert, action: str) -> str:
    return rules_mod.firing_key(rule.id, delivery.group_key, alert.fingerprint, alert.starts_at, action)


def matches(rules: RuleSet, delivery: Delivery) -> list[tuple[Alert, list[Rule]]]:
    out = []
    for alert in delivery.alerts:
        hits = [r for r in rules.candidates(delivery.source, alert.labels) if r.matches(alert.labels,
                                                                                        alert.annotations)]
        out.append((alert, hits))
    return out


def deliver(engine: Engine, settings: Settings, delivery: Delivery, *, rules: RuleSet, runbooks: dict[str, Checked],
            token: str | None, request_id: str | None, client: redis.Redis | None) -> dict[str, Any]:
    """Decide and commit a delivery (retried when a concurrent copy won a race), then send its runs."""
    for attempt in range(ATTEMPTS):
        with Session(engine, expire_on_commit=False) as session:
            try:
                outcome = process(session, delivery=delivery, rules=rules, runbooks=runbooks, settings=settings,
                                  token=token, request_id=request_id, client=client)
                session.commit()
                break
            except (IntegrityError, OperationalError) as exc:
                session.rollback()
                if attempt == ATTEMPTS - 1:
                    raise
                log.info("hook delivery retried after a conflict", extra={"error": str(exc)[:200]})
    send_runs(engine, settings, outcome.dispatch)
    return outcome.body()


def send_runs(engine: Engine, settings: Settings, dispatch: list[tuple[int, str]]) -> None:
    """Send committed runs to the broker; when it is down, the rest stay queued for beat's relay."""
    for index, (run_id, queue) in enumerate(dispatch):
        if not runs.send_run(settings, run_id, queue):
            with Session(engine) as session:
                for later, _queue in dispatch[index:]:
                    runs.mark_undispatched(session, run_id=later)
                session.commit()
            return


def process(session: Session, *, delivery: Delivery, rules: RuleSet, runbooks: dict[str, Checked],
            settings: Settings, token: str | None, request_id: str | None,
            client: redis.Redis | None = None) -> Outcome:
    """Decide a delivery and write it all (the caller commits, then sends Outcome.dispatch)."""
    lock_deliveries(session)
    now = utcnow()
    actor = hook_actor(delivery.source)
    row = HookDelivery(source=delivery.source, actor=actor.name, token=token, request_id=request_id,
                       group_key=delivery.group_key[:1000], alerts=len(delivery.alerts), result={})
    session.add(row)
    session.flush()
    work = _Work(session, settings, runbooks, delivery, actor, row, client)
    matched = matches(rules, delivery)
    actions: list[tuple[Alert, Rule, str, str]] = []  # alert, rule, action (run/resolved), key
    for alert, hits in matched:
        if not hits:
            work.decide(alert, None, "ignored", "no rule matched")
        for rule in hits:
            if alert.status == rule.spec.status:
                actions.append((alert, rule, "run", _key(rule, delivery, alert, "run")))
            elif alert.status == "resolved" and rule.spec.on_resolved:
                actions.append((alert, rule, "resolved", _key(rule, delivery, alert, "resolved")))
            else:
                work.decide(alert, rule, "ignored", f"alert is {alert.status}; rule {rule.id} acts on "
                            f"{rule.spec.status} alerts")
    # A redelivery has the same group key: its earlier firings are found by the group's hash (indexed).
    keys = {a[3] for a in actions}
    seen = {f.key: f for f in session.exec(select(TriggerFiring).where(TriggerFiring.group_hash == work.group_hash))
            if f.key in keys} if keys else {}
    guards = _Guards.read(session, {(r, a.fingerprint) for a, r, act, _k in actions if act == "run"}, now)
    done_keys: set[str] = set()
    for alert, rule, action, key in actions:
        earlier = seen.get(key)
        if earlier is not None or key in done_keys:
            where = f"delivery {earlier.delivery_id}" if earlier is not None else "this delivery"
            work.decide(alert, rule, "duplicate", f"already handled by {where}",
                        run_id=earlier.run_id if earlier else None)
            continue
        done_keys.add(key)
        if action == "run":
            _start(work, guards, alert, rule, key)
        else:
            _resolved(work, alert, rule, key)
    counts = Counter(d["outcome"] for d in work.decisions)
    row.started, row.duplicates = counts["started"], counts["duplicate"]
    row.suppressed, row.ignored = counts["suppressed"], counts["ignored"]
    row.result = {
        "alerts": [a.brief() for a in delivery.alerts[:MAX_STORED_ALERTS]],
        "truncated_alerts": delivery.truncated,
        "rules": sorted({d["rule"] for d in work.decisions if d["rule"]}),
        "decisions": work.decisions[:MAX_STORED_DECISIONS],
        "resolved": counts["note"] + counts["resolve_incident"] + counts["cancel_run"],
    }
    session.add(row)
    audit.record(session, actor=actor, action="hook.delivery", target_type="hook_delivery", target_id=row.id,
                 after={"source": delivery.source, "token": token, "alerts": row.alerts, "started": row.started,
                        "duplicates": row.duplicates, "suppressed": row.suppressed, "ignored": row.ignored})
    return Outcome(row, work.dispatch)


def process_slots(session: Session, *, due: list[tuple[Rule, datetime, str | None]], runbooks: dict[str, Checked],
                  settings: Settings) -> Outcome:
    """Schedule slots as one delivery of source `schedule`: each (rule, slot, why it is skipped or None) starts
    a run under the same guards as alerts, or is recorded as skipped. The caller holds the delivery lock."""
    delivery = Delivery("schedule", "schedule", [], {})
    actor = hook_actor("schedule")
    row = HookDelivery(source="schedule", actor=actor.name, group_key="schedule", alerts=len(due), result={})
    session.add(row)
    session.flush()
    work = _Work(session, settings, runbooks, delivery, actor, row)
    items = []
    for rule, slot, skip in due:
        alert = Alert("firing", {"schedule": rule.id}, {}, f"schedule:{rule.id}", slot.isoformat())
        delivery.alerts.append(alert)
        items.append((alert, rule, skip, rules_mod.firing_key(rule.id, "schedule", alert.starts_at, "slot")))
    seen = {f.key for part in _chunks([i[3] for i in items])
            for f in session.exec(select(TriggerFiring).where(col(TriggerFiring.key).in_(part)))}  # a few slots
    guards = _Guards.read(session, {(r, a.fingerprint) for a, r, skip, _k in items if skip is None}, utcnow())
    for alert, rule, skip, key in items:
        if key in seen:
            work.decide(alert, rule, "duplicate", "this slot was already handled")
        elif skip is not None:
            session.add(TriggerFiring(key=key, action="slot", rule_id=rule.id, fingerprint=alert.fingerprint,
                                      group_hash=work.group_hash, starts_at=alert.starts_at, delivery_id=row.id,
                                      outcome="skipped"))
            work.decide(alert, rule, "skipped", skip, slot=alert.starts_at)
        else:
            _start(work, guards, alert, rule, key)
    counts = Counter(d["outcome"] for d in work.decisions)
    row.started, row.duplicates = counts["started"], counts["duplicate"]
    row.suppressed, row.ignored = counts["suppressed"] + counts["skipped"], counts["ignored"]
    row.result = {"alerts": [a.brief() for a in delivery.alerts[:MAX_STORED_ALERTS]],
                  "rules": sorted({d["rule"] for d in work.decisions if d["rule"]}),
                  "decisions": work.decisions[:MAX_STORED_DECISIONS]}
    session.add(row)
    audit.record(session, actor=actor, action="hook.delivery", target_type="hook_delivery", target_id=row.id,
                 after={"source": "schedule", "slots": len(due), "started": row.started, "skipped": counts["skipped"],
                        "suppressed": counts["suppressed"]})
    return Outcome(row, work.dispatch)


def _incident_for(work: _Work, rule: Rule, alert: Alert) -> str | None:
    spec = rule.spec.open_incident
    if spec is None:
        return None
    group_hash = rules_mod.firing_key(rule.id, work.delivery.group_key)
    cached = work.groups.get((rule.id, group_hash))
    if cached:
        return cached
    for group in work.session.exec(select(TriggerGroup).where(TriggerGroup.rule_id == rule.id,
                                                              TriggerGroup.group_hash == group_hash)
                                   .order_by(col(TriggerGroup.id).desc()).limit(1)):
        incident = incidents.get_incident(work.session, ref=group.incident_id)
        if incident.status != IncidentStatus.resolved.value:
            work.groups[(rule.id, group_hash)] = incident.key
            work.incidents.append(incident)
            return incident.key
    title = rules_mod.render_text(spec.title, work.delivery.template_context(alert))[:300] or rule.id
    incident = incidents.open_incident(work.session, actor=work.actor, body=IncidentCreate(
        title=title, severity=spec.severity,
        summary=f"Opened by trigger {rule.id} for alert group {work.delivery.group_key[:500]}"))
    work.session.add(TriggerGroup(rule_id=rule.id, group_hash=group_hash, incident_id=incident.key))
    work.groups[(rule.id, group_hash)] = incident.key
    work.incidents.append(incident)
    return incident.key


def _start(work: _Work, guards: _Guards, alert: Alert, rule: Rule, key: str) -> None:
    why = guards.refuse(rule, alert.fingerprint)
    if why:
        work.decide(alert, rule, "suppressed", why)
        return
    checked = work.runbooks.get(rule.spec.runbook)
    if checked is None or checked.runbook is None:
        work.decide(alert, rule, "ignored", f"runbook {rule.spec.runbook!r} is not available")
        return
    try:
        given = rules_mod.render_params(rule, work.delivery.template_context(alert))
    except expressions.ExpressionError as exc:
        work.decide(alert, rule, "ignored", f"params: {exc}")
        return
    _values, problems = param_rules.coerce(checked.runbook, given)
    if problems:
        text_ = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        work.decide(alert, rule, "ignored", f"invalid params for runbook {rule.spec.runbook!r}: {text_}")
        return
    try:
        incident_id = _incident_for(work, rule, alert)
    except expressions.ExpressionError as exc:
        work.decide(alert, rule, "ignored", f"open_incident.title: {exc}")
        return
    session = work.session
    # The params were checked above and the incident exists, so create_run raises nothing before it writes.
    run, _steps = runs.create_run(session, checked=checked, given=given, actor=work.actor, settings=work.settings,
                                  incident_id=incident_id, idempotency_key=f"trigger:{key}")
    assert run.id is not None
    session.add(TriggerFiring(key=key, action="run", rule_id=rule.id, fingerprint=alert.fingerprint,
                              group_key=work.delivery.group_key[:1000], group_hash=work.group_hash,
                              starts_at=alert.starts_at[:64], delivery_id=work.row.id, run_id=run.id,
                              incident_id=incident_id, outcome="started"))
    if rule.spec.notify is not None:
        session.add(ChatFollowup(run_id=run.id, platform="webhook", response_url=rule.spec.notify.webhook,
                                 channel=rule.spec.notify.channel or "webhook"))
    guards.started(rule, alert.fingerprint, run.id)
    work.dispatch.append((run.id, run.queue))
    work.decide(alert, rule, "started", None, run_id=run.id, runbook=rule.spec.runbook, incident_id=incident_id,
                params=run.params)


def _resolved(work: _Work, alert: Alert, rule: Rule, key: str) -> None:
    session = work.session
    firing = session.exec(select(TriggerFiring).where(
        TriggerFiring.rule_id == rule.id, TriggerFiring.fingerprint == alert.fingerprint,
        TriggerFiring.action == "run").order_by(col(TriggerFiring.id).desc()).limit(1)).first()
    if firing is None:
        work.decide(alert, rule, "ignored", "resolved, but this rule started no run for this alert")
        return
    action = rule.spec.on_resolved
    assert action is not None
    detail = ""
    name = alert.labels.get("alertname") or alert.fingerprint
    if action == "cancel_run" and firing.run_id is not None:
        run = runs.get_run(session, run_id=firing.run_id)
        if RunStatus(run.status).finished:
            detail = f"run {run.id} had already finished ({run.status})"
        else:
            runs.cancel(session, run_id=firing.run_id, actor=work.actor, reason=f"alert {name} resolved",
                        settings=work.settings, client=work.client)
            detail = f"run {firing.run_id} cancelled"
    elif action == "resolve_incident" and firing.incident_id:
        incident = incidents.get_incident(session, ref=firing.incident_id)
        still = _still_firing(session, rule, firing.incident_id, alert.fingerprint)
        if incident.status == IncidentStatus.resolved.value:
            detail = f"{incident.key} was already resolved"
        elif still:
            detail = f"{incident.key} stays open: {still} other alert(s) of its group still firing"
        else:
            incidents.update_incident(session, ref=incident.key, actor=work.actor, body=IncidentUpdate(
                status=IncidentStatus.resolved, reason=f"alert {name} resolved (trigger {rule.id})"))
            detail = f"{incident.key} resolved"
    if action == "note" or firing.incident_id:
        audit.record(session, actor=work.actor, action="alert.resolved", target_type="alert",
                     target_id=alert.fingerprint, after={"rule": rule.id, "labels": alert.labels,
                                                         "endsAt": alert.ends_at, "run_id": firing.run_id},
                     reason=f"alert {name} resolved" + (f"; {detail}" if detail else ""),
                     incident_id=firing.incident_id)
        detail = detail or "noted"
    session.add(TriggerFiring(key=key, action="resolved", rule_id=rule.id, fingerprint=alert.fingerprint,
                              group_key=work.delivery.group_key[:1000], group_hash=work.group_hash,
                              starts_at=alert.starts_at[:64], delivery_id=work.row.id, run_id=firing.run_id,
                              incident_id=firing.incident_id,
                              outcome=action))
    work.decide(alert, rule, action, detail or None, run_id=firing.run_id, incident_id=firing.incident_id)


def _still_firing(session: Session, rule: Rule, incident_id: str, resolving: str) -> int:
    """How many other alerts this rule started runs for under the incident have not resolved yet."""
    rows = session.exec(select(TriggerFiring.fingerprint, TriggerFiring.action).where(
        TriggerFiring.rule_id == rule.id, TriggerFiring.incident_id == incident_id)).all()
    started = {fp for fp, action in rows if action == "run"}
    resolved = {fp for fp, action in rows if action == "resolved"} | {resolving}
    return len(started - resolved)


def dry_run(delivery: Delivery, rules: RuleSet, runbooks: dict[str, Checked]) -> list[dict[str, Any]]:
    """Which rules each alert matches and the run each would start, with its params; writes nothing."""
    out = []
    for alert, hits in matches(rules, delivery):
        entry: dict[str, Any] = {"alert": alert.brief(), "rules": []}
        for rule in hits:
            item: dict[str, Any] = {"rule": rule.id, "runbook": rule.spec.runbook}
            if alert.status != rule.spec.status:
                item["action"] = f"on_resolved: {rule.spec.on_resolved}" if (
                    alert.status == "resolved" and rule.spec.on_resolved) else "none (status differs)"
                entry["rules"].append(item)
                continue
            item["action"] = "start run"
            checked = runbooks.get(rule.spec.runbook)
            try:
                given = rules_mod.render_params(rule, delivery.template_context(alert))
            except expressions.ExpressionError as exc:
                item.update(would_start=False, problem=f"params: {exc}")
                entry["rules"].append(item)
                continue
            if checked is None or checked.runbook is None:
                item.update(would_start=False, params=given, problem=f"no runbook {rule.spec.runbook!r}")
            else:
                values, problems = param_rules.coerce(checked.runbook, given)
                item.update(would_start=not problems,
                            params=param_rules.mask(checked.runbook.secret_params(), values) if not problems
                            else given, problems=problems or None)
            if rule.spec.open_incident is not None:
                try:
                    item["incident"] = {"severity": rule.spec.open_incident.severity.value,
                                        "title": rules_mod.render_text(rule.spec.open_incident.title,
                                                                       delivery.template_context(alert))}
                except expressions.ExpressionError as exc:
                    item["incident"] = {"problem": str(exc)}
            entry["rules"].append(item)
        out.append(entry)
    return out


def list_deliveries(session: Session, *, source: str | None, before_id: int | None, limit: int) -> list[HookDelivery]:
    stmt = select(HookDelivery)
    if source:
        stmt = stmt.where(HookDelivery.source == source)
    if before_id is not None:
        stmt = stmt.where(col(HookDelivery.id) < before_id)
    return list(session.exec(stmt.order_by(col(HookDelivery.id).desc()).limit(limit)))


def get_delivery(session: Session, *, delivery_id: int) -> HookDelivery:
    row = session.get(HookDelivery, delivery_id)
    if row is None:
        raise NotFound(f"hook delivery {delivery_id} does not exist")
    return row
