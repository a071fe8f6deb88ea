"""Helpers shared by the console's routes: form values, errors beside fields, redirects, flash notes."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from pydantic import ValidationError
from starlette.responses import RedirectResponse

from server.errors import InvalidInput


def see_other(url: str, note: str | None = None) -> RedirectResponse:
    """Post/Redirect/Get: a 303 to a page, with an optional one-line note it shows."""
    if note:
        url += ("&" if "?" in url else "?") + urlencode({"note": note})
    return RedirectResponse(url, status_code=303)


def quoted(value: str) -> str:
    return quote(value, safe="")


def blank_to_none(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def field_errors(details: Any, prefix: str = "") -> dict[str, str]:
    """{field: message} from an InvalidInput's details, for showing each message beside its field."""
    out: dict[str, str] = {}
    if isinstance(details, list):
        for item in details:
            if isinstance(item, dict) and "field" in item:
                name = str(item["field"]).removeprefix(prefix)
                out.setdefault(name or "_", str(item.get("message", "")))
    return out


def invalid(exc: ValidationError) -> InvalidInput:
    """A pydantic error as the API's 422 (same fields and messages as server.errors)."""
    details = [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"], "type": e["type"]}
               for e in exc.errors()]
    summary = "; ".join(f"{d['field'] or 'input'}: {d['message']}" for d in details[:5])
    return InvalidInput(f"Invalid input: {summary}", details=details)
