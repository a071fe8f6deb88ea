"""Flags (list with kill switch, flag page, If-Match edit, history, rollback, timed changes) and log levels.

Changes go through the REST API's route functions (server.flags.routes, server.loglevels.routes), so the
commit and the change notices to every api process are the API's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from jsonpointer import resolve_pointer
from pydantic import ValidationError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from server.db import SessionDep
from server.deps import settings_of
from server.errors import InvalidInput, PreconditionFailed
from server.flags import routes as flags_api
from server.flags import service as flags
from server.flags.models import FlagExpiry, FlagRollback, FlagUpdate
from server.ids import PathId
from server.incidents import service as incidents
from server.incidents.models import IncidentStatus
from server.loglevels import routes as loglevels_api
from server.loglevels import service as loglevels
from server.loglevels.levels import LEVELS
from server.loglevels.models import OverrideCreate, service_label
from server.ui.common import blank_to_none, field_errors, invalid, quoted, see_other
from server.ui.render import page
from server.ui.session import UiOperator, UiViewer

router = APIRouter(prefix="/ui", include_in_schema=False)


def _open_incidents(session: Session) -> list[Any]:
    return [i for i in incidents.list_incidents(session, limit=100) if i.status != IncidentStatus.resolved.value]


def _environments(session: Session) -> list[str]:
    return [e.name for e in flags.list_environments(session)]


# -- flags list and kill switch ---------------------------------------------------------------------------
@dataclass
class FlagRow:
    key: str
    version: int
    description: str
    cells: list[tuple[str, bool | None, str]]  # per environment column: (name, enabled or None if absent, variant)
    pending_expiries: list[FlagExpiry] = field(default_factory=list)


def _row(key: str, version: int, spec: dict[str, Any], environments: list[str]) -> FlagRow:
    """What the list shows of a flag, read here once rather than by attribute lookups in the template."""
    envs = spec.get("environments") or {}
    cells: list[tuple[str, bool | None, str]] = []
    for name in environments:
        state = envs.get(name)
        if state is None:
            cells.append((name, None, ""))
        else:
            cells.append((name, bool(state.get("enabled")),
                          str(state.get("default_variant") or spec.get("default_variant") or "")))
    return FlagRow(key, version, str(spec.get("description") or ""), cells)


@router.get("/flags")
def flags_page(request: Request, session: SessionDep, actor: UiViewer, q: str = "", tag: str = "") -> Response:
    """The flags service's list, with every flag's pending timed changes read in one query."""
    listed = flags.list_flag_rows(session, tag=blank_to_none(tag))  # rows, not ORM objects: 350 of them
    needle = q.strip().lower()
    environments = _environments(session)
    rows = {key: _row(key, version, spec, environments) for key, version, spec in listed
            if not needle or needle in f"{key} {spec.get('description', '')}".lower()}
    # Filtered: only the shown flags' changes; unfiltered, every flag is shown and no IN list is needed.
    filtered = bool(needle or tag) and len(rows) < 1000
    pending = flags.pending_by_flag(session, keys=list(rows) if filtered else None, limit=5000)
    for key, row in rows.items():
        row.pending_expiries = pending.get(key, [])
    tags = sorted({t for _key, _version, spec in listed for t in spec.get("tags", [])})
    return page(request, "flags.html", {"items": list(rows.values()), "environments": environments,
                                        "q": q, "tag": tag, "tags": tags, "incidents": _open_incidents(session)})


def _change(request: Request, session: Session, actor: Any, key: str, body: FlagUpdate,
            if_match: int | None) -> Any:
    return flags_api.update_flag(key, body, request, Response(), session, actor,
                                 f'"{if_match}"' if if_match is not None else None)


@router.post("/flags/{key}/kill")
def kill_switch(key: str, request: Request, session: SessionDep, actor: UiOperator,
                environment: Annotated[str, Form()] = "", duration: Annotated[str, Form(alias="for")] = "",
                reason: Annotated[str, Form()] = "", incident_id: Annotated[str, Form()] = "",
                back: Annotated[str, Form()] = "list") -> Response:
    if not reason.strip():
        raise InvalidInput("a kill switch needs a reason", details=[{"field": "reason", "message": "required"}])
    try:
        body = FlagUpdate.model_validate({"environments": {environment: {"enabled": False}},
                                          "for": blank_to_none(duration), "reason": reason.strip(),
                                          "incident_id": blank_to_none(incident_id)})
    except ValidationError as exc:
        raise invalid(exc) from None
    flag = _change(request, session, actor, key, body, None)
    until = f" until {flag.pending_expiries[-1]['expires_at']:%H:%M:%S} UTC" if flag.pending_expiries else ""
    note = f"{key} is off in {environment}{until}"
    return see_other(f"/ui/flags/{quoted(key)}" if back == "flag" else "/ui/flags", note)


# -- flag page -------------------------------------------------------------------------------------------------
def _changes(previous: dict[str, Any] | None, version: Any) -> list[dict[str, Any]]:
    """A version's RFC 6902 diff as before/after pairs, read against the version before it."""
    rows = []
    for op in version.diff or []:
        path = op.get("path", "")
        before = resolve_pointer(previous or {}, path, None) if op["op"] in ("replace", "remove") else None
        after = op.get("value") if op["op"] in ("add", "replace") else None
        rows.append({"op": op["op"], "path": path or "/", "before": before, "after": after})
    return rows


