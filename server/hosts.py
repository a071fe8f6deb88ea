"""The Host header is the client's word: check it against RUNBOOKD_ALLOWED_HOSTS, and never build a redirect
from it when RUNBOOKD_PUBLIC_URL says where the api is.

Starlette answers /api/v1/runs/ with a redirect to http://<Host>/api/v1/runs, and OFREP's eventStreams URL is
built the same way: a forged Host sent users (and OpenFeature providers) elsewhere.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import error_response


def host_allowed(host: str, allowed: list[str]) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    for pattern in allowed:
        pattern = pattern.lower()
        if pattern == "*" or name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])):
            return True
    return False


class HostGuardMiddleware:
    def __init__(self, app: ASGIApp, allowed_hosts: list[str], public_url: str | None) -> None:
        self.app, self.allowed = app, allowed_hosts
        public = urlsplit(public_url) if public_url else None
        self.public = (public.scheme, public.netloc) if public and public.netloc else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        if self.allowed and not host_allowed(host, self.allowed):
            response = error_response(400, "host_not_allowed",
                                      f"Host {host[:100]!r} is not one of RUNBOOKD_ALLOWED_HOSTS")
            await response(scope, receive, send)
            return
        if self.public is None:
            await self.app(scope, receive, send)
            return

        async def send_public(message: Message) -> None:
            if message["type"] == "http.response.start" and 300 <= message["status"] < 400:
                message["headers"] = [(k, self._public(v) if k.lower() == b"location" else v)
                                      for k, v in message.get("headers", [])]
            await send(message)

        await self.app(scope, receive, send_public)

    def _public(self, location: bytes) -> bytes:
        assert self.public is not None
        parts = urlsplit(location.decode("latin-1"))
        if not parts.netloc:
            return location
        return urlunsplit((self.public[0], self.public[1], parts.path, parts.query, parts.fragment)).encode("latin-1")
