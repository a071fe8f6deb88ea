"""Raise a logger's level for a while, end it early, expire what is due, and say what is in effect."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlmodel import Session, col, select

from server.audit import service as audit
from server.auth.models import Actor
from server.durations import format_duration
from server.errors import InvalidInput, NotFound
from server.incidents import service as incidents
from server.loglevels.levels import VERBOSE, canonical
from server.loglevels.models import SERVER_SERVICE, LogLevelOverride, OverridePublic, ServiceLevels
from server.models_base import as_utc, utcnow
from server.settings import get_settings


def _target_type(service: str) -> str:
    return "server_logger" if service == SERVER_SERVICE else "loglevel"


def _is_live(row: LogLevelOverride, now: datetime) -> bool:
    # An expiry that has passed counts as ended even before beat writes it down, so levels revert on time.
    return row.ended_at is None and (row.expires_at is None or as_utc(row.expires_at) > now)


def public(row: LogLevelOverride, *, effective: bool = False, now: datetime | None = None) -> OverridePublic:
    # getattr, not model_dump(): a table model leaves columns never assigned (ended_at...) out of its dump.
    fields = {name: getattr(row, name) for name in LogLevelOverride.model_fields}
    return OverridePublic.model_validate({**fields, "active": _is_live(row, now or utcnow()), "effective": effective})


def _snapshot(row: LogLevelOverride | None, *, effective: bool = False) -> dict[str, Any] | None:
    return None if row is None else public(row, effective=effective).model_dump(mode="json")


def _live_rows(session: Session, *, service: str | None, now: datetime,
               logger: str | None = None) -> list[LogLevelOverride]:
    stmt = select(LogLevelOverride).where(col(LogLevelOverride.ended_at).is_(None))
    if service is not None:
        stmt = stmt.where(LogLevelOverride.service == service)
    if logger is not None:
        stmt = stmt.where(LogLevelOverride.logger == logger)
    rows = session.exec(stmt.order_by(col(LogLevelOverride.id))).all()
    return [row for row in rows if _is_live(row, now)]


def _winners(rows: list[LogLevelOverride]) -> dict[tuple[str, str], LogLevelOverride]:
    """Per (service, logger), the newest live override: it is the one in effect; older ones wait under it."""
    winners: dict[tuple[str, str], LogLevelOverride] = {}
    for row in rows:  # ascending id, so later rows replace earlier ones
        winners[(row.service, row.logger)] = row
    return winners


def raise_level(
    session: Session,
    *,
    service: str,
    logger: str,
    level: str,
    duration: timedelta | None,
    actor: Actor,
    reason: str | None = None,
    incident_id: str | None = None,
    max_duration: timedelta | None = None,
) -> LogLevelOverride:
    """Override one logger's level, for `duration` or until ended; the newest override on a logger wins."""
    try:
        level = canonical(level)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    limit = max_duration or get_settings().loglevel_max_duration
    if duration is None and level in VERBOSE:
        raise InvalidInput(f"{level} floods logs, so it needs `for` (e.g. 15m); at most {format_duration(limit)}")
    if duration is not None and duration > limit:
        raise InvalidInput(f"`for` {format_duration(duration)} is longer than the maximum {format_duration(limit)} "
                           "(RUNBOOKD_LOGLEVEL_MAX_DURATION)")
    now = utcnow()
    previous = _winners(_live_rows(session, service=service, logger=logger, now=now)).get((service, logger))
    incident_id = incidents.resolve_ref(session, ref=incident_id)
    row = LogLevelOverride(service=service, logger=logger, level=level, reason=reason, incident_id=incident_id,
                           created_by=actor.name, created_at=now,
                           expires_at=now + duration if duration is not None else None)
    session.add(row)
    session.flush()
    audit.record(session, actor=actor, action="loglevel.raise", target_type=_target_type(service),
                 target_id=f"{service}/{logger}", before=_snapshot(previous, effective=True),
                 after=_snapshot(row, effective=True), reason=reason, incident_id=incident_id)
    return row


def get_override(session: Session, *, override_id: int) -> LogLevelOverride:
    """One override by id, ended or not."""
    row = session.get(LogLevelOverride, override_id)
    if row is None:
        raise NotFound(f"no log-level override with id {override_id}")
    return row


