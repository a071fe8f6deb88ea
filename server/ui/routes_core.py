"""Sign-in and sign-out, the overview, audit and tokens pages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Annotated, Any

import orjson
import redis
from fastapi import APIRouter, Form, Query, Request
from markupsafe import Markup
from pydantic import ValidationError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from server.audit import routes as audit_api
from server.audit import service as audit
from server.auth import routes as tokens_api
from server.auth.models import Role, TokenCreate
from server.db import SessionDep
from server.debug import service as debug
from server.deps import redis_of, settings_of
from server.errors import Conflict, InvalidInput, Unauthorized
from server.flags import service as flags
from server.ids import PathId
from server.incidents import service as incidents
from server.incidents.models import IncidentStatus
from server.loglevels import service as loglevels
from server.runs import service as runs
from server.runs import views as run_views
from server.ui import session as ui_session
from server.ui.common import blank_to_none, field_errors, invalid, see_other
from server.ui.render import page
from server.ui.session import UiAdmin, UiViewer

router = APIRouter(prefix="/ui", include_in_schema=False)


# -- sign-in ---------------------------------------------------------------------------------------------
@router.get("/sign-in")
def sign_in_page(request: Request, note: str | None = None) -> Response:
    csrf = ui_session.login_csrf(request)
    response = page(request, "sign_in.html", {"login_csrf": csrf, "note": note})
    ui_session.set_login_csrf(response, request, csrf)
    return response


@router.post("/sign-in")
async def sign_in(request: Request, token: Annotated[str, Form()] = "") -> Response:
    expected = request.cookies.get(ui_session.LOGIN_CSRF_COOKIE, "")
    if not expected:
        raise ui_session.CsrfFailed("the sign-in form expired (or cookies are off): reload the page and try again")
    await ui_session.check_csrf(request, expected)
    raw = token.strip()
    error = None
    if not raw:
        error = "paste an API token"
    else:
        state = request.app.state
        try:
            actor = await state.token_cache.actor(state.engine, raw)
        except Unauthorized as exc:
            error = exc.message
        else:
            if actor.role is Role.hook:
                error = f"token {actor.name!r} has the hook role, which may only deliver alerts to /hooks/*"
            elif not actor.role.allows(Role.viewer):
                error = f"token {actor.name!r} has the {actor.role.value} role, which may only evaluate flags"
    if error:
        return page(request, "sign_in.html", {"login_csrf": expected, "error": error}, status_code=401)
    response: Response = see_other("/ui")
    ui_session.set_session(response, request, raw)
    response.delete_cookie(ui_session.LOGIN_CSRF_COOKIE, path=ui_session.COOKIE_PATH)
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> Response:
    raw = ui_session.session_token(request)
    if raw is not None:
        await ui_session.check_csrf(request, ui_session.csrf_for(raw))
    response = see_other("/ui/sign-in", "signed out")
    ui_session.clear_session(response)
    return response


# -- overview ----------------------------------------------------------------------------------------------
def _health(request: Request, admin: bool) -> dict[str, Any]:
    settings, client = settings_of(request), redis_of(request)
    out: dict[str, Any] = {"api": "ok"}
    if client is None:
        out["redis_error"] = "RUNBOOKD_REDIS_URL is not set"
        return out
    try:
        workers = debug.live_workers(client, settings)
        out["workers"] = workers if admin else len(workers)
        out["beat"] = debug.beat_status(client, settings)
        if admin:
            out["queues"] = debug.queue_depths(client, settings)
    except redis.RedisError as exc:
        out["redis_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return out


@router.get("")
def overview(request: Request, session: SessionDep, actor: UiViewer) -> Response:
    active = runs.RunFilter(status="queued,running,waiting_approval")
    in_progress = [run_views.summary(r) for r in runs.list_runs(session, filters=active, before_id=None, limit=50)]
    open_incidents = [i for i in incidents.list_incidents(session, limit=50)
                      if i.status != IncidentStatus.resolved.value]
    return page(request, "overview.html", {
        "runs": in_progress,
        "incidents": open_incidents,
        "pending": flags.pending_changes(session, limit=50),
        "overrides": loglevels.list_overrides(session, active=True, limit=100),
        "health": _health(request, actor.role.allows(Role.admin)),
    })


# -- audit ---------------------------------------------------------------------------------------------------
def _when(name: str, value: str | None) -> datetime | None:
    value = blank_to_none(value)
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{name} must be an ISO 8601 time such as 2026-01-31T12:00",
                           details=[{"field": name, "message": "not an ISO 8601 time"}]) from None


_MISSING = object()
_DIFF_HEAD = ('<thead><tr><th scope="col">Path</th><th scope="col">Before</th>'
              '<th scope="col">After</th></tr></thead><tbody>')


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}/{key}", out)
    else:
        out[prefix or "/"] = value
    return out


def _json(value: Any, option: int = 0) -> str:
    return escape(orjson.dumps(value, default=str, option=option).decode())


def _table(rows: list[str], css: str = "diff") -> Markup:
    """The diff table around rows whose every value went through escape() (_json, or escape(path))."""
    return Markup(f'<table class="{css}">{_DIFF_HEAD}{"".join(rows)}</tbody></table>')  # noqa: S704  (see above)


@dataclass(frozen=True, slots=True)
class Change:
    """An audit event's before/after, ready to show: the <summary> words and the table (already escaped)."""

    summary: str
    table: Markup


