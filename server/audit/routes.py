from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from server.audit import service
from server.audit.models import AuditEventPublic, AuditPage
from server.db import SessionDep
from server.deps import Viewer
from server.ids import parse_id

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


@router.get("", response_model=AuditPage)
def list_audit_events(
    session: SessionDep,
    _actor: Viewer,
    actor: str | None = None,
    action: Annotated[str | None, Query(description="exact, or a prefix ending in * (token.*)")] = None,
    target_type: str | None = None,
    target_id: str | None = None,
    incident_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditPage:
    before_id = parse_id(cursor, "cursor", "the next_cursor value of a previous page") if cursor is not None else None
    filters = service.AuditFilter(actor=actor, action=action, target_type=target_type, target_id=target_id,
                                  incident_id=incident_id, since=since, until=until)
    events = service.query(session, filters=filters, before_id=before_id, limit=limit + 1)
    page = events[:limit]
    next_cursor = str(page[-1].id) if len(events) > limit else None
    return AuditPage(items=[AuditEventPublic.model_validate(e, from_attributes=True) for e in page],
                     next_cursor=next_cursor)
