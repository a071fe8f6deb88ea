"""Open, change and find incidents. Every change is audited under the incident's own id."""

from __future__ import annotations

from sqlmodel import Session, col, select

from server.audit import service as audit
from server.auth.models import Actor
from server.errors import InvalidInput, NotFound
from server.incidents.models import (
    Incident,
    IncidentCreate,
    IncidentPublic,
    IncidentStatus,
    IncidentUpdate,
    incident_number,
)
from server.models_base import utcnow


def _snapshot(incident: Incident) -> dict[str, object]:
    return IncidentPublic.of(incident).model_dump(mode="json")


def open_incident(session: Session, *, body: IncidentCreate, actor: Actor) -> Incident:
    """Open an incident; the actor is its commander unless one is named."""
    incident = Incident(title=body.title, severity=body.severity.value, commander=body.commander or actor.name,
                        summary=body.summary, channel=body.channel, opened_by=actor.name)
    session.add(incident)
    session.flush()
    audit.record(session, actor=actor, action="incident.open", target_type="incident", target_id=incident.key,
                 after=_snapshot(incident), incident_id=incident.key)
    return incident


def get_incident(session: Session, *, ref: str | int) -> Incident:
    """An incident by INC-<n> or <n>."""
    number = incident_number(ref)
    incident = session.get(Incident, number) if number is not None else None
    if incident is None:
        raise NotFound(f"no incident {ref!r}; incident ids look like INC-12")
    return incident


def resolve_ref(session: Session, *, ref: str | None) -> str | None:
    """Normalise an incident reference given with a run, flag change or override (7 -> INC-7); it must exist.

    An unknown incident is a 422 naming the incident_id field: the request is wrong, not the URL.
    """
    if ref is None or ref == "":
        return None
    number = incident_number(ref)
    incident = session.get(Incident, number) if number is not None else None
    if incident is None:
        raise InvalidInput(f"no incident {ref!r}; open it first (incident ids look like INC-12)",
                           details=[{"field": "incident_id", "message": "unknown incident"}])
    return incident.key


def list_incidents(session: Session, *, status: IncidentStatus | None = None, limit: int = 50) -> list[Incident]:
    """Newest first."""
    stmt = select(Incident).order_by(col(Incident.id).desc()).limit(limit)
    if status is not None:
        stmt = stmt.where(Incident.status == status.value)
    return list(session.exec(stmt))


def open_incident_for_channel(session: Session, *, channel: str) -> Incident | None:
    """The newest unresolved incident linked to a chat channel: chat commands there are filed under it."""
    return session.exec(
        select(Incident).where(Incident.channel == channel, Incident.status != IncidentStatus.resolved.value)
        .order_by(col(Incident.id).desc())
    ).first()


def update_incident(session: Session, *, ref: str | int, body: IncidentUpdate, actor: Actor) -> Incident:
    """Change fields or status; status moves stamp mitigated_at / resolved_at."""
    incident = get_incident(session, ref=ref)
    before = _snapshot(incident)
    changes = body.model_dump(exclude_unset=True, exclude={"reason"})
    if not changes:
        raise InvalidInput("nothing to change: give at least one of title, severity, status, commander, summary, "
                           "channel")
    now = utcnow()
    status = changes.pop("status", None)
    for name, value in changes.items():
        setattr(incident, name, value.value if hasattr(value, "value") else value)
    if status is not None and status != incident.status:
        if status in (IncidentStatus.mitigated, IncidentStatus.resolved) and incident.mitigated_at is None:
            incident.mitigated_at = now
        if status == IncidentStatus.resolved:
            incident.resolved_at = now
        if status == IncidentStatus.open:
            incident.resolved_at = None
        incident.status = status.value
    session.add(incident)
    session.flush()
    moved = status is not None and before["status"] != status.value
    action = f"incident.{status.value}" if moved and status is not None else "incident.update"
    audit.record(session, actor=actor, action=action, target_type="incident", target_id=incident.key,
                 before=before, after=_snapshot(incident), reason=body.reason, incident_id=incident.key)
    return incident
