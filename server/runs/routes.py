from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from sse_starlette.sse import EventSourceResponse

from server.audit import service as audit
from server.auth.models import Actor, Role, Source
from server.db import SessionDep, engine_of
from server.deps import Operator, RedisDep, SettingsDep, Viewer, redis_of, settings_of, slots_of
from server.errors import Forbidden, InvalidInput, NotFound
from server.ids import MAX_ID, PathId, parse_id
from server.redaction import MASK
from server.runbooks import service as runbooks
from server.runs import artifacts, service, stream, views
from server.runs.models import (
    CancelRequest,
    DecisionRequest,
    RerunRequest,
    Run,
    RunCreate,
    RunPage,
    RunPublic,
    RunStatus,
    StepRun,
)

router = APIRouter(prefix="/api/v1/runs", tags=["runs"])
links_router = APIRouter(tags=["runs"])


def _response(request: Request, session: SessionDep, run: Run, status_code: int,
              steps: list[StepRun] | None = None) -> Response:
    assert run.id is not None
    if steps is None:
        steps = service.steps_of(session, run_id=run.id)
    body = views.public(run, steps, settings_of(request), _artifact_list(request, session, run, steps))
    return Response(body.model_dump_json(), status_code=status_code, media_type="application/json")


def _artifact_list(request: Request, session: SessionDep, run: Run, steps: list[StepRun]
                   ) -> list[artifacts.ArtifactInfo]:
    """A run no step of which has started has no artifacts: a new run's 202 costs no query for them."""
    if run.id is None or all(s.started_at is None for s in steps):
        return []
    return artifacts.list_artifacts(session, settings_of(request), run.id)


def _without_secrets(body: RunCreate, session: SessionDep, request: Request) -> dict[str, Any]:
    """The body as its hash sees it: secret params masked, so runs.request_hash (an unsalted SHA-256) cannot
    be used to guess a short secret (a 4-digit pin) offline. Params of an unknown runbook are all masked."""
    dumped = body.model_dump(mode="json")
    try:
        entry = runbooks.get_runbook(session, store=runbooks.store_for(settings_of(request).runbooks_dir),
                                     runbook_id=body.runbook)
        secret = entry.checked.runbook.secret_params() if entry.checked.runbook else set(dumped["params"])
    except NotFound:
        secret = set(dumped["params"])
    dumped["params"] = {k: (MASK if k in secret else v) for k, v in dumped["params"].items()}
    return dumped


