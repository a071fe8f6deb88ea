"""Probes and metrics of the server itself."""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from server.deps import EngineDep, MigrationHeadsDep, RedisDep
from server.errors import error_response
from server.migrate import pending_migrations

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check_database(engine: Engine, heads: frozenset[str]) -> str | None:
    # Ready means migrated too: a pod that answers before `runbookd migrate` ran would fail every request.
    try:
        with engine.connect() as conn:
            return pending_migrations(conn, heads)
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def _check_redis(client: redis.Redis | None) -> str | None:
    if client is None:
        return "RUNBOOKD_REDIS_URL is not set"
    try:
        client.ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


@router.get("/readyz")
async def readyz(engine: EngineDep, client: RedisDep, heads: MigrationHeadsDep) -> JSONResponse:
    checks: dict[str, Any] = {
        "database": await run_in_threadpool(_check_database, engine, heads),
        "redis": await run_in_threadpool(_check_redis, client),
    }
    failing = {name: problem for name, problem in checks.items() if problem}
    if failing:
        log.warning("not ready", extra={"failing": failing})
        details = {name: problem or "ok" for name, problem in checks.items()}
        summary = "; ".join(f"{name}: {problem}" for name, problem in failing.items())
        return error_response(503, "not_ready", f"not ready: {summary}", details)
    return JSONResponse({"status": "ready", "checks": {name: "ok" for name in checks}})


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
