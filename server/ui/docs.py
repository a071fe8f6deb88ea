"""/docs and /redoc served with no CDN (Swagger UI and ReDoc from the fastapi-offline package's files), and
the OpenAPI document's security schemes, so Swagger's Authorize button works and "Try it out" is not a 401."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse

ASSETS_URL = "/docs-assets"
ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"

SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "An API token (`runbookd token create`): `Authorization: Bearer rbd_...`. "
                              "Its role (client, viewer, operator, admin) decides what it may do."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "The same token in the X-API-Key header, as OpenFeature OFREP providers send it "
                              "(a client-role token is enough for /ofrep/v1 evaluations)."},
}
CHAT_SECURITY = (
    "\n\n**Chat webhooks** (`/chat/...`) do not take API tokens. Slack requests are checked against "
    "`X-Slack-Signature` (HMAC-SHA256 of `v0:{X-Slack-Request-Timestamp}:{body}` with RUNBOOKD_SLACK_SIGNING_SECRET, "
    "timestamps older than five minutes refused); Mattermost requests must carry RUNBOOKD_MATTERMOST_TOKEN "
    "as their `token`. The chat user's role comes from RUNBOOKD_CHAT_USERS / RUNBOOKD_CHAT_CHANNELS."
)
# The docs pages load nothing from outside, by policy too: ReDoc's bundle would fetch its logo from a CDN.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; worker-src 'self' blob:; frame-ancestors 'none'")
UNAUTHENTICATED = ("/healthz", "/readyz", "/metrics", "/chat/")


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=(app.description or "") + CHAT_SECURITY,
                             routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
        for path, operations in schema.get("paths", {}).items():
            if path.startswith(UNAUTHENTICATED):
                continue
            for operation in operations.values():
                if isinstance(operation, dict):
                    operation.setdefault("security", [{"bearer": []}, {"apiKey": []}])
        app.openapi_schema = schema
    return app.openapi_schema


def _local_only(response: HTMLResponse) -> HTMLResponse:
    response.headers["Content-Security-Policy"] = DOCS_CSP
    return response


def install(app: FastAPI) -> None:
    """Needs the app made with docs_url=None and redoc_url=None (server.app does)."""
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _local_only(get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}", title=f"{app.title} - API docs",
            oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True}))

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _local_only(get_redoc_html(
            openapi_url=f"{root}{openapi_url}", title=f"{app.title} - API reference",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png", with_google_fonts=False))
