"""OFREP evaluations answered as the outermost ASGI layer, before routing (why: docs/architecture.md,
"Measurements"), keeping the request id, body limit, error shape and metrics; access lines at DEBUG only."""

from __future__ import annotations

import logging
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.context import accept_request_id, request_id_var
from server.deps import flag_cache_of, settings_of
from server.errors import DomainError, PayloadTooLarge, error_response
from server.flags import ofrep
from server.middleware import HTTP_LATENCY, HTTP_REQUESTS

SINGLE_PREFIX = "/ofrep/v1/evaluate/flags/"
BULK_PATH = "/ofrep/v1/evaluate/flags"
SINGLE_ROUTE = SINGLE_PREFIX + "{key}"
access_log = logging.getLogger("runbookd.access")
log = logging.getLogger(__name__)


class OfrepFastPath:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "POST" or not path.startswith(BULK_PATH):
            await self.app(scope, receive, send)
            return
        key = path[len(SINGLE_PREFIX):] if path.startswith(SINGLE_PREFIX) else None
        malformed = (not key or "/" in key) if key is not None else path != BULK_PATH
        if malformed:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None)
        request_id = accept_request_id(incoming)
        token = request_id_var.set(request_id)
        response: Response
        try:
            body = await self._body(receive)
            if body is None:
                response = error_response(413, PayloadTooLarge.code, f"request body exceeds the limit of "
                                          f"{self.max_body_bytes} bytes (RUNBOOKD_MAX_BODY_BYTES)")
            else:
                request = Request(scope, _replay(body))
                cache, settings = flag_cache_of(request), settings_of(request)
                response = (await ofrep.evaluate_flag(key, request, cache, settings) if key is not None
                            else await ofrep.evaluate_all(request, cache, settings))
        except DomainError as exc:
            response = error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)
        except Exception:
            log.exception("unhandled error", extra={"method": "POST", "path": path})
            response = error_response(500, "internal_error",
                                      "Internal server error; the request id locates it in the logs.")
        response.headers["X-Request-ID"] = request_id
        try:
            await response(scope, receive, send)
        finally:
            elapsed = time.perf_counter() - started
            route = SINGLE_ROUTE if key is not None else BULK_PATH
            HTTP_REQUESTS.labels("POST", route, str(response.status_code)).inc()
            HTTP_LATENCY.labels("POST", route).observe(elapsed)
            if access_log.isEnabledFor(logging.DEBUG):
                access_log.debug("POST %s %s", path, response.status_code,
                                 extra={"method": "POST", "path": path, "status": response.status_code,
                                        "duration_ms": round(elapsed * 1000, 2)})
            request_id_var.reset(token)

    async def _body(self, receive: Receive) -> bytes | None:
        """The whole body, or None past the limit."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive
