"""First-start set-up shared by `runbookd up` and `runbookd token bootstrap`."""

from __future__ import annotations

from server.auth import service as auth
from server.auth.models import Actor, Role, Source
from server.db import make_engine, session_scope


def bootstrap_admin_token(database_url: str) -> str | None:
    """Create the first admin token when there is none; return its plaintext, or None if tokens exist."""
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            if auth.has_any_token(session):
                return None
            _token, raw = auth.create_token(session, name="admin", role=Role.admin,
                                            actor=Actor(name="system", role=Role.admin, source=Source.cli))
            return raw
    finally:
        engine.dispose()
