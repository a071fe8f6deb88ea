"""Runbooks (list, page, Run form) and runs (list, live page, approve/reject, cancel, rerun, artifacts).

Writes go through the REST API's own route functions (server.runs.routes), called as Python, or, for cancel,
approve and reject, through the same service functions the API calls (server.runs.service), which also
publish the run's events, tell its worker and send it on after the commit: no second code path.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Form, Header, Query, Request
from pydantic import ValidationError
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from server.db import SessionDep
from server.deps import redis_of, settings_of
from server.errors import DomainError, InvalidInput
from server.ids import PathId
from server.incidents import service as incidents
from server.incidents.models import IncidentStatus
from server.runbooks import routes as runbooks_api
from server.runs import routes as runs_api
from server.runs import service as runs
from server.runs.models import CancelRequest, DecisionRequest, RunCreate, RunStatus
from server.ui.common import blank_to_none, field_errors, invalid, see_other
from server.ui.render import page
from server.ui.session import UiOperator, UiViewer

router = APIRouter(prefix="/ui", include_in_schema=False)


# -- runbooks ----------------------------------------------------------------------------------------------
@router.get("/runbooks")
def runbooks_page(request: Request, session: SessionDep, actor: UiViewer, q: str = "", tag: str = "") -> Response:
    listing = runbooks_api.list_runbooks(request, session, actor)
    needle = q.strip().lower()
    items = [r for r in listing.items
             if (not needle or needle in f"{r.id} {r.title} {r.description or ''}".lower())
             and (not tag or tag in r.tags)]
    tags = sorted({t for r in listing.items for t in r.tags})
    return page(request, "runbooks.html", {"items": items, "problems": listing.problems, "q": q, "tag": tag,
                                           "tags": tags})


def _open_incidents(session: Any) -> list[Any]:
    return [i for i in incidents.list_incidents(session, limit=100) if i.status != IncidentStatus.resolved.value]


def _runbook_page(request: Request, session: Any, actor: Any, runbook_id: str, *, values: dict[str, Any] | None = None,
                  errors: dict[str, str] | None = None, message: str | None = None, status_code: int = 200) -> Response:
    detail = runbooks_api.get_runbook(runbook_id, request, session, actor)
    phases: dict[str, list[Any]] = {}  # "" holds the phase-less steps: one group, under no heading of its own
    for step in detail.steps:
        phases.setdefault(step.phase or "", []).append(step)
    return page(request, "runbook.html", {
        "rb": detail, "phases": phases, "values": values or {}, "errors": errors or {}, "message": message,
        "incidents": _open_incidents(session),
    }, status_code=status_code)


@router.get("/runbooks/{runbook_id}")
def runbook_page(runbook_id: str, request: Request, session: SessionDep, actor: UiViewer) -> Response:
    return _runbook_page(request, session, actor, runbook_id)


def _given(form: Any, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Params from the Run form (fields p.NAME): blanks are left out so defaults apply; returns the params to
    send and the values to show again (secrets never shown again)."""
    given: dict[str, Any] = {}
    shown: dict[str, Any] = {}
    for name, spec in params.items():
        value = form.get(f"p.{name}")
        if not isinstance(value, str) or value.strip() == "":
            continue
        given[name] = value.strip() if spec.get("type") != "string" else value
        if not spec.get("secret"):
            shown[name] = value
    return given, shown


@router.post("/runbooks/{runbook_id}/run")
async def start_run(runbook_id: str, request: Request, session: SessionDep, actor: UiOperator) -> Response:
    form = await request.form()
    detail = await run_in_threadpool(runbooks_api.get_runbook, runbook_id, request, session, actor)
    given, shown = _given(form, detail.params)
    incident = blank_to_none(str(form.get("incident_id") or ""))
    dry_run = form.get("dry_run") == "on"
    shown.update({"incident_id": incident or "", "dry_run": dry_run})
    try:
        try:
            body = RunCreate(runbook=detail.id, params=given, incident_id=incident, dry_run=dry_run)
        except ValidationError as bad:
            raise invalid(bad) from None
        response = await run_in_threadpool(runs_api.create_run, body, request, session, actor, None)
    except InvalidInput as exc:
        problem = exc
        return await run_in_threadpool(lambda: _runbook_page(
            request, session, actor, runbook_id, values=shown, errors=field_errors(problem.details, "params."),
            message=problem.message, status_code=422))
    run_id = orjson.loads(bytes(response.body))["id"]
    return see_other(f"/ui/runs/{run_id}")


# -- runs ----------------------------------------------------------------------------------------------------------
RUN_FILTERS = ("runbook", "status", "actor", "incident_id", "since", "until")


