"""A run's artifacts as people open them: listed with sizes, streamed from the database (artifact_store) with
their real Content-Type under a CSP that runs no script (an SVG plot is an image, never a page), and
short-lived signed links that open in a browser without a bearer header.

A link is an itsdangerous URLSafeTimedSerializer token over {run, name, by}: `name` null signs the whole run
(an index page whose entries are links of their own). The key is RUNBOOKD_ARTIFACT_LINK_SECRET when set,
else one random key shared by every api process through Redis (SET NX), else one kept in RUNBOOKD_HOME.
"""

from __future__ import annotations

import html
import mimetypes
import re
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from fastapi.responses import Response, StreamingResponse
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from pydantic import BaseModel
from sqlalchemy import Engine
from sqlmodel import Session

from server.errors import DomainError, Forbidden, NotFound
from server.models_base import UTCDateTime, utcnow
from server.redis_client import key as redis_key
from server.runs import artifact_store
from server.settings import Settings

ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
NAME_MAX = 200
SALT = "runbookd.artifact-link"
# Nothing inside an artifact may run: no script, no plugin, no form, no fetch; inline styles are allowed
# so an SVG plot still looks right. `sandbox` makes a document opened directly a unique opaque origin.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox"
TYPES = {".svg": "image/svg+xml", ".json": "application/json", ".jsonl": "application/x-ndjson",
         ".txt": "text/plain; charset=utf-8", ".log": "text/plain; charset=utf-8",
         ".folded": "text/plain; charset=utf-8", ".html": "text/plain; charset=utf-8",
         ".htm": "text/plain; charset=utf-8"}  # an HTML artifact is shown as text, never rendered
INLINE = ("image/", "text/", "application/json", "application/x-ndjson")


class Gone(DomainError):
    status_code = 410
    code = "link_expired"


class ArtifactInfo(BaseModel):
    name: str
    size: int
    content_type: str
    step_id: str | None
    sha256: str | None = None  # of the bytes; also the download's ETag
    url: str  # needs the bearer token; `runbookd runs artifacts RUN NAME` downloads it


class ArtifactLink(BaseModel):
    url: str
    run_id: int
    name: str | None
    expires_at: UTCDateTime


def content_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix in TYPES:
        return TYPES[suffix]
    guessed, _encoding = mimetypes.guess_type(name, strict=True)
    if guessed is None or guessed.startswith(("text/html", "application/xhtml", "application/javascript",
                                             "text/javascript")):
        return "application/octet-stream"
    return guessed


def headers_for(name: str) -> dict[str, str]:
    """Content-Type, the no-script CSP, nosniff; anything a browser would not show inline is a download."""
    kind = content_type(name)
    disposition = "inline" if kind.startswith(INLINE) else "attachment"
    return {"Content-Type": kind, "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
            "Content-Disposition": f'{disposition}; filename="{name}"', "Cache-Control": "private, max-age=60",
            "Referrer-Policy": "no-referrer"}


def _info(settings: Settings, run_id: int, stored: artifact_store.Stored) -> ArtifactInfo:
    return ArtifactInfo(name=stored.name, size=stored.size, content_type=content_type(stored.name),
                        step_id=stored.step_id, sha256=stored.sha256,
                        url=f"{settings.effective_public_url}/api/v1/runs/{run_id}/artifacts/{stored.name}")


def list_artifacts(session: Session, settings: Settings, run_id: int) -> list[ArtifactInfo]:
    """Every artifact of a run, by name, with the step that wrote it (names are `<step>.<attempt>.<file>`)."""
    return [_info(settings, run_id, s) for s in artifact_store.of_run(session, run_id)]


def find(session: Session, run_id: int, name: str) -> artifact_store.Stored:
    """A run's artifact (its row, not its bytes), or NotFound."""
    found = None
    if ARTIFACT_NAME.match(name) and not name.startswith(".") and len(name) <= NAME_MAX:
        found = artifact_store.find(session, run_id, name)
    if found is None:
        raise NotFound(f"run {run_id} has no artifact {name!r}")
    return found


def respond(engine: Engine, stored: artifact_store.Stored, if_none_match: str | None) -> Response:
    """The artifact streamed from the database chunk by chunk, with its headers; its ETag is its SHA-256, so
    a browser that has it gets 304."""
    etag = f'"{stored.sha256}"'
    headers = {**headers_for(stored.name), "ETag": etag}  # the type from the name, as today's rules say
    if if_none_match is not None and etag in {t.strip().removeprefix("W/") for t in if_none_match.split(",")}:
        return Response(status_code=304, headers={k: v for k, v in headers.items() if k != "Content-Type"})
    headers["Content-Length"] = str(stored.size)
    return StreamingResponse(artifact_store.chunks(engine, stored), headers=headers)


# -- signed links ----------------------------------------------------------------------------------
def _secret(settings: Settings, client: redis.Redis | None) -> str:
    if settings.artifact_link_secret is not None:
        return settings.artifact_link_secret.get_secret_value()
    if client is not None:
        try:
            name = redis_key(settings, "artifact-links", "secret")
            client.set(name, secrets.token_urlsafe(32), nx=True)
            value = client.get(name)
            if value:
                return value.decode() if isinstance(value, bytes) else str(value)
        except redis.RedisError:
            pass
    path = settings.home / "artifact-link.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text().strip()


def _serializer(settings: Settings, client: redis.Redis | None) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_secret(settings, client), salt=SALT)


def sign(settings: Settings, client: redis.Redis | None, *, run_id: int, name: str | None,
         by: str, base_url: str | None = None) -> ArtifactLink:
    """A link to one artifact (or, name None, to all of a run's) that works without a token until it expires."""
    token = _serializer(settings, client).dumps({"run": run_id, "name": name, "by": by})
    expires = utcnow() + timedelta(seconds=settings.artifact_link_ttl.total_seconds())
    base = (settings.public_url or base_url or settings.effective_public_url).rstrip("/")
    return ArtifactLink(url=f"{base}/a/{token}", run_id=run_id, name=name,
                        expires_at=expires)


def verify(settings: Settings, client: redis.Redis | None, token: str) -> dict[str, Any]:
    """The signed {run, name, by}; 410 when expired, 403 when forged or altered."""
    try:
        ttl = max(1, int(settings.artifact_link_ttl.total_seconds()))
        data = _serializer(settings, client).loads(token, max_age=ttl)
    except SignatureExpired as exc:
        signed: datetime | None = exc.date_signed
        when = f" (signed {signed:%Y-%m-%d %H:%M:%S %Z})" if signed else ""
        raise Gone(f"this artifact link has expired{when}; ask for a new one: "
                   "runbookd runs artifacts RUN --link") from None
    except BadSignature:
        raise Forbidden("this artifact link is not valid (altered, or signed with another key)") from None
    if not isinstance(data, dict) or not isinstance(data.get("run"), int):
        raise Forbidden("this artifact link is not valid")
    return data


def index_page(run_id: int, links: list[tuple[ArtifactInfo, str]]) -> str:
    """The page a per-run link opens: each artifact with its size, as links signed like this one."""
    rows = "".join(f'<li><a href="{html.escape(url)}">{html.escape(a.name)}</a> '
                   f"({a.size} bytes, {html.escape(a.content_type)})</li>" for a, url in links)
    return (f"<!doctype html><meta charset=utf-8><title>run {run_id} artifacts</title>"
            f"<h1>Artifacts of run {run_id}</h1><ul>{rows or '<li>none</li>'}</ul>")
