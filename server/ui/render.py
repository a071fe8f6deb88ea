"""Templates (Jinja2, autoescaped), their helpers, and the security headers of every console response."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.templating import Jinja2Templates
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.auth.models import Actor, Role
from server.incidents.rollback import flag_outcome_words
from server.loglevels.models import service_label
from server.models_base import as_utc, utc_words
from server.ui import assets

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def _ts(value: datetime | str | None) -> str:
    return "" if value is None else utc_words(value)


def _iso(value: datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return as_utc(value).isoformat()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _clip(text: str, limit: int = 4000) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit} more characters)"


TEMPLATES.env.globals["static"] = assets.url
TEMPLATES.env.globals["flag_outcome_words"] = flag_outcome_words  # the undo's words, shared with the report
TEMPLATES.env.filters.update(ts=_ts, iso=_iso, duration=_duration, pretty=_pretty, clip=_clip,
                             service_label=service_label)


def page(request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200) -> HTMLResponse:
    actor: Actor | None = getattr(request.state, "actor", None)
    ctx = {
        "actor": actor,
        "csrf": getattr(request.state, "csrf", ""),
        "can_operate": actor is not None and actor.role.allows(Role.operator),
        "is_admin": actor is not None and actor.role.allows(Role.admin),
        "now": datetime.now(UTC),
        "path": request.url.path,
        **(context or {}),
    }
    return TEMPLATES.TemplateResponse(request, name, ctx, status_code=status_code)


class ConsoleHeaders:
    """Security headers on every /ui response; pages are never cached (they may show a token once)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (scope["path"] == "/ui" or scope["path"].startswith("/ui/")):
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/ui/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if not static:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)