def _flag_page(request: Request, session: Session, actor: Any, key: str, *, conflict: str | None = None,
               errors: dict[str, str] | None = None, status_code: int = 200) -> Response:
    flag = flags_api.get_flag(key, Response(), session, actor, include_deleted=True)
    versions = flags_api.list_versions(key, session, actor)
    history = []
    previous: dict[str, Any] | None = None
    for v in sorted(versions, key=lambda v: v.version):
        history.append({"v": v, "changes": _changes(previous, v)})
        previous = v.spec
    history.reverse()
    return page(request, "flag.html", {"flag": flag, "spec": flag.spec, "history": history, "conflict": conflict,
                                       "errors": errors or {}, "incidents": _open_incidents(session),
                                       "environments": _environments(session)}, status_code=status_code)


@router.get("/flags/{key}")
def flag_page(key: str, request: Request, session: SessionDep, actor: UiViewer) -> Response:
    return _flag_page(request, session, actor, key)


def _conflict_message(session: Session, key: str, opened: int) -> str:
    later = [v for v in flags.list_versions(session, key=key) if v.version > opened]
    who = ", ".join(f"{v.actor} (version {v.version}, {v.action}"
                    + (f": {v.reason}" if v.reason else "") + ")" for v in later) or "someone"
    return (f"This flag was changed since you opened it (you had version {opened}) by {who}. "
            "Your change was not saved: reload the page to see the current flag, then make your change again.")


@router.post("/flags/{key}/edit")
async def edit_flag(key: str, request: Request, session: SessionDep, actor: UiOperator) -> Response:
    form = await request.form()
    version = str(form.get("version") or "")
    if not version.isdigit():
        raise InvalidInput("the edit form lost its version; reload the page")
    data: dict[str, Any] = {"reason": blank_to_none(str(form.get("reason") or "")),
                            "incident_id": blank_to_none(str(form.get("incident_id") or ""))}
    if "description" in form:
        data["description"] = str(form.get("description") or "")
    if "tags" in form:
        data["tags"] = [t.strip() for t in str(form.get("tags") or "").split(",") if t.strip()]
    envs: dict[str, Any] = {}
    for name in form:
        if name.startswith("env.") and name.endswith(".present"):
            env = name[len("env."):-len(".present")]
            # An unticked checkbox sends nothing: the hidden .present field says the environment was shown.
            envs[env] = {"enabled": form.get(f"env.{env}.enabled") == "on",
                         "default_variant": blank_to_none(str(form.get(f"env.{env}.default_variant") or ""))}
    if envs:
        data["environments"] = envs
    def apply() -> Response:
        try:
            body = FlagUpdate.model_validate(data)
        except ValidationError as exc:
            err = invalid(exc)
            return _flag_page(request, session, actor, key, errors=field_errors(err.details), status_code=422)
        try:
            _change(request, session, actor, key, body, int(version))
        except PreconditionFailed:
            session.rollback()
            return _flag_page(request, session, actor, key, status_code=412,
                              conflict=_conflict_message(session, key, int(version)))
        except InvalidInput as exc:
            session.rollback()
            return _flag_page(request, session, actor, key, status_code=422,
                              errors=field_errors(exc.details) or {"_": exc.message})
        return see_other(f"/ui/flags/{quoted(key)}", "saved")

    return await run_in_threadpool(apply)


