"""OpenFeature Remote Evaluation Protocol (open-feature/protocol service/openapi.yaml) and its SSE change stream.

The hot path: raw body -> orjson -> in-memory cache -> orjson. No database, no pydantic, no threadpool; the
token check is answered from server.auth.token_cache.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from sse_starlette.sse import EventSourceResponse, ServerSentEvent

from server.auth.models import Actor
from server.deps import FlagCacheDep, SettingsDep, StreamSlotsDep, current_actor
from server.errors import Forbidden
from server.flags.cache import FlagCache
from server.flags.evaluation import EvaluationError, check_context, resolution
from server.settings import Settings

router = APIRouter(prefix="/ofrep/v1", tags=["ofrep"])
JSON = "application/json"
KEEPALIVE_SECONDS = 15.0


def _failure(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON, headers=headers)


async def _parse(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EvaluationError("PARSE_ERROR", f"request body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise EvaluationError("PARSE_ERROR", "request body must be a JSON object like {\"context\": {...}}")
    return check_context(payload.get("context"))


def environment_of(actor: Actor, context: dict[str, Any], cache: FlagCache, default: str) -> str:
    """A token named NAME@ENV evaluates in ENV only; other tokens take context.environment, else the default."""
    scoped = actor.name.rpartition("@")[2] if "@" in actor.name else None
    asked = context.get("environment")
    if scoped is not None and scoped in cache.environments:
        if asked is not None and asked != scoped:
            raise Forbidden(f"token {actor.name!r} evaluates in environment {scoped!r} only, not {asked!r}")
        return scoped
    if asked is None:
        return default
    if not isinstance(asked, str) or asked not in cache.environments:
        raise EvaluationError("INVALID_CONTEXT",
                              f"unknown environment {asked!r}; environments are {sorted(cache.environments)}")
    return asked


@router.post("/evaluate/flags/{key}", summary="OFREP single flag evaluation")
async def evaluate_flag(key: str, request: Request, cache: FlagCacheDep, settings: SettingsDep) -> Response:
    # Answered by server/flags/fastpath.py, which passes cache and settings itself (no dependency solving).
    actor = await current_actor(request)
    try:
        context = await _parse(request)
        environment = environment_of(actor, context, cache, settings.flag_environment)
        flag = cache.flags.get(key)
        if flag is None:
            cache.misses += 1
            return _failure(404, {"key": key, "errorCode": "FLAG_NOT_FOUND",
                                  "errorDetails": f"flag {key!r} does not exist (or was deleted)"})
        cache.hits += 1
        return Response(orjson.dumps(resolution(flag, environment, context)), media_type=JSON)
    except EvaluationError as exc:
        return _failure(400, {"key": key, "errorCode": exc.code, "errorDetails": exc.details})


def _etag(cache: FlagCache, environment: str, context: dict[str, Any], request: Request) -> str:
    # Configuration, context and credential: a client must not get a 304 for another token's answers.
    credential = request.headers.get("authorization") or request.headers.get("x-api-key") or ""
    material = b"|".join([cache.config_digest.encode(), environment.encode(),
                          orjson.dumps(context, option=orjson.OPT_SORT_KEYS),
                          hashlib.sha256(credential.encode()).digest()])
    return '"' + hashlib.sha256(material).hexdigest()[:32] + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = {c.strip().removeprefix("W/") for c in if_none_match.split(",")}
    return etag in candidates or "*" in candidates


def _events_url(request: Request, settings: Settings) -> str:
    public = settings.public_url
    base = public.rstrip("/") if public else str(request.base_url).rstrip("/")
    return f"{base}/ofrep/v1/events"


@router.post("/evaluate/flags", summary="OFREP bulk evaluation")
async def evaluate_all(request: Request, cache: FlagCacheDep, settings: SettingsDep) -> Response:
    # Answered by server/flags/fastpath.py, like evaluate_flag.
    actor = await current_actor(request)
    try:
        context = await _parse(request)
        environment = environment_of(actor, context, cache, settings.flag_environment)
    except EvaluationError as exc:
        return _failure(400, {"errorCode": exc.code, "errorDetails": exc.details})
    etag = _etag(cache, environment, context, request)
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers={"ETag": etag})
    results = []
    for flag in list(cache.flags.values()):
        try:
            results.append(resolution(flag, environment, context))
        except EvaluationError as exc:
            results.append({"key": flag.key, "errorCode": exc.code, "errorDetails": exc.details})
    cache.hits += len(results)
    body = {"flags": results,
            "metadata": {"environment": environment, "configVersion": cache.config_digest},
            "eventStreams": [{"type": "sse", "url": _events_url(request, settings), "inactivityDelaySec": 120}]}
    return Response(orjson.dumps(body), media_type=JSON, headers={"ETag": etag})


@router.get("/events", summary="SSE stream of flag change notices (OFREP refetchEvaluation events)")
async def events(request: Request, cache: FlagCacheDep, slots: StreamSlotsDep) -> EventSourceResponse:
    actor = await current_actor(request)
    holder = slots.take(actor)
    listener = cache.subscribe()

    async def stream() -> AsyncIterator[ServerSentEvent]:
        try:
            yield ServerSentEvent(comment="connected", retry=2000)
            while True:
                notice = await listener.queue.get()
                data = {"type": "refetchEvaluation", "etag": cache.config_digest, "lastModified": int(time.time()),
                        "flag": notice.get("key"), "version": notice.get("version")}
                yield ServerSentEvent(data=orjson.dumps(data).decode(), event="message",
                                      id=str(int(notice.get("generation") or 0)))
        finally:
            cache.unsubscribe(listener)

    # sse-starlette ends the stream when the server shuts down, and sends keep-alive pings.
    return EventSourceResponse(slots.hold(holder, stream()), ping=KEEPALIVE_SECONDS,
                               headers={"X-Accel-Buffering": "no"})


@router.get("/configuration", summary="OFREP provider configuration")
async def configuration(request: Request) -> Response:
    await current_actor(request)
    body = {"name": "runbookd",
            "capabilities": {"cacheInvalidation": {"polling": {"enabled": True, "minPollingIntervalMs": 1000}},
                             "flagEvaluation": {"supportedTypes": ["boolean", "string", "int", "float", "object"]}}}
    return Response(orjson.dumps(body), media_type=JSON)
