"""Flag management API: viewers read, operators change. Responses carry ETag: "<version>"; writes honour If-Match."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from server.db import SessionDep
from server.deps import (
    Admin,
    FlagCacheDep,
    Operator,
    RedisDep,
    SettingsDep,
    Viewer,
    flag_cache_of,
    redis_of,
    settings_of,
)
from server.errors import InvalidInput
from server.flags import service
from server.flags.cache import announce_change
from server.flags.models import (
    EnvironmentCreate,
    EnvironmentPublic,
    Flag,
    FlagCreate,
    FlagExpiry,
    FlagPublic,
    FlagRollback,
    FlagUpdate,
    FlagVersion,
    FlagVersionPublic,
)
from server.ids import PathId, is_id

router = APIRouter(prefix="/api/v1/flags", tags=["flags"])
environments_router = APIRouter(prefix="/api/v1/flag-environments", tags=["flags"])

IfMatch = Annotated[str | None, Header(description='"<version>" from a previous ETag; 412 when it is stale')]


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is an error, never ignored
    reason: str | None = Field(default=None, max_length=2000)
    incident_id: str | None = Field(default=None, max_length=64)


def parse_if_match(value: str | None) -> int | None:
    """The version an If-Match header names; None for no header or '*'."""
    if value is None or value.strip() == "*":
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not is_id(text):
        raise InvalidInput(f'If-Match must be a flag ETag like "3", not {value!r}')
    return int(text)


def _public(session: Session, flag: Flag, expiries: list[FlagExpiry] | None = None) -> FlagPublic:
    """The flag as the API shows it; `expiries` are its pending timed changes when already read."""
    if expiries is None:
        expiries = service.pending_expiries(session, key=flag.key)
    pending = [{"version": e.version, "revert_to": e.revert_to, "expires_at": e.expires_at, "actor": e.actor,
                "reason": e.reason, "incident_id": e.incident_id} for e in expiries]
    return FlagPublic(key=flag.key, version=flag.version, deleted=flag.deleted, created_at=flag.created_at,
                      updated_at=flag.updated_at, spec=flag.spec, pending_expiries=pending,
                      serving=service.serving(flag.spec))


def _changed(request: Request, session: Session, response: Response, version: FlagVersion) -> FlagPublic:
    """Commit, tell every api process, and answer with the flag and its new ETag."""
    # The console calls the routes with their arguments, so the process's parts come from the request here.
    announce_change(session, settings_of(request), redis_of(request), key=version.flag_key,
                    version=version.version)
    session.commit()
    flag_cache_of(request).load_one(version.flag_key)  # this process need not wait for its own notice
    flag = service.get_flag(session, key=version.flag_key, include_deleted=True)
    response.headers["ETag"] = f'"{flag.version}"'
    return _public(session, flag)


@router.get("", response_model=list[FlagPublic])
def list_flags(session: SessionDep, _actor: Viewer, tag: str | None = None,
               include_deleted: bool = False) -> list[FlagPublic]:
    listed = service.list_flags(session, tag=tag, include_deleted=include_deleted)
    pending = service.pending_by_flag(session)  # one query for every flag's timed changes, not one per flag
    return [_public(session, f, pending.get(f.key, [])) for f in listed]


@router.post("", status_code=201, response_model=FlagPublic)
def create_flag(body: FlagCreate, request: Request, response: Response, session: SessionDep,
                actor: Operator) -> FlagPublic:
    return _changed(request, session, response, service.create_flag(session, body=body, actor=actor))


@router.get("/{key}", response_model=FlagPublic)
def get_flag(key: str, response: Response, session: SessionDep, _actor: Viewer,
             include_deleted: bool = False) -> FlagPublic:
    flag = service.get_flag(session, key=key, include_deleted=include_deleted)
    response.headers["ETag"] = f'"{flag.version}"'
    return _public(session, flag)


@router.patch("/{key}", response_model=FlagPublic)
def update_flag(key: str, body: FlagUpdate, request: Request, response: Response, session: SessionDep,
                actor: Operator, if_match: IfMatch = None) -> FlagPublic:
    version = service.update_flag(session, key=key, changes=body, actor=actor, if_match=parse_if_match(if_match))
    return _changed(request, session, response, version)


@router.delete("/{key}", response_model=FlagPublic)
def delete_flag(key: str, request: Request, response: Response, session: SessionDep, actor: Operator,
                reason: Annotated[str | None, Query(max_length=2000)] = None,
                incident_id: Annotated[str | None, Query(max_length=64)] = None,
                if_match: IfMatch = None) -> FlagPublic:
    version = service.set_deleted(session, key=key, deleted=True, actor=actor, reason=reason,
                                  incident_id=incident_id, if_match=parse_if_match(if_match))
    return _changed(request, session, response, version)


@router.post("/{key}/restore", response_model=FlagPublic)
def restore_flag(key: str, request: Request, response: Response, session: SessionDep, actor: Operator,
                 body: Reason | None = None, if_match: IfMatch = None) -> FlagPublic:
    body = body or Reason()
    version = service.set_deleted(session, key=key, deleted=False, actor=actor, reason=body.reason,
                                  incident_id=body.incident_id, if_match=parse_if_match(if_match))
    return _changed(request, session, response, version)


@router.post("/{key}/rollback", response_model=FlagPublic)
def rollback_flag(key: str, body: FlagRollback, request: Request, response: Response, session: SessionDep,
                  actor: Operator, if_match: IfMatch = None) -> FlagPublic:
    version = service.rollback(session, key=key, to_version=body.to_version, actor=actor, reason=body.reason,
                               incident_id=body.incident_id, duration=body.for_, expires_at=body.expires_at,
                               if_match=parse_if_match(if_match))
    return _changed(request, session, response, version)


@router.get("/{key}/versions", response_model=list[FlagVersionPublic])
def list_versions(key: str, session: SessionDep, _actor: Viewer) -> list[FlagVersionPublic]:
    return [FlagVersionPublic.model_validate(v, from_attributes=True)
            for v in service.list_versions(session, key=key)]


@router.get("/{key}/versions/{version}", response_model=FlagVersionPublic)
def get_version(key: str, version: PathId, session: SessionDep, _actor: Viewer) -> FlagVersionPublic:
    return FlagVersionPublic.model_validate(service.get_version(session, key=key, version=version),
                                            from_attributes=True)


@environments_router.get("", response_model=list[EnvironmentPublic])
def list_environments(session: SessionDep, _actor: Viewer) -> list[EnvironmentPublic]:
    return [EnvironmentPublic.model_validate(e, from_attributes=True) for e in service.list_environments(session)]


@environments_router.post("", status_code=201, response_model=EnvironmentPublic)
def create_environment(body: EnvironmentCreate, settings: SettingsDep, client: RedisDep, cache: FlagCacheDep,
                       session: SessionDep, actor: Admin) -> EnvironmentPublic:
    env = service.create_environment(session, name=body.name, description=body.description, actor=actor)
    announce_change(session, settings, client, key=None, version=0)
    session.commit()
    cache.load_all()
    return EnvironmentPublic.model_validate(env, from_attributes=True)