@router.get("/runs")
def runs_page(request: Request, session: SessionDep, actor: UiViewer, cursor: str | None = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50) -> Response:
    raw = {name: blank_to_none(request.query_params.get(name)) for name in RUN_FILTERS}
    errors: dict[str, str] = {}
    result = None
    try:
        result = runs_api.list_runs(session, actor, runbook=raw["runbook"], status=raw["status"], actor=raw["actor"],
                                    incident_id=raw["incident_id"], since=raw["since"], until=raw["until"],
                                    cursor=blank_to_none(cursor), limit=limit)
    except InvalidInput as exc:
        errors = field_errors(exc.details) or {"_": exc.message}
    return page(request, "runs.html", {
        "items": result.items if result else [], "next_cursor": result.next_cursor if result else None,
        "filters": raw, "query": {k: v for k, v in raw.items() if v}, "errors": errors, "limit": limit,
        "statuses": list(RunStatus),
    }, status_code=422 if errors else 200)


def _artifacts(listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run's artifacts (large step outputs, profiles, plots; the API's list); pictures are shown inline."""
    return [{"name": a["name"], "size": a["size"], "picture": a["content_type"].startswith("image/")}
            for a in listed]


def run_context(request: Request, session: Any, actor: Any, run_id: int) -> dict[str, Any]:
    run = runs_api.get_run(run_id, request, session, actor)
    return {"run": run, "artifacts": _artifacts(run.artifacts), "finished": run.status.finished}


@router.get("/runs/{run_id}")
def run_page(run_id: PathId, request: Request, session: SessionDep, actor: UiViewer) -> Response:
    return page(request, "run.html", run_context(request, session, actor, run_id))


@router.get("/runs/{run_id}/fragment")
def run_fragment(run_id: PathId, request: Request, session: SessionDep, actor: UiViewer) -> Response:
    """The run page's live part alone: the script swaps it in when the event stream says something changed."""
    return page(request, "run_live.html", run_context(request, session, actor, run_id))


@router.get("/runs/{run_id}/events")
def run_events(run_id: PathId, request: Request, session: SessionDep, actor: UiViewer,
               last_event_id: Annotated[str | None, Header()] = None,
               after: Annotated[int, Query(ge=0)] = 0) -> EventSourceResponse:
    """The API's event stream with the console's cookie (EventSource cannot send a bearer token)."""
    return runs_api.run_events(run_id, request, settings_of(request), session, actor, last_event_id, after)


@router.get("/runs/{run_id}/artifacts/{name}")
def run_artifact(run_id: PathId, name: str, request: Request, session: SessionDep, actor: UiViewer) -> Response:
    """The API's artifact download (its Content-Type and headers), for <img> and links with the cookie."""
    return runs_api.download_artifact(run_id, name, request, session, actor)


def _reason(value: str) -> str | None:
    return blank_to_none(value)


@router.post("/runs/{run_id}/cancel")
def cancel_run(run_id: PathId, request: Request, session: SessionDep, actor: UiOperator,
               reason: Annotated[str, Form()] = "") -> Response:
    body = CancelRequest(reason=_reason(reason))
    runs.cancel(session, run_id=run_id, actor=actor, reason=body.reason, settings=settings_of(request),
                client=redis_of(request))
    session.commit()
    return see_other(f"/ui/runs/{run_id}", "cancel requested")


@router.post("/runs/{run_id}/steps/{step_id}/{decision}")
def decide(run_id: PathId, step_id: str, decision: str, request: Request, session: SessionDep, actor: UiOperator,
           reason: Annotated[str, Form()] = "") -> Response:
    if decision not in ("approve", "reject"):
        raise InvalidInput(f"unknown decision {decision!r}; use approve or reject")
    body = DecisionRequest(reason=_reason(reason))
    runs.decide(session, run_id=run_id, step_id=step_id, actor=actor, approve=decision == "approve",
                reason=body.reason, settings=settings_of(request), client=redis_of(request))
    session.commit()
    return see_other(f"/ui/runs/{run_id}", f"step {step_id} {decision}d")


@router.post("/runs/{run_id}/rerun")
def rerun(run_id: PathId, request: Request, session: SessionDep, actor: UiOperator) -> Response:
    settings = settings_of(request)
    run = runs.rerun(session, run_id=run_id, actor=actor, overrides={}, settings=settings)
    assert run.id is not None
    runs.send_after_commit(session, settings, run_id=run.id, queue=run.queue)
    session.commit()
    return see_other(f"/ui/runs/{run.id}", f"rerun of run {run_id}")


__all__ = ["DomainError", "router", "runs"]
