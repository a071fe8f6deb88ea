from __future__ import annotations

from fastapi import APIRouter, Request

from server.db import SessionDep
from server.deps import Admin, Viewer
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

router = APIRouter(prefix="/api/v1/runbooks", tags=["runbooks"])


def _store(request: Request) -> RunbookStore:
    return service.store_for(request.app.state.settings.runbooks_dir)


def _problems(items: list[Problem]) -> list[ProblemPublic]:
    return [ProblemPublic(**p.as_dict()) for p in items]


@router.get("", response_model=RunbookList)
def list_runbooks(request: Request, session: SessionDep, _actor: Viewer) -> RunbookList:
    entries, problems = service.list_runbooks(session, store=_store(request))
    return RunbookList(items=[service.summary(e) for e in entries], problems=_problems(problems))


@router.post("/validate", response_model=ValidateResult)
def validate_runbook(body: ValidateRequest, _actor: Viewer) -> ValidateResult:
    checked = check_text(body.content, body.filename)
    return ValidateResult(valid=not checked.errors, errors=_problems(checked.errors),
                          warnings=_problems(checked.warnings))


@router.post("/reload", response_model=RunbookList)
def reload_runbooks(request: Request, session: SessionDep, _actor: Admin) -> RunbookList:
    service.reload(store=_store(request))
    entries, problems = service.list_runbooks(session, store=_store(request))
    return RunbookList(items=[service.summary(e) for e in entries], problems=_problems(problems))


@router.post("", status_code=201, response_model=RunbookDetail)
def upload_runbook(body: RunbookUpload, request: Request, session: SessionDep, actor: Admin) -> RunbookDetail:
    entry = service.upload(session, store=_store(request), content=body.content, actor=actor)
    session.commit()
    return service.detail(entry)


@router.get("/{runbook_id}", response_model=RunbookDetail)
def get_runbook(runbook_id: str, request: Request, session: SessionDep, _actor: Viewer) -> RunbookDetail:
    return service.detail(service.get_runbook(session, store=_store(request), runbook_id=runbook_id))