@router.post("", status_code=202, response_model=RunPublic)
def create_run(body: RunCreate, request: Request, session: SessionDep, actor: Operator,
               idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> Response:
    body_hash = service.request_hash(_without_secrets(body, session, request))
    if idempotency_key:
        existing = service.find_idempotent(session, key=idempotency_key, body_hash=body_hash)
        if existing is not None:
            return _response(request, session, existing, 202)
    settings = settings_of(request)
    entry = runbooks.get_runbook(session, store=runbooks.store_for(settings.runbooks_dir), runbook_id=body.runbook)
    try:
        run, steps = service.create_run(session, checked=entry.checked, given=body.params, actor=actor,
                                        settings=settings, incident_id=body.incident_id, dry_run=body.dry_run,
                                        idempotency_key=idempotency_key, body_hash=body_hash)
        assert run.id is not None
        # No live publish of run.queued: nobody can follow a run before knowing its id; followers read it stored.
        service.send_after_commit(session, settings, run_id=run.id, queue=run.queue)
        session.commit()
    except IntegrityError:
        # Two requests with one Idempotency-Key raced: the other one won (its insert raises here, at the
        # flush or at the commit), so answer with its run.
        session.rollback()
        existing = service.find_idempotent(session, key=idempotency_key or "", body_hash=body_hash)
        if existing is None:
            raise
        return _response(request, session, existing, 202)
    return _response(request, session, run, 202, steps)


@router.get("", response_model=RunPage)
def list_runs(
    session: SessionDep, _actor: Viewer,
    runbook: str | None = None,
    status: Annotated[str | None, Query(description="one status or several, comma-separated")] = None,
    actor: str | None = None, incident_id: str | None = None,
    since: Annotated[str | None, Query(description="ISO 8601 time")] = None,
    until: Annotated[str | None, Query(description="ISO 8601 time")] = None,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> RunPage:
    from datetime import datetime

    if status:
        bad = [s for s in status.split(",") if s not in RunStatus.__members__]
        if bad:
            raise InvalidInput(f"unknown status {bad[0]!r}; use one of {', '.join(RunStatus)}",
                               details=[{"field": "status", "message": "unknown status"}])
    before_id = parse_id(cursor, "cursor", "the next_cursor of a previous page") if cursor is not None else None
    try:
        window = [datetime.fromisoformat(v) if v else None for v in (since, until)]
    except ValueError as exc:
        raise InvalidInput(f"since/until must be ISO 8601 times: {exc}",
                           details=[{"field": "since", "message": str(exc)}]) from None
    filters = service.RunFilter(runbook=runbook, status=status, actor=actor, incident_id=incident_id,
                                since=window[0], until=window[1])
    runs = service.list_runs(session, filters=filters, before_id=before_id, limit=limit + 1)
    page = runs[:limit]
    return RunPage(items=[views.summary(r) for r in page],
                   next_cursor=str(page[-1].id) if len(runs) > limit else None)


@router.get("/{run_id}", response_model=RunPublic)
def get_run(run_id: PathId, request: Request, session: SessionDep, _actor: Viewer) -> RunPublic:
    run = service.get_run(session, run_id=run_id)
    return views.public(run, service.steps_of(session, run_id=run_id), settings_of(request),
                        artifacts.list_artifacts(session, settings_of(request), run_id))


@router.post("/{run_id}/cancel", response_model=RunPublic)
def cancel_run(run_id: PathId, request: Request, client: RedisDep, settings: SettingsDep, session: SessionDep,
               actor: Operator, body: CancelRequest | None = None) -> Response:
    run = service.cancel(session, run_id=run_id, actor=actor, reason=body.reason if body else None,
                         settings=settings, client=client)
    session.commit()  # publishes the events and tells the worker (service.announce_cancel)
    return _response(request, session, run, 202 if run.status == RunStatus.running else 200)


def _decide(run_id: int, step_id: str, request: Request, session: SessionDep, actor: Operator,
            body: DecisionRequest | None, approve: bool) -> Response:
    run = service.decide(session, run_id=run_id, step_id=step_id, actor=actor, approve=approve,
                         reason=body.reason if body else None, settings=settings_of(request),
                         client=redis_of(request))
    session.commit()  # publishes the decision and sends the run (service.decide)
    return _response(request, session, run, 202)


@router.post("/{run_id}/steps/{step_id}/approve", status_code=202, response_model=RunPublic)
def approve_step(run_id: PathId, step_id: str, request: Request, session: SessionDep, actor: Operator,
                 body: DecisionRequest | None = None) -> Response:
    return _decide(run_id, step_id, request, session, actor, body, True)


@router.post("/{run_id}/steps/{step_id}/reject", status_code=202, response_model=RunPublic)
def reject_step(run_id: PathId, step_id: str, request: Request, session: SessionDep, actor: Operator,
                body: DecisionRequest | None = None) -> Response:
    return _decide(run_id, step_id, request, session, actor, body, False)


@router.post("/{run_id}/rerun", status_code=202, response_model=RunPublic)
def rerun(run_id: PathId, request: Request, settings: SettingsDep, session: SessionDep, actor: Operator,
          body: RerunRequest | None = None) -> Response:
    run = service.rerun(session, run_id=run_id, actor=actor, overrides=body.params if body else {},
                        settings=settings)
    assert run.id is not None
    # No live publish of run.queued: nobody can follow a run before knowing its id; followers read it stored.
    service.send_after_commit(session, settings, run_id=run.id, queue=run.queue)
    session.commit()
    return _response(request, session, run, 202)


def _check_exists(session: Session, run_id: int) -> None:
    service.get_run(session, run_id=run_id)
    # The request's session (shared with the auth dependency) would stay open, and on SQLite keep the
    # write lock, for as long as the response streams: end it now.
    session.close()


@router.get("/{run_id}/events")
def run_events(run_id: PathId, request: Request, settings: SettingsDep, session: SessionDep, _actor: Viewer,
               last_event_id: Annotated[str | None, Header()] = None,
               after: Annotated[int, Query(ge=0, le=MAX_ID, description="only events after this id")] = 0
               ) -> EventSourceResponse:
    after_id = parse_id(last_event_id, "Last-Event-ID", "an event id of this stream") if last_event_id else after
    _check_exists(session, run_id)  # 404 before the stream starts
    slots = slots_of(request)
    holder = slots.take(_actor)
    return EventSourceResponse(slots.hold(holder, stream.follow(request, settings, run_id, after_id)), ping=15)


@router.get("/{run_id}/artifacts", response_model=list[artifacts.ArtifactInfo])
def list_artifacts(run_id: PathId, request: Request, session: SessionDep, _actor: Viewer
                   ) -> list[artifacts.ArtifactInfo]:
    service.get_run(session, run_id=run_id)
    return artifacts.list_artifacts(session, settings_of(request), run_id)


ARTIFACT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The artifact's bytes, streamed from the database, with the Content-Type of its name "
                         "(text/plain, image/svg+xml, application/json...) and its SHA-256 as ETag",
          "content": {"*/*": {}}},
    304: {"description": "Not modified: If-None-Match named the artifact's ETag"}}


