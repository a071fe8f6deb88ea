"""Flag changes: every one writes an immutable version and its audit event in the caller's transaction.

The caller registers server.flags.cache.announce_change() and commits, so every api process reloads the flag.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import jsonpatch
from pydantic import ValidationError
from sqlmodel import Session, col, select

from server.audit import service as audit
from server.auth.models import Actor
from server.errors import Conflict, InvalidInput, NotFound, PreconditionFailed
from server.flags.models import (
    EnvironmentPatch,
    EnvironmentState,
    ExpiryStatus,
    Flag,
    FlagCreate,
    FlagEnvironment,
    FlagExpiry,
    FlagSpec,
    FlagUpdate,
    FlagVersion,
    Rule,
)
from server.incidents import service as incidents
from server.models_base import as_utc, utcnow


# -- environments ----------------------------------------------------------------------------------
def list_environments(session: Session) -> list[FlagEnvironment]:
    """All environments, by name."""
    return list(session.exec(select(FlagEnvironment).order_by(col(FlagEnvironment.name))))


def create_environment(session: Session, *, name: str, description: str, actor: Actor) -> FlagEnvironment:
    """Add an environment; flags are off there (at their default) until someone turns them on."""
    if session.get(FlagEnvironment, name) is not None:
        raise Conflict(f"environment {name!r} already exists")
    env = FlagEnvironment(name=name, description=description)
    session.add(env)
    session.flush()
    audit.record(session, actor=actor, action="flag_environment.create", target_type="flag_environment",
                 target_id=name, after={"name": name, "description": description})
    return env


def _known_environments(session: Session) -> set[str]:
    return set(session.exec(select(FlagEnvironment.name)))


# -- reads -----------------------------------------------------------------------------------------
def get_flag(session: Session, *, key: str, include_deleted: bool = False) -> Flag:
    """A flag by key; a deleted one only when asked for."""
    flag = session.get(Flag, key)
    if flag is None or (flag.deleted and not include_deleted):
        raise NotFound(f"no flag {key!r}" + (" (it was deleted; POST .../restore undoes that)"
                                             if flag is not None else ""))
    return flag


def list_flags(session: Session, *, tag: str | None = None, include_deleted: bool = False) -> list[Flag]:
    """Flags by key, optionally only those carrying a tag."""
    stmt = select(Flag).order_by(col(Flag.key))
    if not include_deleted:
        stmt = stmt.where(col(Flag.deleted).is_(False))
    flags = list(session.exec(stmt))
    return [f for f in flags if tag in f.spec.get("tags", [])] if tag else flags


def list_flag_rows(session: Session, *, tag: str | None = None) -> list[tuple[str, int, dict[str, Any]]]:
    """list_flags() (not deleted) as (key, version, spec) rows: no ORM objects, for lists of many flags."""
    stmt = select(Flag.key, Flag.version, Flag.spec).where(col(Flag.deleted).is_(False)).order_by(col(Flag.key))
    rows = [(key, version, spec) for key, version, spec in session.exec(stmt)]
    return [r for r in rows if tag in r[2].get("tags", [])] if tag else rows


def list_versions(session: Session, *, key: str) -> list[FlagVersion]:
    """Every version of a flag, newest first."""
    get_flag(session, key=key, include_deleted=True)
    return list(session.exec(select(FlagVersion).where(FlagVersion.flag_key == key)
                             .order_by(col(FlagVersion.version).desc())))


def get_version(session: Session, *, key: str, version: int) -> FlagVersion:
    """One version of a flag."""
    row = session.exec(select(FlagVersion).where(FlagVersion.flag_key == key, FlagVersion.version == version)).first()
    if row is None:
        raise NotFound(f"flag {key!r} has no version {version}")
    return row


def pending_expiries(session: Session, *, key: str) -> list[FlagExpiry]:
    """Temporary changes of a flag that have yet to revert."""
    return pending_by_flag(session, keys=[key]).get(key, [])


def pending_changes(session: Session, *, keys: list[str] | None = None, limit: int | None = None) -> list[FlagExpiry]:
    """Temporary changes yet to revert, soonest first, in one query (of every flag when keys is None)."""
    stmt = select(FlagExpiry).where(FlagExpiry.status == ExpiryStatus.pending.value)
    if keys is not None:
        stmt = stmt.where(col(FlagExpiry.flag_key).in_(keys))
    return list(session.exec(stmt.order_by(col(FlagExpiry.expires_at)).limit(limit)))


def pending_by_flag(session: Session, *, keys: list[str] | None = None,
                    limit: int | None = None) -> dict[str, list[FlagExpiry]]:
    """pending_changes() by flag key."""
    grouped: dict[str, list[FlagExpiry]] = {}
    for expiry in pending_changes(session, keys=keys, limit=limit):
        grouped.setdefault(expiry.flag_key, []).append(expiry)
    return grouped


def serving(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What each environment serves a context no rule matches, from the same compiled flag OFREP evaluates:
    {env: {enabled, variant, value, reason, rules}}; a disabled environment serves the off variant."""
    from server.flags.evaluation import DEFAULT, DISABLED, STATIC, compile_flag

    try:
        compiled = compile_flag(FlagSpec.model_validate(spec), 0)
    except (ValidationError, ValueError):
        return {}
    return {name: {"enabled": env.enabled, "variant": env.default_variant,
                   "value": compiled.variants[env.default_variant],
                   "reason": DISABLED if not env.enabled else DEFAULT if env.rules else STATIC,
                   "rules": len(env.rules)}
            for name, env in sorted(compiled.environments.items())}


