from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from server.db import SessionDep
from server.deps import Operator, RedisDep, SettingsDep, Viewer
from server.flags.cache import announce_change
from server.incidents import history, service
from server.incidents import rollback as undo
from server.incidents.models import IncidentCreate, IncidentPublic, IncidentStatus, IncidentUpdate, TimelineEntry
from server.loglevels.sync import announce as announce_loglevels

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


@router.get("/{ref}/timeline", response_model=list[TimelineEntry])
def incident_timeline(ref: str, session: SessionDep, _actor: Viewer) -> list[TimelineEntry]:
    return history.timeline(session, incident=service.get_incident(session, ref=ref))


class RollbackRequest(BaseModel):
    model_config = {"extra": "forbid"}

    dry_run: bool = False
    force: bool = False  # restore flags changed outside the incident too (metadata-only changes never conflict)


@router.post("/{ref}/rollback")
def rollback_incident(ref: str, body: RollbackRequest, settings: SettingsDep, client: RedisDep, session: SessionDep,
                      actor: Operator) -> dict[str, Any]:
    """Revert every change made under the incident that is still in effect (dry_run: only say what)."""
    incident = service.get_incident(session, ref=ref)
    services: set[str] = set()
    result = undo.rollback(session, incident=incident, actor=actor, dry_run=body.dry_run, force=body.force,
                           on_flag_change=lambda key, version: announce_change(session, settings, client, key=key,
                                                                               version=version),
                           on_loglevel_change=services.add)
    announce_loglevels(session, client, settings, services)  # reads `services` now, filled by the rollback
    session.commit()
    return result.as_dict()


@router.get("/{ref}/report", response_model=None)
def incident_report(ref: str, session: SessionDep, _actor: Viewer,
                    format: Literal["md", "json"] = "md") -> PlainTextResponse | dict[str, Any]:
    data = history.report(session, incident=service.get_incident(session, ref=ref))
    if format == "json":
        return data
    return PlainTextResponse(history.report_markdown(data), media_type="text/markdown; charset=utf-8")