@router.get("/{run_id}/artifacts/{name}", response_class=Response, responses=ARTIFACT_RESPONSES)
def download_artifact(run_id: PathId, name: str, request: Request, session: SessionDep, _actor: Viewer
                      ) -> Response:
    service.get_run(session, run_id=run_id)
    found = artifacts.find(session, run_id, name)
    engine = engine_of(session)
    # The request's session would stay open (on SQLite, holding the write lock) while the bytes stream: end it.
    session.close()
    return artifacts.respond(engine, found, request.headers.get("if-none-match"))


class LinkRequest(BaseModel):
    model_config = {"extra": "forbid"}

    name: str | None = Field(default=None, max_length=200, description="one artifact; none: all of the run's")


@router.post("/{run_id}/artifacts/link", response_model=artifacts.ArtifactLink)
def link_artifacts(run_id: PathId, request: Request, session: SessionDep, actor: Viewer,
                   body: LinkRequest | None = None) -> artifacts.ArtifactLink:
    """A short-lived signed link (RUNBOOKD_ARTIFACT_LINK_TTL) that opens without a bearer header."""
    name = body.name if body else None
    settings = settings_of(request)
    service.get_run(session, run_id=run_id)
    if name is not None:
        artifacts.find(session, run_id, name)
    link = artifacts.sign(settings, redis_of(request), run_id=run_id, name=name, by=actor.name,
                          base_url=str(request.base_url))
    audit.record(session, actor=actor, action="artifact.link", target_type="run", target_id=run_id,
                 after={"artifact": name or "*", "expires_at": link.expires_at.isoformat()})
    session.commit()
    return link


def _open_link(request: Request, session: Session, token: str, name: str | None) -> Response:
    settings = settings_of(request)
    signed = artifacts.verify(settings, redis_of(request), token)
    run_id, signed_name, by = signed["run"], signed.get("name"), str(signed.get("by"))
    if signed_name is not None and name is not None and name != signed_name:
        raise Forbidden(f"this link opens {signed_name!r} only")
    name = name or signed_name
    who = Actor(name=f"link from {by}"[:200], role=Role.viewer, source=Source.api)
    if name is None:
        items = artifacts.list_artifacts(session, settings, run_id)
        audit.record(session, actor=who, action="artifact.open", target_type="run", target_id=run_id,
                     after={"artifact": "*"})
        session.commit()
        base = str(request.url).split("?")[0].rstrip("/")
        page = artifacts.index_page(run_id, [(a, f"{base}/{a.name}") for a in items])
        return Response(page, media_type="text/html; charset=utf-8",
                        headers={k: v for k, v in artifacts.headers_for("index.txt").items()
                                 if k not in ("Content-Type", "Content-Disposition")})
    found = artifacts.find(session, run_id, name)
    audit.record(session, actor=who, action="artifact.open", target_type="run", target_id=run_id,
                 after={"artifact": name, "size": found.size})
    session.commit()
    engine = engine_of(session)
    session.close()
    return artifacts.respond(engine, found, request.headers.get("if-none-match"))


@links_router.get("/a/{token}", summary="Open a signed artifact link (no token needed until it expires)")
def open_link(token: str, request: Request, session: SessionDep) -> Response:
    return _open_link(request, session, token, None)


@links_router.get("/a/{token}/{name}", summary="One artifact through a run's signed link", response_class=Response,
                  responses=ARTIFACT_RESPONSES)
def open_link_artifact(token: str, name: str, request: Request, session: SessionDep) -> Response:
    return _open_link(request, session, token, name)
