"""The console's static files, served under names that carry a hash of their content.

A changed file gets a new name, so browsers may keep each one for a year (immutable) and never show a
stale script after an upgrade. Read once at import: the package's files do not change while it runs.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from server.errors import NotFound

STATIC_DIR = Path(__file__).resolve().parent / "static"
IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def _load() -> tuple[dict[str, str], dict[str, Asset]]:
    urls: dict[str, str] = {}
    files: dict[str, Asset] = {}
    for path in sorted(STATIC_DIR.iterdir()):
        if not path.is_file():
            continue
        body = path.read_bytes()
        digest = hashlib.sha256(body).hexdigest()[:12]
        hashed = f"{path.stem}.{digest}{path.suffix}"
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if media_type.startswith("text/") or media_type.endswith("javascript"):
            media_type += "; charset=utf-8"
        urls[path.name] = f"/ui/static/{hashed}"
        files[hashed] = Asset(body, media_type, f'"{digest}"')
    return urls, files


URLS, FILES = _load()


def url(name: str) -> str:
    """The hashed URL of a static file, for templates: {{ static('console.css') }}."""
    return URLS[name]


async def serve(request: Request) -> Response:
    name = request.path_params["name"]
    asset = FILES.get(name)
    if asset is None:
        raise NotFound(f"no console asset {name!r}")
    headers = {"Cache-Control": IMMUTABLE, "ETag": asset.etag, "X-Content-Type-Options": "nosniff"}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)
