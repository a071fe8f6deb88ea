"""/api/v1/loglevels (other services' overrides) and /debug/loggers (runbookd's own, Actuator-shaped)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlmodel import Session
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from server.aftercommit import on_commit
from server.auth.models import Actor, Role
from server.db import SessionDep
from server.deps import (
    Admin,
    EngineDep,
    LogLevelSyncDep,
    Operator,
    SettingsDep,
    StreamSlotsDep,
    Viewer,
    loglevel_sync_of,
    redis_of,
    require_role,
    settings_of,
)
from server.errors import DomainError
from server.ids import PathId
from server.loglevels import service as svc
from server.loglevels.levels import LEVELS, ROOT, get_logger, to_name
from server.loglevels.models import (
    LOGGER_PATTERN,
    SERVER_SERVICE,
    SERVICE_PATTERN,
    ActuatorLevel,
    OverrideCreate,
    OverridePublic,
    ServiceLevels,
)
from server.loglevels.sync import OwnLoggerSync, announce

router = APIRouter(prefix="/api/v1/loglevels", tags=["loglevels"])
debug_router = APIRouter(prefix="/debug/loggers", tags=["debug"])
# A service's agent reads its own overrides with the lowest role there is (the one flag clients use).
Client = Annotated[Actor, Depends(require_role(Role.client))]


class EventsUnavailable(DomainError):
    status_code = 503
    code = "unavailable"


def _commit(request: Request, session: Session, services: set[str]) -> None:
    """Commit, announcing the change to every process; this one applies its own loggers' change at once."""
    # The console calls the routes with their arguments, so the process's parts come from the request here.
    announce(session, redis_of(request), settings_of(request), services)
    sync = loglevel_sync_of(request)
    if sync is not None and SERVER_SERVICE in services:
        on_commit(session, sync.safe_refresh)  # this process answers with the new level at once
    session.commit()


@router.post("", status_code=201, response_model=OverridePublic)
def create_override(body: OverrideCreate, request: Request, settings: SettingsDep, session: SessionDep,
                    actor: Operator) -> OverridePublic:
    row = svc.raise_level(session, service=body.service, logger=body.logger, level=body.level,
                          duration=body.for_, actor=actor, reason=body.reason, incident_id=body.incident_id,
                          max_duration=settings.loglevel_max_duration)
    _commit(request, session, {row.service})
    return svc.public(row, effective=True)


def _read_levels(engine: Engine, service_name: str) -> ServiceLevels:
    with Session(engine) as session:
        return svc.effective_levels(session, service=service_name)


async def _level_events(sync: OwnLoggerSync, engine: Engine, service_name: str, keepalive: float
                        ) -> AsyncIterator[ServerSentEvent]:
    queue = sync.watch()
    loop = asyncio.get_running_loop()
    last = None
    try:
        while True:
            levels = await run_in_threadpool(_read_levels, engine, service_name)
            etag = svc.levels_etag(levels)
            if etag != last:
                last = etag
                yield ServerSentEvent(data=levels.model_dump_json(), event="levels", id=etag[1:-1])
            # Wake for a notice about this service, at the next expiry (to send the reverted levels), and
            # now and then anyway, to re-read in case a notice was lost.
            expiry = levels.poll_after_seconds
            deadline = loop.time() + (keepalive if expiry is None else min(keepalive, expiry + 0.05))
            try:
                while await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time())) not in (service_name, "*"):
                    pass
            except TimeoutError:
                pass
    finally:
        sync.unwatch(queue)


@router.get("/{service_name}/events")
async def service_level_events(service_name: Annotated[str, Path(pattern=SERVICE_PATTERN)], sync: LogLevelSyncDep,
                               engine: EngineDep, slots: StreamSlotsDep, _actor: Client,
                               keepalive: Annotated[float, Query(ge=1, le=60)] = 15) -> Response:
    """Server-Sent Events: the levels of GET /api/v1/loglevels/{service} now and after every change."""
    if sync is None:
        raise EventsUnavailable("log-level events need Redis (RUNBOOKD_REDIS_URL); poll "
                                "GET /api/v1/loglevels/{service} instead")
    # sse-starlette sends the keepalive pings (so the agent tells a quiet server from a dead one) and ends
    # the stream when the server shuts down.
    holder = slots.take(_actor)
    return EventSourceResponse(slots.hold(holder, _level_events(sync, engine, service_name, keepalive)), ping=keepalive,
                               headers={"X-Accel-Buffering": "no"})


