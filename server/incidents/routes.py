from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from server.db import SessionDep
from server.deps import Operator, Viewer
from server.incidents import service
from server.incidents.models import IncidentCreate, IncidentPublic, IncidentStatus, IncidentUpdate

router = APIRouter(prefix="/api/v1/incidents", tags=["incidents"])


@router.post("", status_code=201, response_model=IncidentPublic)
def open_incident(body: IncidentCreate, session: SessionDep, actor: Operator) -> IncidentPublic:
    incident = service.open_incident(session, body=body, actor=actor)
    session.commit()
    return IncidentPublic.of(incident)


@router.get("", response_model=list[IncidentPublic])
def list_incidents(session: SessionDep, _actor: Viewer, status: IncidentStatus | None = None,
                   limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[IncidentPublic]:
    return [IncidentPublic.of(i) for i in service.list_incidents(session, status=status, limit=limit)]


@router.get("/{ref}", response_model=IncidentPublic)
def get_incident(ref: str, session: SessionDep, _actor: Viewer) -> IncidentPublic:
    return IncidentPublic.of(service.get_incident(session, ref=ref))


@router.patch("/{ref}", response_model=IncidentPublic)
def update_incident(ref: str, body: IncidentUpdate, session: SessionDep, actor: Operator) -> IncidentPublic:
    incident = service.update_incident(session, ref=ref, body=body, actor=actor)
    session.commit()
    return IncidentPublic.of(incident)