def describe_serving(spec: dict[str, Any], environment: str) -> str:
    """'serves off = false' for one environment, as the CLI, chat and steps say it."""
    state = serving(spec).get(environment)
    if state is None:
        return f"serves its off variant {spec.get('off_variant')!r}"
    value = json.dumps(state["value"])
    if not state["enabled"]:
        return f"serves its off variant {state['variant']!r} = {value}"
    rules = f" when no rule of {state['rules']} matches" if state["rules"] else ""
    return f"serves {state['variant']!r} = {value}{rules}"


# -- the one write path ----------------------------------------------------------------------------
def _validated(data: dict[str, Any]) -> FlagSpec:
    try:
        return FlagSpec.model_validate(data)
    except ValidationError as exc:
        details = [{"field": ".".join(map(str, e["loc"])), "message": e["msg"].removeprefix("Value error, "),
                    "type": e["type"]}
                   for e in exc.errors()]
        raise InvalidInput("invalid flag: " + "; ".join(f"{d['field'] or 'flag'}: {d['message']}"
                                                       for d in details[:5]), details=details) from None


def _locked(session: Session, key: str) -> Flag | None:
    # FOR UPDATE serialises writers of one flag on PostgreSQL; SQLite writers already hold the database
    # write lock (BEGIN IMMEDIATE), so the version read here is the one the new version follows.
    return session.exec(select(Flag).where(Flag.key == key).with_for_update()).one_or_none()


def _check_precondition(flag: Flag, if_match: int | None) -> None:
    if if_match is not None and flag.version != if_match:
        raise PreconditionFailed(
            f"flag {flag.key!r} is at version {flag.version}, not {if_match}: someone changed it; reload and retry",
            details={"current_version": flag.version}, headers={"ETag": f'"{flag.version}"'})


def expiry_time(*, duration: timedelta | None, expires_at: datetime | None) -> datetime | None:
    """When a temporary change ends, from 'for' or 'expires_at'; it must lie in the future."""
    if duration is None and expires_at is None:
        return None
    when = utcnow() + duration if duration is not None else as_utc(expires_at)  # type: ignore[arg-type]
    if when <= utcnow():
        raise InvalidInput(f"expires_at {when.isoformat()} is in the past")
    return when


def _write(session: Session, *, flag: Flag | None, key: str, spec: FlagSpec, action: str, actor: Actor,
           reason: str | None, incident_id: str | None, expires_at: datetime | None) -> FlagVersion:
    incident_id = incidents.resolve_ref(session, ref=incident_id)
    now = utcnow()
    before: dict[str, Any] | None = flag.spec if flag is not None else None
    after = spec.model_dump(mode="json")
    previous = flag.version if flag is not None else 0
    if flag is None:
        flag = Flag(key=key, version=1, spec=after, deleted=spec.deleted, created_at=now, updated_at=now)
    else:
        flag.version, flag.spec, flag.deleted, flag.updated_at = previous + 1, after, spec.deleted, now
    session.add(flag)
    version = FlagVersion(flag_key=key, version=flag.version, action=action, spec=after,
                          diff=jsonpatch.make_patch(before or {}, after).patch, actor=actor.name, reason=reason,
                          incident_id=incident_id, expires_at=expires_at, created_at=now)
    session.add(version)
    superseded = []
    for expiry in pending_expiries(session, key=key):
        # The temporary change this expiry would undo is no longer the flag's state: reverting now would
        # throw away the newer change, so the expiry is dropped, and the record says by what.
        expiry.status, expiry.resolved_at = ExpiryStatus.superseded.value, now
        expiry.resolution = f"superseded by version {flag.version} ({action} by {actor.name})"
        session.add(expiry)
        superseded.append({"version": expiry.version, "expires_at": as_utc(expiry.expires_at).isoformat()})
    if expires_at is not None:
        session.add(FlagExpiry(flag_key=key, version=flag.version, revert_to=previous, expires_at=expires_at,
                               actor=actor.name, reason=reason, incident_id=incident_id))
    session.flush()
    previous_expiry = None if before is None else session.exec(select(FlagVersion.expires_at).where(
        FlagVersion.flag_key == key, FlagVersion.version == previous)).first()
    audit.record(session, actor=actor, action=action, target_type="flag", target_id=key,
                 before=None if before is None else _audit_value(previous, before, previous_expiry, []),
                 after=_audit_value(flag.version, after, expires_at, superseded),
                 reason=reason, incident_id=incident_id)
    return version