def _end(session: Session, row: LogLevelOverride, *, actor: Actor, reason: str | None, end_reason: str) -> None:
    before = _snapshot(row)
    row.ended_at = utcnow()
    row.ended_by = actor.name
    row.end_reason = end_reason
    session.add(row)
    session.flush()
    audit.record(session, actor=actor, action=f"loglevel.{end_reason}", target_type=_target_type(row.service),
                 target_id=f"{row.service}/{row.logger}", before=before, after=_snapshot(row),
                 reason=reason, incident_id=row.incident_id)


def end_override(session: Session, *, override_id: int, actor: Actor, reason: str | None = None) -> LogLevelOverride:
    """End an override now (the early revert); ending one that already ended changes nothing."""
    row = session.exec(select(LogLevelOverride).where(LogLevelOverride.id == override_id)
                       .with_for_update()).one_or_none()
    if row is None:
        raise NotFound(f"no log-level override with id {override_id}")
    if row.ended_at is None:
        _end(session, row, actor=actor, reason=reason, end_reason="end")
    return row


def end_logger(session: Session, *, service: str, logger: str, actor: Actor,
               reason: str | None = None) -> list[LogLevelOverride]:
    """End every override on one logger, so it goes back to its own configuration."""
    rows = session.exec(select(LogLevelOverride).where(
        LogLevelOverride.service == service, LogLevelOverride.logger == logger,
        col(LogLevelOverride.ended_at).is_(None)).order_by(col(LogLevelOverride.id)).with_for_update()).all()
    for row in rows:
        _end(session, row, actor=actor, reason=reason, end_reason="end")
    return list(rows)


def expire_due(session: Session, *, now: datetime | None = None) -> list[LogLevelOverride]:
    """Write down, as the system, the end of every override whose time is up; returns those ended."""
    now = now or utcnow()
    # SKIP LOCKED: beat and a starting process may sweep at once on PostgreSQL; each row is ended once.
    rows = session.exec(select(LogLevelOverride).where(
        col(LogLevelOverride.ended_at).is_(None), col(LogLevelOverride.expires_at).is_not(None),
        col(LogLevelOverride.expires_at) <= now).order_by(col(LogLevelOverride.id))
        .with_for_update(skip_locked=True)).all()
    for row in rows:
        assert row.expires_at is not None
        lasted = format_duration(as_utc(row.expires_at) - as_utc(row.created_at))
        _end(session, row, actor=Actor.system(), reason=f"expired: the {lasted} asked for by {row.created_by} ended",
             end_reason="expire")
    return list(rows)


def list_overrides(session: Session, *, service: str | None = None, active: bool | None = True,
                   incident_id: str | None = None, limit: int = 200) -> list[OverridePublic]:
    """Overrides newest first; active=None includes ended ones. runbookd's own loggers only when asked."""
    now = utcnow()
    stmt = select(LogLevelOverride)
    stmt = stmt.where(LogLevelOverride.service == service) if service else stmt.where(
        LogLevelOverride.service != SERVER_SERVICE)
    if active:
        stmt = stmt.where(col(LogLevelOverride.ended_at).is_(None))
    if incident_id:
        stmt = stmt.where(LogLevelOverride.incident_id == incident_id)
    rows = [r for r in session.exec(stmt.order_by(col(LogLevelOverride.id).desc()).limit(limit))
            if not active or _is_live(r, now)]
    winners = {row.id for row in _winners(_live_rows(session, service=service, now=now)).values()}
    return [public(r, effective=r.id in winners, now=now) for r in rows]


def effective_levels(session: Session, *, service: str) -> ServiceLevels:
    """The level each overridden logger of `service` should have now, and when that next changes."""
    now = utcnow()
    winners = _winners(_live_rows(session, service=service, now=now))
    loggers = {logger: {"level": row.level, "override_id": row.id, "expires_at": row.expires_at}
               for (_service, logger), row in sorted(winners.items())}
    expiries = [(as_utc(r.expires_at) - now).total_seconds() for r in winners.values() if r.expires_at is not None]
    return ServiceLevels.model_validate({"service": service, "loggers": loggers,
                                         "poll_after_seconds": round(min(expiries), 3) if expiries else None})


def levels_etag(levels: ServiceLevels) -> str:
    """A strong ETag over what an agent applies (not the countdown, which changes every call)."""
    body = orjson.dumps(levels.model_dump(mode="json", exclude={"poll_after_seconds"}), option=orjson.OPT_SORT_KEYS)
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
