"""Incidents: list and open, the incident page with its timeline, undo (dry run first), resolve, report."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from pydantic import ValidationError
from sqlmodel import Session
from starlette.responses import Response

from server.db import SessionDep
from server.incidents import history, service
from server.incidents import routes as incidents_api
from server.incidents.models import IncidentCreate, IncidentStatus, IncidentUpdate, Severity
from server.ui.common import blank_to_none, field_errors, invalid, quoted, see_other
from server.ui.markdown import to_html
from server.ui.render import page
from server.ui.session import UiOperator, UiViewer

router = APIRouter(prefix="/ui", include_in_schema=False)


def _list_page(request: Request, session: Session, actor: Any, *, errors: dict[str, str] | None = None,
               form: dict[str, Any] | None = None, status_code: int = 200) -> Response:
    items = incidents_api.list_incidents(session, actor, status=None, limit=200)
    return page(request, "incidents.html", {"items": items, "severities": list(Severity), "errors": errors or {},
                                            "form": form or {}}, status_code=status_code)


@router.get("/incidents")
def incidents_page(request: Request, session: SessionDep, actor: UiViewer) -> Response:
    return _list_page(request, session, actor)


@router.post("/incidents")
def open_incident(request: Request, session: SessionDep, actor: UiOperator, title: Annotated[str, Form()] = "",
                  severity: Annotated[str, Form()] = "sev3", summary: Annotated[str, Form()] = "") -> Response:
    try:
        body = IncidentCreate.model_validate({"title": title.strip(), "severity": severity,
                                              "summary": blank_to_none(summary)})
    except ValidationError as exc:
        return _list_page(request, session, actor, errors=field_errors(invalid(exc).details),
                          form={"title": title, "severity": severity, "summary": summary}, status_code=422)
    incident = incidents_api.open_incident(body, session, actor)
    return see_other(f"/ui/incidents/{quoted(incident.id)}", f"{incident.id} opened")


def _incident_page(request: Request, session: Session, actor: Any, ref: str, *,
                   preview: dict[str, Any] | None = None, result: dict[str, Any] | None = None) -> Response:
    incident = incidents_api.get_incident(ref, session, actor)
    timeline = incidents_api.incident_timeline(ref, session, actor)
    report = history.report_markdown(history.report(session, incident=service.get_incident(session, ref=ref)))
    return page(request, "incident.html", {
        "incident": incident, "preview": preview,
        "timeline": [(e, history.loglevel_change(e.action, e.details, e.actor))
                     for e in sorted(timeline, key=lambda e: e.ts)],
        "result": result, "report": report, "report_html": to_html(report),
        "summary_html": to_html(incident.summary or ""), "resolved": incident.status == "resolved",
    })


@router.get("/incidents/{ref}")
def incident_page(ref: str, request: Request, session: SessionDep, actor: UiViewer) -> Response:
    return _incident_page(request, session, actor, ref)


@router.post("/incidents/{ref}/undo/preview")
def undo_preview(ref: str, request: Request, session: SessionDep, actor: UiOperator) -> Response:
    state = request.app.state
    preview = incidents_api.rollback_incident(ref, incidents_api.RollbackRequest(dry_run=True), state.settings,
                                              state.redis, session, actor)
    return _incident_page(request, session, actor, ref, preview=preview)


@router.post("/incidents/{ref}/undo")
def undo(ref: str, request: Request, session: SessionDep, actor: UiOperator) -> Response:
    state = request.app.state
    result = incidents_api.rollback_incident(ref, incidents_api.RollbackRequest(dry_run=False), state.settings,
                                             state.redis, session, actor)
    return _incident_page(request, session, actor, ref, result=result)


@router.post("/incidents/{ref}/resolve")
def resolve(ref: str, request: Request, session: SessionDep, actor: UiOperator,
            summary: Annotated[str, Form()] = "", reason: Annotated[str, Form()] = "") -> Response:
    body = IncidentUpdate.model_validate({"status": IncidentStatus.resolved, "summary": blank_to_none(summary),
                                          "reason": blank_to_none(reason)})
    incident = incidents_api.update_incident(ref, body, session, actor)
    return see_other(f"/ui/incidents/{quoted(incident.id)}", f"{incident.id} resolved")


@router.get("/incidents/{ref}/report.md")
def report_download(ref: str, request: Request, session: SessionDep, actor: UiViewer) -> Response:
    incident = service.get_incident(session, ref=ref)
    report = history.report_markdown(history.report(session, incident=incident))
    return Response(report.encode(), media_type="text/markdown; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{incident.key}-report.md"'})