@router.get("", response_model=list[OverridePublic])
def list_overrides(session: SessionDep, _actor: Viewer, service: str | None = None, active: bool = True,
                   incident_id: str | None = None, limit: int = 200) -> list[OverridePublic]:
    """Active overrides by default; active=false includes ended ones. service=_runbookd shows runbookd's own."""
    return svc.list_overrides(session, service=service, active=active or None, incident_id=incident_id,
                              limit=max(1, min(limit, 1000)))


@router.get("/overrides/{override_id}", response_model=OverridePublic)
def get_override(override_id: PathId, session: SessionDep, _actor: Viewer) -> OverridePublic:
    row = svc.get_override(session, override_id=override_id)
    listed = svc.list_overrides(session, service=row.service, active=True)
    return svc.public(row, effective=any(o.id == row.id and o.effective for o in listed))


@router.delete("/overrides/{override_id}", response_model=OverridePublic)
def end_override(override_id: PathId, request: Request, session: SessionDep, actor: Operator,
                 reason: Annotated[str | None, Query(max_length=2000)] = None) -> OverridePublic:
    """End an override early; the logger goes back to the next older live override, or its own level."""
    row = svc.end_override(session, override_id=override_id, actor=actor, reason=reason)
    _commit(request, session, {row.service})
    return svc.public(row)


@router.get("/{service_name}", response_model=ServiceLevels)
def service_levels(service_name: Annotated[str, Path(pattern=SERVICE_PATTERN)], session: SessionDep, _actor: Client,
                   if_none_match: Annotated[str | None, Header()] = None) -> Response:
    levels = svc.effective_levels(session, service=service_name)
    etag = svc.levels_etag(levels)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if if_none_match and etag in {tag.strip() for tag in if_none_match.split(",")}:
        return Response(status_code=304, headers=headers)
    return JSONResponse(levels.model_dump(mode="json"), headers=headers)


# -- runbookd's own loggers, in the shape of Spring Boot Actuator's /actuator/loggers -----------------------
def _describe(name: str) -> dict[str, Any]:
    target = get_logger(name)
    return {"configuredLevel": to_name(target.level), "effectiveLevel": to_name(target.getEffectiveLevel())}


@debug_router.get("")
def all_loggers(_actor: Admin) -> dict[str, Any]:
    names = sorted(n for n, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger))
    return {"levels": list(LEVELS), "loggers": {name: _describe(name) for name in [ROOT, *names]}, "groups": {}}


@debug_router.get("/{name}")
def one_logger(name: Annotated[str, Path(pattern=LOGGER_PATTERN)], session: SessionDep,
               _actor: Admin) -> dict[str, Any]:
    overrides = [o for o in svc.list_overrides(session, service=SERVER_SERVICE) if o.logger == name]
    effective = next((o for o in overrides if o.effective), None)
    return {**_describe(name), "override": effective.model_dump(mode="json") if effective else None}


@debug_router.post("/{name}", status_code=204)
def set_logger(name: Annotated[str, Path(pattern=LOGGER_PATTERN)], body: ActuatorLevel, request: Request,
               settings: SettingsDep, session: SessionDep, actor: Admin) -> Response:
    if body.configuredLevel is None:
        # Actuator's reset: the logger goes back to its own configuration in every process.
        svc.end_logger(session, service=SERVER_SERVICE, logger=name, actor=actor, reason=body.reason)
    else:
        svc.raise_level(session, service=SERVER_SERVICE, logger=name, level=body.configuredLevel,
                        duration=body.for_, actor=actor, reason=body.reason, incident_id=body.incident_id,
                        max_duration=settings.loglevel_max_duration)
    _commit(request, session, {SERVER_SERVICE})
    return Response(status_code=204)
