"""What an api process runs for flags besides its routes: the evaluation cache and the start-up expiry sweep."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from server.flags.cache import FlagCache
from server.flags.expiry import revert_due
from server.notices import NoticeBus
from server.settings import Settings

log = logging.getLogger(__name__)


def start_flags(app: FastAPI, settings: Settings, bus: NoticeBus | None = None) -> FlagCache:
    """Apply expiries missed while nothing ran, then load the cache and follow changes on the bus."""
    try:
        revert_due(app.state.engine, settings, app.state.redis)
    except Exception:
        log.exception("start-up sweep of flag expiries failed; beat retries every second")
    cache = FlagCache(settings, app.state.engine)
    cache.start(bus)
    app.state.flag_cache = cache
    return cache
