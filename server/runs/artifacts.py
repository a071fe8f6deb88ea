"""A run's artifact files as people open them: listed with sizes, served with their real Content-Type under a
CSP that runs no script (an SVG plot is an image, never a page), and short-lived signed links that open in a
browser without a bearer header.

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
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from pydantic import BaseModel

from server.errors import DomainError, Forbidden, NotFound
from server.models_base import UTCDateTime, utcnow
from server.redis_client import key as redis_key
from server.settings import Settings

ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
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


def run_dir(settings: Settings, run_id: int) -> Path:
    assert settings.artifacts_dir is not None
    return settings.artifacts_dir / f"run-{run_id}"


def path_of(settings: Settings, run_id: int, name: str) -> Path:
    """The file of a run's artifact, or NotFound; a name can never leave the run's directory."""
    path = run_dir(settings, run_id) / name
    if not ARTIFACT_NAME.match(name) or name.startswith(".") or not path.is_file():
        raise NotFound(f"run {run_id} has no artifact {name!r}")
    return path


def list_artifacts(settings: Settings, run_id: int, step_ids: list[str] | None = None) -> list[ArtifactInfo]:
    """Every file of a run, by name, with the step that wrote it (names are `<step>.<attempt>.<file>`)."""
    directory = run_dir(settings, run_id)
    if not directory.is_dir():
        return []
    known = sorted(step_ids or [], key=len, reverse=True)
    items = []
    for path in sorted(directory.iterdir()):
        if not path.is_file() or not ARTIFACT_NAME.match(path.name):
            continue
        step = next((s for s in known if path.name.startswith(f"{_safe(s)}.")), None)
        items.append(ArtifactInfo(name=path.name, size=path.stat().st_size, content_type=content_type(path.name),
                                  step_id=step,
                                  url=f"{settings.effective_public_url}/api/v1/runs/{run_id}/artifacts/{path.name}"))
    return items


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80]


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
