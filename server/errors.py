"""Domain errors and the one JSON error shape: {"error": {"code", "message", "details", "request_id"}}.

Services raise these; routes never build HTTPException themselves.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.context import request_id_var
from server.db import unreachable

log = logging.getLogger("runbookd.errors")


class DomainError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, details: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers


class InvalidInput(DomainError):
    status_code = 422
    code = "validation_error"


class Unauthorized(DomainError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str, *, details: Any = None, headers: dict[str, str] | None = None) -> None:
        # RFC 9110: a 401 always says which scheme would be accepted.
        super().__init__(message, details=details, headers={"WWW-Authenticate": "Bearer", **(headers or {})})


class Forbidden(DomainError):
    status_code = 403
    code = "forbidden"


class NotFound(DomainError):
    status_code = 404
    code = "not_found"


class Conflict(DomainError):
    status_code = 409
    code = "conflict"


class PreconditionFailed(DomainError):
    status_code = 412
    code = "precondition_failed"


class PayloadTooLarge(DomainError):
    status_code = 413
    code = "payload_too_large"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details, "request_id": request_id_var.get()}}


def error_response(status: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header", "cookie"}:
        parts = parts[1:] or parts
    return ".".join(parts)


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"field": _field_path(err.get("loc", ())), "message": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    return error_response(422, "validation_error", f"Invalid request: {summary}", details)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = HTTPStatus(exc.status_code)
    code = status.phrase.lower().replace(" ", "_").replace("-", "_")
    message = exc.detail if isinstance(exc.detail, str) else status.phrase
    return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))


UNAVAILABLE_RETRY_AFTER_S = 5


async def _backing_service_down(_request: Request, exc: Exception) -> JSONResponse:
    """The database (or Redis) cannot be reached: a 503 in the error shape, which a client may retry, rather
    than a 500. The cause is logged here, once, without the statement's parameters; the client gets no trace."""
    if isinstance(exc, DBAPIError) and not unreachable(exc):
        raise exc  # a real database error (a constraint, bad SQL): the 500 it is
    service = "redis" if type(exc).__module__.startswith("redis") else "database"
    cause = str(getattr(exc, "orig", None) or exc).strip().split("\n", 1)[0][:200]
    log.warning("backing service unavailable", extra={"service": service, "error": f"{type(exc).__name__}: {cause}"})
    return error_response(503, "unavailable", f"the {service} is unavailable; retry shortly",
                          {"service": service}, headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # A backing service restarting or unreachable: 503 + Retry-After (DBAPIError: only when unreachable).
    for down in (DBAPIError, DisconnectionError, PoolTimeout, redis.ConnectionError, redis.TimeoutError):
        app.add_exception_handler(down, _backing_service_down)


# -- the error shape in the OpenAPI document ---------------------------------------------------------
class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable: validation_error, not_found, forbidden, ...")
    message: str = Field(description="What went wrong and how to fix it, for a human.")
    details: Any = Field(None, description="Per-field problems (validation), or other context.")
    request_id: str | None = Field(None, description="Also in the X-Request-ID header and the server's logs.")


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer of the API."""

    error: ErrorDetail


_DESCRIPTIONS = {400: "Bad request", 401: "Missing, unknown, expired or revoked token",
                 403: "The token's role does not allow this", 404: "No such resource", 409: "Conflict with the "
                 "current state", 412: "If-Match names a version that is no longer current",
                 410: "The signed link has expired", 413: "Request body too large",
                 422: "Invalid input; details name each field",
                 429: "Too many requests (repeated bad tokens, or too many event streams)",
                 503: "A backing service (database, Redis) is unavailable"}


OFREP_ERROR = {"type": "object", "title": "OfrepError", "required": ["errorCode"],
               "description": "An OFREP evaluation error (OpenFeature Remote Evaluation Protocol).",
               "properties": {"key": {"type": "string"}, "errorCode": {"type": "string"},
                              "errorDetails": {"type": "string"}}}


def _needs_token(dependant: Any) -> bool:
    from server.deps import current_actor

    return any(d.call is current_actor or _needs_token(d) for d in dependant.dependencies)


def _api_routes(routes: Any) -> Any:
    """Every APIRoute, those of included routers too (FastAPI wraps an included router in one route)."""
    from fastapi.routing import APIRoute

    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):
            yield from _api_routes(route.original_router.routes)


def _error_codes(route: Any) -> set[int]:
    codes = {400, 413, 422, 503}
    if _needs_token(route.dependant):
        codes |= {401, 403, 429}
    if route.path_format.startswith(("/chat/", "/hooks/")):
        codes |= {401, 403}  # signed (Slack, generic hooks) or token-carrying requests, checked in the route
    if route.path_format.startswith("/a/"):
        codes |= {403, 410}  # signed artifact links: forged or altered, expired
    if route.dependant.path_params:
        codes.add(404)
    if route.methods & {"POST", "PUT", "PATCH", "DELETE"}:
        codes |= {404, 409}
    if any(p.alias.lower() == "if-match" for p in route.dependant.header_params):
        codes.add(412)
    return codes


def document_errors(app: FastAPI) -> None:
    """Add the error responses each route can give, in the one error shape, to the OpenAPI document.

    422 replaces FastAPI's own HTTPValidationError schema, which is not what the API sends. Every route can
    answer 400, 413 (the body limit), 422 and 503 (a backing service down); routes behind a token 401, 403 and
    429; routes with path parameters, and writes, 404; writes 409; routes taking If-Match 412.
    """
    base = app.openapi  # FastAPI's own, or one already customised (the console adds security schemes)
    documented: list[bool] = []

    def openapi() -> dict[str, Any]:
        document: dict[str, Any] = base()  # built once and cached by FastAPI in app.openapi_schema
        if documented:
            return document
        documented.append(True)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        shape = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(shape.pop("$defs", {}))
        schemas["ErrorResponse"] = shape
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        schemas["OfrepError"] = OFREP_ERROR
        content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        ofrep = {"application/json": {"schema": {"$ref": "#/components/schemas/OfrepError"}}}
        for route in _api_routes(app.routes):
            if not route.include_in_schema:
                continue
            for method in route.methods:
                operation = document["paths"].get(route.path_format, {}).get(method.lower())
                if operation is None:
                    continue
                responses = operation.setdefault("responses", {})
                for code in sorted(_error_codes(route)):
                    # OFREP's evaluation errors have the shape its providers read (the spec's, not ours).
                    shape = ofrep if route.path_format.startswith("/ofrep/") and code in (400, 404) else content
                    responses[str(code)] = {"description": _DESCRIPTIONS[code], "content": shape}
        return document

    app.openapi = openapi  # type: ignore[method-assign]
