"""Reverting temporary flag changes: the beat task every second, and a sweep when an api process starts."""

from __future__ import annotations

import logging

import redis
from sqlalchemy import Engine
from sqlmodel import Session

from server.db import session_scope
from server.flags import service
from server.flags.cache import announce_change
from server.settings import Settings

log = logging.getLogger(__name__)


def revert_due(engine: Engine, settings: Settings, client: redis.Redis | None) -> list[tuple[str, int]]:
    """Apply every due expiry, each in its own transaction, and announce the new versions."""
    with Session(engine) as session:
        due = service.due_expiries(session)
    applied = []
    for expiry_id in due:
        try:
            with session_scope(engine) as session:
                version = service.revert_expiry(session, expiry_id=expiry_id)
                if version is not None:
                    announce_change(session, settings, client, key=version.flag_key, version=version.version)
        except Exception:
            # One bad row must not hold back the others; it stays pending and is retried next time.
            log.exception("could not revert flag expiry %s", expiry_id)
            continue
        if version is not None:
            log.info("temporary flag change expired", extra={"flag": version.flag_key, "version": version.version})
            applied.append((version.flag_key, version.version))
    return applied