def _audit_value(version: int, spec: dict[str, Any], expires_at: datetime | None,
                 superseded: list[dict[str, Any]]) -> dict[str, Any]:
    """A flag version as its audit events record it, before and after alike: one shape for every write, so
    the audit page's before/after diff lists only what changed (a key on one side only shows as changed).
    expires_at: when that version's temporary change ends; superseded_expiries: the pending temporary
    changes this write dropped (none, on the before side)."""
    return {"version": version, "spec": spec, "expires_at": as_utc(expires_at).isoformat() if expires_at else None,
            "superseded_expiries": superseded or None}


# -- changes ---------------------------------------------------------------------------------------
def create_flag(session: Session, *, body: FlagCreate, actor: Actor) -> FlagVersion:
    """Create a flag, or reuse the key of a deleted one (its history continues)."""
    existing = _locked(session, body.key)
    if existing is not None and not existing.deleted:
        raise Conflict(f"flag {body.key!r} already exists")
    known = _known_environments(session)
    unknown = sorted(set(body.environments) - known)
    if unknown:
        raise InvalidInput(f"unknown environment(s) {unknown}; environments are {sorted(known)}")
    environments = {name: body.environments.get(name, EnvironmentState(enabled=body.enabled)) for name in known}
    spec = _validated({**body.model_dump(include=set(FlagSpec.model_fields) - {"environments", "deleted"}),
                       "environments": {k: v.model_dump() for k, v in environments.items()}})
    return _write(session, flag=existing, key=body.key, spec=spec, action="flag.create", actor=actor,
                  reason=body.reason, incident_id=body.incident_id,
                  expires_at=expiry_time(duration=body.for_, expires_at=body.expires_at))


def update_flag(session: Session, *, key: str, changes: FlagUpdate, actor: Actor,
                if_match: int | None = None) -> FlagVersion:
    """Change any part of a flag; environments are merged field by field."""
    flag = _locked(session, key)
    if flag is None or flag.deleted:
        get_flag(session, key=key)  # raises the right NotFound
        raise AssertionError
    _check_precondition(flag, if_match)
    data = dict(flag.spec)
    top = changes.model_dump(exclude_unset=True, include={"description", "type", "variants", "default_variant",
                                                          "off_variant", "tags", "owner", "temporary", "remove_after"})
    data.update(top)
    if changes.environments:
        known = _known_environments(session) | set(data["environments"])
        unknown = sorted(set(changes.environments) - known)
        if unknown:
            raise InvalidInput(f"unknown environment(s) {unknown}; environments are {sorted(known)}")
        envs = {name: dict(state) for name, state in data["environments"].items()}
        for name, patch in changes.environments.items():
            envs[name] = {**envs.get(name, EnvironmentState().model_dump()),
                          **patch.model_dump(exclude_unset=True, mode="json")}
        data["environments"] = envs
    return _write(session, flag=flag, key=key, spec=_validated(data), action="flag.update", actor=actor,
                  reason=changes.reason, incident_id=changes.incident_id,
                  expires_at=expiry_time(duration=changes.for_, expires_at=changes.expires_at))


def set_flag_state(
    session: Session, *, key: str, environment: str, actor: Actor, enabled: bool | None = None,
    default_variant: str | None = None, rules: list[Rule] | None = None, duration: timedelta | None = None,
    expires_at: datetime | None = None, reason: str | None = None, incident_id: str | None = None,
    if_match: int | None = None,
) -> FlagVersion:
    """Turn a flag on or off, or change its default or rules, in one environment, optionally for a while."""
    patch = EnvironmentPatch.model_validate({k: v for k, v in {"enabled": enabled, "default_variant": default_variant,
                                                               "rules": rules}.items() if v is not None})
    changes = FlagUpdate.model_validate({"environments": {environment: patch}, "reason": reason,
                                         "incident_id": incident_id, "for": duration, "expires_at": expires_at})
    return update_flag(session, key=key, changes=changes, actor=actor, if_match=if_match)