def _diff(before: Any, after: Any) -> Change | None:
    """An audit event's before/after as a Path/Before/After table.

    A creation or a deletion (one side empty) is one row holding the whole value, pretty-printed: a leaf-by-leaf
    table of a new flag is twenty rows that all say "nothing" on one side. Otherwise one row per leaf that
    differs: a flat comparison rather than difflib over pretty JSON, cheaper (50 events a page) and read like
    the flag history's table. The rows are built here with one escape per cell, not by the template: the
    audit page shows 50 events of up to ~20 rows each, and Jinja's per-expression escaping was half its
    rendering time (bench/ui_pages.py)."""
    if before is None and after is None:
        return None
    if before is None or after is None:
        whole = after if before is None else before
        pretty = f'<pre class="whole">{_json(whole, orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)}</pre>'
        none = '<span class="muted">(none)</span>'
        old, new = (none, pretty) if before is None else (pretty, none)
        row = (f'<tr><td><code>/</code> <span class="muted">(whole value)</span></td>'
               f'<td class="del" data-label="before">{old}</td><td class="add" data-label="after">{new}</td></tr>')
        return Change("before / after (created)" if before is None else "before / after (removed)",
                      _table([row], "diff whole"))
    b, a = _flatten(before, "", {}), _flatten(after, "", {})
    rows = []
    for path in sorted(b.keys() | a.keys()):
        old, new = b.get(path, _MISSING), a.get(path, _MISSING)
        if old != new:
            rows.append(f'<tr><td><code>{escape(path)}</code></td>'
                        f'<td class="del" data-label="before"><code>{"" if old is _MISSING else _json(old)}</code>'
                        f'</td><td class="add" data-label="after"><code>{"" if new is _MISSING else _json(new)}'
                        '</code></td></tr>')
    if not rows:
        return None
    return Change(f"before / after ({len(rows)})", _table(rows))


AUDIT_FILTERS = ("actor", "action", "target_type", "target_id", "incident_id", "since", "until")


@router.get("/audit")
def audit_page(request: Request, session: SessionDep, actor: UiViewer,
               cursor: str | None = None, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> Response:
    raw = {name: blank_to_none(request.query_params.get(name)) for name in AUDIT_FILTERS}
    errors: dict[str, str] = {}
    result = None
    try:
        result = audit_api.list_audit_events(
            session, actor, actor=raw["actor"], action=raw["action"], target_type=raw["target_type"],
            target_id=raw["target_id"], incident_id=raw["incident_id"], since=_when("since", raw["since"]),
            until=_when("until", raw["until"]), cursor=blank_to_none(cursor), limit=limit)
    except InvalidInput as exc:
        errors = field_errors(exc.details) or {"_": exc.message}
    items = result.items if result else []
    query = {k: v for k, v in raw.items() if v}
    return page(request, "audit.html", {
        "items": items, "diffs": {e.id: _diff(e.before, e.after) for e in items},
        "next_cursor": result.next_cursor if result else None, "filters": raw, "query": query,
        "errors": errors, "limit": limit, "verify": None,
    }, status_code=422 if errors else 200)


@router.post("/audit/verify")
def audit_verify(request: Request, session: SessionDep, actor: UiAdmin) -> Response:
    result = audit.verify(session)
    last = None
    if result.ok:
        page_ = audit.query(session, filters=audit.AuditFilter(), before_id=None, limit=1)
        last = page_[0].ts if page_ else None
    return page(request, "audit.html", {"items": [], "diffs": {}, "next_cursor": None,
                                        "filters": dict.fromkeys(AUDIT_FILTERS), "query": {}, "errors": {},
                                        "limit": 50, "verify": result, "verify_last": last})


# -- tokens (admin) -------------------------------------------------------------------------------------------
def _tokens_page(request: Request, session: Session, actor: Any, *, include_revoked: bool,
                 created: Any = None, errors: dict[str, str] | None = None, form: dict[str, Any] | None = None,
                 status_code: int = 200) -> Response:
    tokens = tokens_api.list_tokens(session, actor, include_revoked=include_revoked)
    return page(request, "tokens.html", {"tokens": tokens, "created": created, "errors": errors or {},
                                         "form": form or {}, "roles": list(Role),
                                         "include_revoked": include_revoked}, status_code=status_code)


@router.get("/tokens")
def tokens_page(request: Request, session: SessionDep, actor: UiAdmin, include_revoked: bool = False) -> Response:
    return _tokens_page(request, session, actor, include_revoked=include_revoked)


@router.post("/tokens")
async def create_token(request: Request, session: SessionDep, actor: UiAdmin,
                       name: Annotated[str, Form()] = "", role: Annotated[str, Form()] = "viewer",
                       expires_in_days: Annotated[str, Form()] = "") -> Response:
    form = {"name": name, "role": role, "expires_in_days": expires_in_days}
    try:
        body = TokenCreate.model_validate({"name": name.strip(), "role": role,
                                           "expires_in_days": blank_to_none(expires_in_days)})
        created = await run_in_threadpool(tokens_api.create_token, body, session, actor)
    except ValidationError as exc:
        err = invalid(exc)
        return _tokens_page(request, session, actor, include_revoked=False, errors=field_errors(err.details),
                            form=form, status_code=422)
    except (InvalidInput, Conflict) as exc:
        return _tokens_page(request, session, actor, include_revoked=False, form=form,
                            errors=field_errors(exc.details) or {"name": exc.message}, status_code=exc.status_code)
    return _tokens_page(request, session, actor, include_revoked=False, created=created)


@router.post("/tokens/{token_id}/revoke")
def revoke_token(token_id: PathId, request: Request, session: SessionDep, actor: UiAdmin) -> Response:
    state = request.app.state
    token = tokens_api.revoke_token(str(token_id), request, state.settings, state.redis, session, actor)
    return see_other("/ui/tokens", f"token {token.name} revoked")
