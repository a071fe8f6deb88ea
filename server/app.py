"""create_app(): routers, middleware, exception handlers, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server import health, heap, tracing
from server.audit.routes import router as audit_router
from server.auth.routes import router as tokens_router
from server.auth.token_cache import RevocationFollower, TokenCache
from server.chat.routes import router as chat_router
from server.db import make_engine
from server.debug.routes import router as debug_router
from server.errors import document_errors, install_error_handlers
from server.flags.fastpath import OfrepFastPath
from server.flags.ofrep import router as ofrep_router
from server.flags.routes import environments_router as flag_environments_router
from server.flags.routes import router as flags_router
from server.flags.runtime import start_flags
from server.hooks.routes import router as hooks_router
from server.hosts import HostGuardMiddleware
from server.incidents.routes import router as incidents_router
from server.loglevels.routes import debug_router as loggers_router
from server.loglevels.routes import router as loglevels_router
from server.loglevels.sync import OwnLoggerSync
from server.middleware import BodyLimitMiddleware, RequestContextMiddleware
from server.migrate import code_heads
from server.notices import NoticeBus
from server.redis_client import make_redis
from server.runbooks.routes import router as runbooks_router
from server.runs.routes import links_router as artifact_links_router
from server.runs.routes import router as runs_router
from server.settings import Settings, get_settings
from server.ui import install as install_console

ROUTERS = [health.router, tokens_router, audit_router, loglevels_router, loggers_router, debug_router]
ROUTERS += [flags_router, flag_environments_router, ofrep_router]
ROUTERS += [runbooks_router, runs_router]
ROUTERS += [incidents_router, chat_router]
ROUTERS += [hooks_router]
ROUTERS += [artifact_links_router]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = make_engine(settings.effective_database_url)
        app.state.redis = make_redis(settings) if settings.redis_url else None
        # One Redis subscription per process for every change notice (server/notices.py); needs Redis.
        bus = app.state.notices = NoticeBus(settings) if app.state.redis is not None else None
        app.state.flag_cache = start_flags(app, settings, bus)
        app.state.loglevel_sync = None
        if bus is not None:
            # Applies overrides of runbookd's own loggers made through any process.
            app.state.loglevel_sync = OwnLoggerSync(settings, app.state.engine).start(bus)
            # Tokens revoked through another api process are forgotten here too (server.auth.token_cache).
            bus.add(RevocationFollower(settings, app.state.token_cache))
            bus.start()
        heap.settle()  # the start-up heap out of every later full collection (server/heap.py)
        try:
            yield
        finally:
            if bus is not None:
                bus.stop()
            app.state.flag_cache.stop()
            if app.state.loglevel_sync is not None:
                app.state.loglevel_sync.stop()
            if app.state.redis is not None:
                app.state.redis.close()
            app.state.engine.dispose()

    # docs_url/redoc_url None: server.ui.docs serves /docs and /redoc from local assets (no CDN).
    app = FastAPI(title="runbookd", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Debugging automation: runbooks, flags, log levels, incident history.")
    app.state.settings = settings
    app.state.token_cache = TokenCache(settings.auth_cache_seconds)
    app.state.migration_heads = code_heads()
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    install_console(app)  # the web console under /ui, "/" -> /ui, offline /docs and /redoc (server.ui)
    document_errors(app)
    # Added last so it runs first: every response, errors from the body limit included, gets a request id.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(HostGuardMiddleware, allowed_hosts=settings.allowed_hosts, public_url=settings.public_url)
    app.add_middleware(RequestContextMiddleware)
    # Outermost of all: OFREP evaluations, the hot path, skip routing and the access log (see its module).
    app.add_middleware(OfrepFastPath, max_body_bytes=settings.max_body_bytes)
    tracing.instrument_app(app)  # only when OTEL_EXPORTER_OTLP_*ENDPOINT is set (server/tracing.py)
    return app
