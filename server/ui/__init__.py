"""The web console under /ui: server-rendered pages over the same domain services as the REST API.

install(app) mounts it: its routes, its hashed static files, the security headers of its responses, its
HTML error pages (the API keeps its JSON ones), the "/" redirect, and the offline /docs and /redoc.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from server.errors import DomainError
from server.ui import assets, docs
from server.ui.common import field_errors, see_other
from server.ui.render import ConsoleHeaders, page
from server.ui.routes_core import router as core_router
from server.ui.routes_flags import router as flags_router
from server.ui.routes_hooks import router as hooks_router
from server.ui.routes_incidents import router as incidents_router
from server.ui.routes_runs import router as runs_router
from server.ui.session import SignInRequired, clear_session

ROUTERS = [core_router, runs_router, flags_router, incidents_router, hooks_router]


def _is_console(request: Request) -> bool:
    return request.url.path == "/ui" or request.url.path.startswith("/ui/")


def _error_page(request: Request, status: int, message: str, details: Any = None,
                headers: dict[str, str] | None = None) -> Response:
    response = page(request, "error.html", {"status": status, "message": message,
                                            "errors": field_errors(details)}, status_code=status)
    for name, value in (headers or {}).items():
        if name.lower() != "www-authenticate":
            response.headers[name] = value
    return response


def _install_error_pages(app: FastAPI) -> None:
    api_handlers = dict(app.exception_handlers)

    async def domain_error(request: Request, exc: Exception) -> Response:
        if not _is_console(request):
            return await api_handlers[DomainError](request, exc)
        assert isinstance(exc, DomainError)
        if isinstance(exc, SignInRequired):
            response: Response
            if request.method == "GET" and not request.url.path.endswith(("/events", "/fragment")):
                response = see_other("/ui/sign-in", exc.message)
            else:
                response = _error_page(request, 401, exc.message)
            clear_session(response)
            return response
        return _error_page(request, exc.status_code, exc.message, exc.details, exc.headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        if not _is_console(request):
            return await api_handlers[RequestValidationError](request, exc)
        assert isinstance(exc, RequestValidationError)
        details = [{"field": ".".join(str(p) for p in e.get("loc", ())[1:]), "message": e.get("msg", "")}
                   for e in exc.errors()]
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
        return _error_page(request, 422, f"Invalid request: {summary}", details)

    async def http_error(request: Request, exc: Exception) -> Response:
        if not _is_console(request):
            return await api_handlers[StarletteHTTPException](request, exc)
        assert isinstance(exc, StarletteHTTPException)
        return _error_page(request, exc.status_code, str(exc.detail))

    app.add_exception_handler(DomainError, domain_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


def install(app: FastAPI) -> None:
    for router in ROUTERS:
        app.include_router(router)
    app.add_route("/ui/static/{name}", assets.serve, methods=["GET", "HEAD"], include_in_schema=False)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui", status_code=307)

    _install_error_pages(app)
    docs.install(app)
    app.add_middleware(ConsoleHeaders)
