"""GET /api/v1/runs/{id}/events: Server-Sent Events, the stored history first, then live ones from Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import redis.asyncio as aioredis
from fastapi import Request
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from server.runs import events
from server.runs.models import Run, RunStatus
from server.settings import Settings

RESYNC_S = 2.0  # re-read the stored history this often, so a missed publish only delays an event


def _stored(request: Request, run_id: int, after_id: int) -> tuple[list[dict[str, Any]], bool]:
    with Session(request.app.state.engine) as session:
        rows = events.history(session, run_id=run_id, after_id=after_id)
        run = session.get(Run, run_id)
        finished = run is None or RunStatus(run.status).finished
        return [events.as_message(e) for e in rows], finished


def _sse(message: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"event": message["type"], "data": orjson.dumps(message).decode()}
    if message.get("id") is not None:
        out["id"] = str(message["id"])
    return out


async def follow(request: Request, settings: Settings, run_id: int, after_id: int) -> AsyncIterator[dict[str, Any]]:
    """History after after_id, then live events until the run finishes or the client leaves.

    Stored events are always sent from the stored history, in id order: a live one only says that there
    is more to read, so an event published late or lost is never skipped. Output lines are live only;
    each batch the worker publishes (events.publish) keeps a line after the stored event it followed, and
    the line is sent right after that event.
    """
    pubsub = None
    client = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=2) if settings.redis_url else None
    try:
        if client is not None:
            try:
                pubsub = client.pubsub()
                await pubsub.subscribe(events.channel(settings, run_id))  # before the history: no gap
            except (aioredis.RedisError, OSError):
                pubsub = None
        last_id = after_id
        next_sync = 0.0
        lines_after: dict[int, list[dict[str, Any]]] = {}  # output lines waiting for the stored event they follow
        while True:
            if time.monotonic() >= next_sync:
                stored, finished = await run_in_threadpool(_stored, request, run_id, last_id)
                for message in stored:
                    last_id = max(last_id, message["id"])
                    yield _sse(message)
                    for line in lines_after.pop(message["id"], []):
                        yield _sse(line)
                if finished and not stored:
                    return
                if any(m["type"] == "run.finished" for m in stored):
                    return
                next_sync = time.monotonic() + RESYNC_S
            if await request.is_disconnected():
                return
            batch: list[dict[str, Any]] = []
            if pubsub is not None:
                try:
                    raw = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                except (aioredis.RedisError, OSError):
                    pubsub, raw = None, None
                if raw and raw.get("type") == "message":
                    batch = orjson.loads(raw["data"])
            else:
                await asyncio.sleep(0.5)
            anchor = last_id
            for live in batch:
                if live.get("id") is not None:
                    anchor = live["id"]
                    if anchor > last_id:
                        next_sync = 0.0  # read what was stored, in id order
                elif live["type"] == "step.output":
                    if anchor <= last_id:
                        yield _sse(live)  # what it follows was sent already
                    else:
                        lines_after.setdefault(anchor, []).append(live)
    finally:
        if pubsub is not None:
            with contextlib.suppress(aioredis.RedisError, OSError):
                await pubsub.aclose()
        if client is not None:
            await client.aclose()
