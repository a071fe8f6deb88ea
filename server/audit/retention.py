"""Retention: archive old audit events to JSONL, remove them, and keep the rest of the chain verifiable.

The newest removed event's id and hash become the checkpoint in audit_head, where `verify` starts.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import orjson
from sqlalchemy import delete, func
from sqlmodel import Session, col, select

from server.audit import service as audit
from server.audit.models import AuditEvent, AuditEventPublic
from server.auth.models import Actor
from server.errors import Conflict
from server.models_base import utcnow


@dataclass
class PruneResult:
    removed: int
    through_id: int | None = None
    archive: Path | None = None


def prune(session: Session, *, older_than: timedelta, archive_dir: Path, actor: Actor,
          now: datetime | None = None) -> PruneResult:
    """Archive and remove events older than `older_than`; refuses if the chain to be removed is broken."""
    head = audit.locked_head(session)
    cutoff = (now or utcnow()) - older_than
    through = session.exec(select(func.max(AuditEvent.id)).where(col(AuditEvent.ts) < cutoff)).one()
    if through is None or through <= head.checkpoint_id:
        return PruneResult(removed=0)
    archive_dir.mkdir(parents=True, exist_ok=True)
    path = archive_dir / f"audit-{head.checkpoint_id + 1:012d}-{through:012d}.jsonl.gz"
    prev_hash, removed = head.checkpoint_hash, 0
    # Written and fsynced before the delete commits; a failed commit leaves a file that the next run rewrites.
    with gzip.open(path, "wb") as out:
        for event in audit.iter_events(session):
            assert event.id is not None
            if event.id <= head.checkpoint_id:
                continue
            if event.id > through:
                break
            if event.prev_hash != prev_hash or audit.event_hash(event, prev_hash) != event.hash:
                raise Conflict(f"audit event {event.id} fails verification; refusing to remove evidence. "
                               "Run `runbookd audit verify`.")
            out.write(orjson.dumps(AuditEventPublic.model_validate(event, from_attributes=True)
                                   .model_dump(mode="json")) + b"\n")
            prev_hash, removed = event.hash, removed + 1
        out.flush()
    with path.open("rb") as fh:
        os.fsync(fh.fileno())
    session.exec(delete(AuditEvent).where(col(AuditEvent.id) <= through))
    head = audit.locked_head(session)
    head.checkpoint_id, head.checkpoint_hash = through, prev_hash
    session.add(head)
    audit.record(session, actor=actor, action="audit.prune", target_type="audit", target_id=str(through),
                 after={"removed": removed, "through_id": through, "archive": path.name,
                        "checkpoint_hash": prev_hash, "older_than_days": older_than.total_seconds() / 86400})
    return PruneResult(removed=removed, through_id=through, archive=path)