@router.post("/flags/{key}/rollback")
def rollback_flag(key: str, request: Request, session: SessionDep, actor: UiOperator,
                  to_version: Annotated[int, Form()], version: Annotated[int, Form()],
                  reason: Annotated[str, Form()] = "") -> Response:
    body = FlagRollback.model_validate({"to_version": to_version, "reason": blank_to_none(reason)})
    try:
        flags_api.rollback_flag(key, body, request, Response(), session, actor, f'"{version}"')
    except PreconditionFailed:
        session.rollback()
        return _flag_page(request, session, actor, key, status_code=412,
                          conflict=_conflict_message(session, key, version))
    return see_other(f"/ui/flags/{quoted(key)}", f"rolled back to version {to_version}")


@router.post("/flags/{key}/end-now")
def end_timed_change(key: str, request: Request, session: SessionDep, actor: UiOperator,
                     version: Annotated[int, Form()], revert_to: Annotated[int, Form()]) -> Response:
    """End a pending timed change at once: what its expiry would do, now (guarded by the flag's version)."""
    reason = f"timed change (version {version}) ended early from the console"
    try:
        if revert_to == 0:
            flags_api.delete_flag(key, request, Response(), session, actor, reason, None, f'"{version}"')
        else:
            body = FlagRollback.model_validate({"to_version": revert_to, "reason": reason})
            flags_api.rollback_flag(key, body, request, Response(), session, actor, f'"{version}"')
    except PreconditionFailed:
        session.rollback()
        return _flag_page(request, session, actor, key, status_code=412,
                          conflict=_conflict_message(session, key, version))
    return see_other(f"/ui/flags/{quoted(key)}", "timed change ended")


# -- log levels -------------------------------------------------------------------------------------------------
def _levels_page(request: Request, session: Session, *, errors: dict[str, str] | None = None,
                 form: dict[str, Any] | None = None, status_code: int = 200) -> Response:
    return page(request, "loglevels.html", {
        "overrides": loglevels.list_overrides(session, active=True, limit=500),
        "levels": LEVELS, "incidents": _open_incidents(session), "errors": errors or {}, "form": form or {},
    }, status_code=status_code)


@router.get("/loglevels")
def loglevels_page(request: Request, session: SessionDep, actor: UiViewer) -> Response:
    return _levels_page(request, session)


@router.post("/loglevels")
def create_override(request: Request, session: SessionDep, actor: UiOperator,
                    service: Annotated[str, Form()] = "", logger: Annotated[str, Form()] = "",
                    level: Annotated[str, Form()] = "", duration: Annotated[str, Form(alias="for")] = "",
                    reason: Annotated[str, Form()] = "", incident_id: Annotated[str, Form()] = "") -> Response:
    form = {"service": service, "logger": logger, "level": level, "for": duration, "reason": reason,
            "incident_id": incident_id}
    try:
        body = OverrideCreate.model_validate({
            "service": service.strip(), "logger": logger.strip(), "level": level, "for": blank_to_none(duration),
            "reason": blank_to_none(reason), "incident_id": blank_to_none(incident_id)})
        row = loglevels_api.create_override(body, request, settings_of(request), session, actor)
    except ValidationError as exc:
        return _levels_page(request, session, errors=field_errors(invalid(exc).details), form=form, status_code=422)
    except InvalidInput as exc:
        session.rollback()
        return _levels_page(request, session, errors=field_errors(exc.details) or {"_": exc.message}, form=form,
                            status_code=422)
    return see_other("/ui/loglevels", f"{service_label(row.service)}/{row.logger} at {row.level}")


@router.post("/loglevels/{override_id}/end")
def end_override(override_id: PathId, request: Request, session: SessionDep, actor: UiOperator,
                 reason: Annotated[str, Form()] = "") -> Response:
    row = loglevels_api.end_override(override_id, request, session, actor, blank_to_none(reason))
    return see_other("/ui/loglevels", f"override {row.id} ended")
