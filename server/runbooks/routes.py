from __future__ import annotations

from fastapi import APIRouter, Request

from server.db import SessionDep
from server.deps import Admin, SettingsDep, Viewer, settings_of
from server.runbooks import service
from server.runbooks.models import (
    ProblemPublic,
    RunbookDetail,
    RunbookList,
    RunbookUpload,
    ValidateRequest,
    ValidateResult,
)
from server.runbooks.store import RunbookStore
from server.runbooks.validation import Problem, check_text
from server.settings import Settings

router = APIRouter(prefix="/api/v1/runbooks", tags=["runbooks"])


def _store(settings: Settings) -> RunbookStore:
    return service.store_for(settings.runbooks_dir)


def _problems(items: list[Problem]) -> list[ProblemPublic]:
    return [ProblemPublic(**p.as_dict()) for p in items]


@router.get("", response_model=RunbookList)
def list_runbooks(request: Request, session: SessionDep, _actor: Viewer) -> RunbookList:
    # request, not SettingsDep: the console calls this function with its own arguments.
    entries, problems = service.list_runbooks(session, store=_store(settings_of(request)))
    return RunbookList(items=[service.summary(e) for e in entries], problems=_problems(problems))


@router.post("/validate", response_model=ValidateResult)
def validate_runbook(body: ValidateRequest, _actor: Viewer) -> ValidateResult:
    checked = check_text(body.content, body.filename)
    return ValidateResult(valid=not checked.errors, errors=_problems(checked.errors),
                          warnings=_problems(checked.warnings))


@router.post("/reload", response_model=RunbookList)
def reload_runbooks(settings: SettingsDep, session: SessionDep, _actor: Admin) -> RunbookList:
    service.reload(store=_store(settings))
    entries, problems = service.list_runbooks(session, store=_store(settings))
    return RunbookList(items=[service.summary(e) for e in entries], problems=_problems(problems))


@router.post("", status_code=201, response_model=RunbookDetail)
def upload_runbook(body: RunbookUpload, settings: SettingsDep, session: SessionDep, actor: Admin) -> RunbookDetail:
    entry = service.upload(session, store=_store(settings), content=body.content, actor=actor)
    session.commit()
    return service.detail(entry)


@router.get("/{runbook_id}", response_model=RunbookDetail)
def get_runbook(runbook_id: str, request: Request, session: SessionDep, _actor: Viewer) -> RunbookDetail:
    # request, not SettingsDep: the console calls this function with its own arguments.
    return service.detail(service.get_runbook(session, store=_store(settings_of(request)), runbook_id=runbook_id))
