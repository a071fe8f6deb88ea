"""Write, query and verify the audit log. Every mutation calls record() inside its own transaction."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, func, insert, update
from sqlmodel import Session, col, select

from server.audit.models import GENESIS_HASH, AuditEvent, AuditHead
from server.auth.models import Actor
from server.context import request_id_var
from server.models_base import as_utc, utcnow
from server.redaction import redact

HASHED_FIELDS = (
    "id", "ts", "actor", "source", "action", "target_type", "target_id",
    "before", "after", "reason", "incident_id", "request_id",
)


def event_hash(event: AuditEvent, prev_hash: str) -> str:
    """SHA-256 over the previous hash and a canonical JSON of the event's fields."""
    fields: dict[str, Any] = {name: getattr(event, name) for name in HASHED_FIELDS}
    fields["ts"] = as_utc(event.ts).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    canonical = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical).hexdigest()


def locked_head(session: Session) -> AuditHead:
    # FOR UPDATE serialises writers on PostgreSQL, so ids, commit order and the chain agree;
    # SQLite transactions already hold the write lock (BEGIN IMMEDIATE, see server.db).
    head = session.exec(select(AuditHead).where(AuditHead.id == 1).with_for_update()).one_or_none()
    if head is None:
        head = AuditHead(id=1)
        session.add(head)
        session.flush()
    return head


_HEAD = AuditHead.__table__  # type: ignore[attr-defined]
_LOCK_HEAD = select(_HEAD.c.last_id, _HEAD.c.last_hash).where(_HEAD.c.id == 1).with_for_update()
_CREATE_HEAD = insert(_HEAD).returning(_HEAD.c.last_id, _HEAD.c.last_hash)
_INSERT_EVENT = insert(AuditEvent.__table__)  # type: ignore[attr-defined]
_MOVE_HEAD = update(_HEAD).where(_HEAD.c.id == 1).values(last_id=bindparam("new_id"), last_hash=bindparam("new_hash"))


def record(
    session: Session,
    *,
    actor: Actor,
    action: str,
    target_type: str,
    target_id: str | int | None = None,
    before: Any = None,
    after: Any = None,
    reason: str | None = None,
    incident_id: str | None = None,
) -> AuditEvent:
    """Append one event to the chain in the caller's transaction; secrets in before/after are masked.

    Written with Core statements (this is on every mutation's path): the head row is locked, the event
    gets the id after the head's, so its hash is known before the insert, and the head moves on. The
    caller's pending changes are flushed first, so the lock is held only for these three statements
    and the commit.
    """
    session.flush()
    conn = session.connection()  # Core statements on the session's connection skip the ORM's execute path
    head = conn.execute(_LOCK_HEAD).one_or_none()
    if head is None:  # the first event ever: the head row starts at AuditHead's defaults (the genesis)
        head = conn.execute(_CREATE_HEAD).one()
    last_id, last_hash = head.last_id, head.last_hash
    event = AuditEvent(
        id=last_id + 1,
        ts=utcnow(),
        actor=actor.name,
        source=actor.source.value,
        action=action,
        target_type=target_type,
        target_id=None if target_id is None else str(target_id),
        before=redact(before),
        after=redact(after),
        reason=reason,
        incident_id=incident_id,
        request_id=request_id_var.get(),
        prev_hash=last_hash,
        hash="",
    )
    event.hash = event_hash(event, last_hash)
    conn.execute(_INSERT_EVENT, {name: getattr(event, name) for name in (*HASHED_FIELDS, "prev_hash", "hash")})
    conn.execute(_MOVE_HEAD, {"new_id": event.id, "new_hash": event.hash})
    return event


@dataclass
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    incident_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def query(session: Session, *, filters: AuditFilter, before_id: int | None, limit: int) -> list[AuditEvent]:
    """Newest first; paging by id is stable because new events always get larger ids."""
    stmt = select(AuditEvent)
    if filters.actor:
        stmt = stmt.where(AuditEvent.actor == filters.actor)
    if filters.action:
        if filters.action.endswith("*"):
            stmt = stmt.where(col(AuditEvent.action).startswith(filters.action[:-1]))
        else:
            stmt = stmt.where(AuditEvent.action == filters.action)
    if filters.target_type:
        stmt = stmt.where(AuditEvent.target_type == filters.target_type)
    if filters.target_id:
        stmt = stmt.where(AuditEvent.target_id == filters.target_id)
    if filters.incident_id:
        stmt = stmt.where(AuditEvent.incident_id == filters.incident_id)
    if filters.since:
        stmt = stmt.where(col(AuditEvent.ts) >= filters.since)
    if filters.until:
        stmt = stmt.where(col(AuditEvent.ts) < filters.until)
    if before_id is not None:
        stmt = stmt.where(col(AuditEvent.id) < before_id)
    return list(session.exec(stmt.order_by(col(AuditEvent.id).desc()).limit(limit)))


def iter_events(session: Session, batch: int = 1000) -> Iterator[AuditEvent]:
    """Every event in chain order, fetched in batches so a long history does not fill memory."""
    last = 0
    while True:
        rows = session.exec(
            select(AuditEvent).where(col(AuditEvent.id) > last).order_by(col(AuditEvent.id)).limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].id or last
        session.expunge_all()


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    problem: str | None = None
    event_id: int | None = None


def verify(session: Session) -> VerifyResult:
    """Recompute the chain; name the first event that was altered, or where one was removed."""
    head = session.get(AuditHead, 1) or AuditHead(id=1)
    prev_hash, prev_id, checked = head.checkpoint_hash, head.checkpoint_id, 0
    for event in iter_events(session):
        assert event.id is not None
        if event.id <= head.checkpoint_id:
            continue
        if event.prev_hash != prev_hash:
            return VerifyResult(False, checked, f"event {event.id} does not follow event {prev_id}: an event "
                                f"between them was removed or altered", event.id)
        if event_hash(event, prev_hash) != event.hash:
            return VerifyResult(False, checked, f"event {event.id} ({event.action}) was altered: its content "
                                "no longer matches its hash", event.id)
        prev_hash, prev_id, checked = event.hash, event.id, checked + 1
    if head.last_id != prev_id or head.last_hash != prev_hash:
        return VerifyResult(False, checked, f"the newest event should be {head.last_id}, the chain ends at "
                            f"{prev_id}: events after {prev_id} were removed", head.last_id)
    return VerifyResult(True, checked)


def count(session: Session) -> int:
    return int(session.exec(select(func.count()).select_from(AuditEvent)).one())


__all__ = ["GENESIS_HASH", "AuditFilter", "VerifyResult", "count", "iter_events", "query", "record", "verify"]
