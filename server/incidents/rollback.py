"""Undo an incident: every change made under it that is still in effect, in one audited operation.

Flags go back to their version from before the incident's first change to them; active log-level
overrides end. A flag whose behaviour someone outside the incident changed since is left alone and reported
as a conflict (`force` restores it anyway). Changes of metadata only (owner, description, tags) are no
conflict: the flag's behaviour is restored and the newer metadata kept.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlmodel import Session, col, select

from server.audit import service as audit
from server.auth.models import Actor
from server.flags import service as flags
from server.flags.models import Flag, FlagVersion
from server.incidents.models import Incident
from server.loglevels import service as loglevels
from server.loglevels.models import LogLevelOverride
from server.models_base import as_utc, utcnow


@dataclass
class FlagPlan:
    flag: str
    outcome: str               # restore, already_restored, conflict
    current_version: int
    target_version: int        # 0: the incident created the flag, so restoring deletes it
    changed_by: str | None = None
    detail: str = ""


@dataclass
class RollbackResult:
    incident: str
    dry_run: bool
    flags: list[FlagPlan] = field(default_factory=list)
    loglevels: list[dict[str, Any]] = field(default_factory=list)

    @property
    def conflicts(self) -> list[FlagPlan]:
        return [f for f in self.flags if f.outcome == "conflict"]

    def as_dict(self) -> dict[str, Any]:
        return {"incident": self.incident, "dry_run": self.dry_run, "flags": [asdict(f) for f in self.flags],
                "loglevels": self.loglevels, "conflicts": [asdict(f) for f in self.conflicts]}


METADATA = ("description", "owner", "tags")


def flag_outcome_words(outcome: str, target_version: int, *, done: bool = False) -> str:
    """A flag's undo outcome in words, as the console's undo (dry run, then done) and the incident report's
    "now" column say it: "would be restored to version 3 on undo", not "restore"."""
    if outcome == "restore" and target_version == 0:
        return "deleted (the incident created it)" if done else "would be deleted on undo (the incident created it)"
    if outcome == "restore":
        return f"restored to version {target_version}" if done else \
            f"would be restored to version {target_version} on undo"
    if outcome == "already_restored":
        return "already back as it was before the incident"
    if outcome == "conflict":
        return "changed since outside the incident; " + ("left as it is" if done else "undo leaves it as it is")
    return outcome.replace("_", " ")


def _comparable(spec: dict[str, Any]) -> dict[str, Any]:
    """What a flag does: metadata (who owns it, what it is called) is no part of the comparison."""
    return {k: v for k, v in spec.items() if k not in ("version", "updated_at", *METADATA)}


def _outside_changes(session: Session, flag_key: str, key: str) -> list[FlagVersion]:
    """Versions after the incident's last change to the flag, in order, with the one before them first."""
    last_ours = session.exec(select(FlagVersion.version).where(FlagVersion.flag_key == flag_key,
                                                               FlagVersion.incident_id == key)
                             .order_by(col(FlagVersion.version).desc())).first() or 0
    return list(session.exec(select(FlagVersion).where(FlagVersion.flag_key == flag_key,
                                                       FlagVersion.version >= last_ours)
                             .order_by(col(FlagVersion.version))))


def plan_flags(session: Session, *, key: str, force: bool = False) -> list[FlagPlan]:
    """For each flag the incident touched: restore it, or it is already back, or someone else changed it."""
    first: dict[str, int] = {}
    for flag_key, version in session.exec(select(FlagVersion.flag_key, FlagVersion.version)
                                          .where(FlagVersion.incident_id == key).order_by(col(FlagVersion.id))):
        first.setdefault(flag_key, version)
    plans = []
    for flag_key, first_version in sorted(first.items()):
        flag = session.get(Flag, flag_key)
        if flag is None:
            continue
        target = first_version - 1
        current = session.exec(select(FlagVersion).where(FlagVersion.flag_key == flag_key,
                                                         FlagVersion.version == flag.version)).one()
        if target == 0:
            back = bool(flag.deleted)
        else:
            before = flags.get_version(session, key=flag_key, version=target)
            back = _comparable(before.spec) == _comparable(flag.spec)
        if back:
            plans.append(FlagPlan(flag_key, "already_restored", flag.version, target))
        elif current.incident_id != key:
            chain = _outside_changes(session, flag_key, key)
            outside = [v for v in chain[1:] if v.incident_id != key]
            behaviour = [v for prev, v in itertools.pairwise(chain)
                         if v.incident_id != key and _comparable(prev.spec) != _comparable(v.spec)]
            who = ", ".join(sorted({v.actor for v in (behaviour or outside)}))
            if not behaviour:
                plans.append(FlagPlan(flag_key, "restore", flag.version, target, who,
                                      f"keeps the metadata {who} changed outside {key} (version {flag.version})"))
            elif force:
                plans.append(FlagPlan(flag_key, "restore", flag.version, target, who,
                                      f"forced over {who}'s change outside {key} (version {flag.version})"))
            else:
                plans.append(FlagPlan(flag_key, "conflict", flag.version, target, who,
                                      f"changed outside {key} by {who} (version {flag.version}); left alone "
                                      "(--force restores it anyway)"))
        else:
            plans.append(FlagPlan(flag_key, "restore", flag.version, target))
    return plans


def rollback(session: Session, *, incident: Incident, actor: Actor, dry_run: bool, force: bool = False,
             on_flag_change: Callable[[str, int], None] | None = None,
             on_loglevel_change: Callable[[str], None] | None = None) -> RollbackResult:
    """Plan (dry run) or perform the undo; the caller commits, then publishes what the callbacks collected."""
    key = incident.key
    reason = f"rollback of {key}"
    result = RollbackResult(incident=key, dry_run=dry_run, flags=plan_flags(session, key=key, force=force))
    now = utcnow()
    overrides = session.exec(select(LogLevelOverride).where(LogLevelOverride.incident_id == key,
                                                            col(LogLevelOverride.ended_at).is_(None))
                             .order_by(col(LogLevelOverride.id))).all()
    for row in overrides:
        if row.expires_at is not None and as_utc(row.expires_at) <= now:
            continue  # already over; beat writes its end down
        result.loglevels.append({"id": row.id, "service": row.service, "logger": row.logger, "level": row.level,
                                 "outcome": "end"})
    if dry_run:
        return result
    for plan in result.flags:
        if plan.outcome != "restore":
            continue
        if plan.target_version == 0:
            version = flags.set_deleted(session, key=plan.flag, deleted=True, actor=actor, reason=reason,
                                        incident_id=key)
        else:
            version = flags.rollback(session, key=plan.flag, to_version=plan.target_version, actor=actor,
                                     reason=reason, incident_id=key, keep_metadata=METADATA)
        if on_flag_change:
            on_flag_change(plan.flag, version.version)
    for item in result.loglevels:
        ended = loglevels.end_override(session, override_id=item["id"], actor=actor, reason=reason)
        if on_loglevel_change:
            on_loglevel_change(ended.service)
    audit.record(session, actor=actor, action="incident.rollback", target_type="incident", target_id=key,
                 after=result.as_dict(), reason=reason, incident_id=key)
    return result