def rollback(session: Session, *, key: str, to_version: int, actor: Actor, reason: str | None = None,
             incident_id: str | None = None, duration: timedelta | None = None,
             expires_at: datetime | None = None, if_match: int | None = None,
             keep_metadata: tuple[str, ...] = ()) -> FlagVersion:
    """Write a new version equal to version N (a deleted flag comes back if N was not deleted); fields named
    in keep_metadata (description, owner, tags) keep their current values."""
    flag = _locked(session, key)
    if flag is None:
        raise NotFound(f"no flag {key!r}")
    _check_precondition(flag, if_match)
    target = get_version(session, key=key, version=to_version)
    spec = dict(target.spec)
    if spec.get("off_variant") is None and flag.spec.get("off_variant") in spec.get("variants", {}):
        spec["off_variant"] = flag.spec["off_variant"]  # a version written before flags had one
    for name in keep_metadata:
        if name in flag.spec:
            spec[name] = flag.spec[name]
    return _write(session, flag=flag, key=key, spec=_validated(spec), action="flag.rollback", actor=actor,
                  reason=reason or f"rollback to version {to_version}", incident_id=incident_id,
                  expires_at=expiry_time(duration=duration, expires_at=expires_at))


def set_deleted(session: Session, *, key: str, deleted: bool, actor: Actor, reason: str | None = None,
                incident_id: str | None = None, if_match: int | None = None) -> FlagVersion:
    """Soft-delete a flag (it stops evaluating), or undo that; both are versions like any other change."""
    flag = _locked(session, key)
    if flag is None or flag.deleted == deleted:
        if flag is None:
            raise NotFound(f"no flag {key!r}")
        raise Conflict(f"flag {key!r} is {'already deleted' if deleted else 'not deleted'}")
    _check_precondition(flag, if_match)
    spec = _validated({**flag.spec, "deleted": deleted})
    return _write(session, flag=flag, key=key, spec=spec, action="flag.delete" if deleted else "flag.restore",
                  actor=actor, reason=reason, incident_id=incident_id, expires_at=None)


def revert_expiry(session: Session, *, expiry_id: int) -> FlagVersion | None:
    """Apply one due expiry, once: the flag returns to the version before the temporary change.

    Safe to call from several processes at once: the flag row lock orders them, and only the call that
    still sees the expiry pending acts on it.
    """
    expiry = session.get(FlagExpiry, expiry_id)
    if expiry is None:
        return None
    flag = _locked(session, expiry.flag_key)
    session.refresh(expiry)
    if flag is None or expiry.status != ExpiryStatus.pending.value:
        return None
    system = Actor.system()
    reason = (f"temporary change (version {expiry.version}) expired"
              + (f": {expiry.reason}" if expiry.reason else ""))
    if flag.version != expiry.version:
        # Normally marked superseded at the later write; kept for rows written before that rule existed.
        expiry.status, expiry.resolved_at = ExpiryStatus.superseded.value, utcnow()
        expiry.resolution = f"flag is at version {flag.version}, past the temporary version {expiry.version}"
        session.add(expiry)
        audit.record(session, actor=system, action="flag.expiry_dropped", target_type="flag",
                     target_id=flag.key, reason=expiry.resolution, incident_id=expiry.incident_id)
        return None
    if expiry.revert_to == 0:
        spec = _validated({**flag.spec, "deleted": True})  # the temporary change created the flag
    else:
        spec = _validated(get_version(session, key=flag.key, version=expiry.revert_to).spec)
    expiry.status, expiry.resolved_at = ExpiryStatus.applied.value, utcnow()
    expiry.resolution = f"reverted to version {expiry.revert_to}"
    session.add(expiry)
    return _write(session, flag=flag, key=flag.key, spec=spec, action="flag.expire", actor=system,
                  reason=reason, incident_id=expiry.incident_id, expires_at=None)


def due_expiries(session: Session, *, now: datetime | None = None, limit: int = 200) -> list[int]:
    """Ids of pending expiries whose time has come, oldest first."""
    stmt = (select(FlagExpiry.id).where(FlagExpiry.status == ExpiryStatus.pending.value,
                                        col(FlagExpiry.expires_at) <= (now or utcnow()))
            .order_by(col(FlagExpiry.expires_at)).limit(limit))
    return [i for i in session.exec(stmt) if i is not None]
