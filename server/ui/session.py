"""The console's session: an HttpOnly, SameSite=Strict cookie holding the API token that signed in.

No session table: every request checks the cookie's token through the same TokenCache as the API's
bearer tokens (server.auth.token_cache), so revoking or expiring the token ends the session at once,
and the role is the token's role, exactly as in the API.

CSRF: every state-changing request must carry a token that only the page can know. For a signed-in
session it is an HMAC of the session's own token (a synchronizer token derived from the session secret,
OWASP's "HMAC CSRF token" without a server secret of its own); before sign-in it is a random value held
in a second cookie (double submit). Requests whose Origin names another site are refused as well.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Annotated

from fastapi import Depends, Request
from starlette.responses import Response

from server.auth.models import Actor, Role
from server.deps import settings_of
from server.errors import DomainError, Forbidden, Unauthorized

COOKIE = "runbookd_session"
LOGIN_CSRF_COOKIE = "runbookd_login_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
COOKIE_PATH = "/ui"


class SignInRequired(DomainError):
    """No session, or its token no longer works: the console sends the browser to the sign-in page."""

    status_code = 401
    code = "unauthorized"


class CsrfFailed(DomainError):
    status_code = 403
    code = "csrf_failed"


def csrf_for(raw_token: str) -> str:
    return hmac.new(raw_token.encode(), b"runbookd-console-csrf", hashlib.sha256).hexdigest()


def session_token(request: Request) -> str | None:
    return request.cookies.get(COOKIE) or None


def _secure(request: Request) -> bool:
    """Secure cookies when the console is reached over HTTPS: directly, or per RUNBOOKD_PUBLIC_URL (a TLS proxy)."""
    public = settings_of(request).public_url or ""
    return request.url.scheme == "https" or public.startswith("https://")


def set_session(response: Response, request: Request, raw_token: str) -> None:
    response.set_cookie(COOKIE, raw_token, httponly=True, samesite="strict", path=COOKIE_PATH, secure=_secure(request))


def clear_session(response: Response) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")


def login_csrf(request: Request) -> str:
    """The pre-session CSRF value of this browser (made when the sign-in page is shown)."""
    return request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)


def set_login_csrf(response: Response, request: Request, value: str) -> None:
    response.set_cookie(LOGIN_CSRF_COOKIE, value, httponly=True, samesite="strict", path=COOKIE_PATH,
                        secure=_secure(request), max_age=3600)


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


async def _presented_csrf(request: Request) -> str:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    form = await request.form()
    value = form.get(CSRF_FIELD)
    return value if isinstance(value, str) else ""


async def check_csrf(request: Request, expected: str) -> None:
    if not _same_origin(request):
        raise CsrfFailed("cross-site request refused: its Origin is not this console")
    if not hmac.compare_digest((await _presented_csrf(request)).encode(), expected.encode()):
        raise CsrfFailed("missing or wrong CSRF token: reload the page and try again")


async def console_actor(request: Request) -> Actor:
    """The signed-in actor; a state-changing request must also pass the CSRF check."""
    raw = session_token(request)
    if raw is None:
        raise SignInRequired("sign in to use the console")
    state = request.app.state
    try:
        actor: Actor = await state.token_cache.actor(state.engine, raw)
    except Unauthorized as exc:
        raise SignInRequired(f"signed out: {exc.message}") from None
    request.state.actor = actor
    request.state.csrf = csrf_for(raw)
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        await check_csrf(request, request.state.csrf)
    return actor


def require(actor: Actor, needed: Role) -> None:
    """The API's role rule (server.deps.require_role), for console actions."""
    if not actor.role.allows(needed):
        raise Forbidden(f"this needs the {needed.value} role; token {actor.name!r} has {actor.role.value}")


async def _viewer(actor: Annotated[Actor, Depends(console_actor)]) -> Actor:
    require(actor, Role.viewer)
    return actor


async def _operator(actor: Annotated[Actor, Depends(console_actor)]) -> Actor:
    require(actor, Role.operator)
    return actor


async def _admin(actor: Annotated[Actor, Depends(console_actor)]) -> Actor:
    require(actor, Role.admin)
    return actor


UiViewer = Annotated[Actor, Depends(_viewer)]
UiOperator = Annotated[Actor, Depends(_operator)]
UiAdmin = Annotated[Actor, Depends(_admin)]
