"""GET /api/v1/runs/{id}/events: Server-Sent Events, the stored history first, then live ones from Redis."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import Request
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from server.db import unreachable
from server.deps import engine_of
from server.runs import events
from server.runs.feed import Batch, RunFeed
from server.runs.models import Run
from server.settings import Settings

log = logging.getLogger("runbookd.runs")
RESYNC_S = 2.0  # re-read the stored history this often, so a missed publish only delays an event


def _stored(request: Request, run_id: int, after_id: int) -> tuple[list[dict[str, Any]], bool]:
    with Session(engine_of(request)) as session:
        rows = events.history(session, run_id=run_id, after_id=after_id)
        run = session.get(Run, run_id)
        finished = run is None or run.status.finished
        return [events.as_message(e) for e in rows], finished


def _sse(message: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"event": message["type"], "data": orjson.dumps(message).decode()}
    if message.get("id") is not None:
        out["id"] = str(message["id"])
    return out


def _place_lines(batch: list[dict[str, Any]], sent_through: int, lines_after: dict[int, list[dict[str, Any]]]
                 ) -> tuple[list[dict[str, Any]], bool]:
    """Sort one published batch (events.publish): output lines that follow an event not sent yet wait for
    it in lines_after; returns the lines to send now, and whether the batch holds events not sent yet."""
    now: list[dict[str, Any]] = []
    fresh, anchor = False, sent_through
    for live in batch:
        if live.get("id") is not None:
            anchor = live["id"]
            fresh = fresh or anchor > sent_through
        elif live["type"] == "step.output":
            if anchor <= sent_through:
                now.append(live)  # what it follows was sent already
            else:
                lines_after.setdefault(anchor, []).append(live)
    return now, fresh


async def _next_batch(queue: asyncio.Queue[Batch], timeout: float) -> Batch:
    """The next batch published for the run, [] when none came within timeout, None when the feed broke."""
    if timeout <= 0:
        return queue.get_nowait() if not queue.empty() else []
    try:
        return await asyncio.wait_for(queue.get(), timeout)
    except TimeoutError:
        return []


def feed_of(request: Request, settings: Settings) -> RunFeed:
    """The api process's one subscription for every follower (server/runs/feed.py)."""
    feed: RunFeed | None = getattr(request.app.state, "run_feed", None)
    if feed is None:
        feed = request.app.state.run_feed = RunFeed(settings)
    return feed


async def follow(request: Request, settings: Settings, run_id: int, after_id: int) -> AsyncIterator[dict[str, Any]]:
    """History after after_id, then live events until the run finishes or the client leaves.

    Stored events are always sent from the stored history, in id order: a live one only says that there
    is more to read, so an event published late or lost is never skipped. Output lines are live only;
    each batch the worker publishes (events.publish) keeps a line after the stored event it followed, and
    the line is sent right after that event. A batch that arrived while the history was read has its
    lines put in place too; one that comes later than its events' history has them sent at once.
    """
    feed = feed_of(request, settings)
    joined = pubsub = await feed.join(run_id)  # before the history: no gap
    try:
        last_id = after_id
        next_sync = 0.0
        lines_after: dict[int, list[dict[str, Any]]] = {}  # output lines waiting for the stored event they follow
        while True:
            batches: list[list[dict[str, Any]]] = []
            if time.monotonic() >= next_sync:
                try:
                    stored, finished = await run_in_threadpool(_stored, request, run_id, last_id)
                except Exception as exc:
                    if not unreachable(exc):
                        raise
                    # The database is restarting: end the stream cleanly; the client reconnects with
                    # Last-Event-ID (503 until the database is back) and misses nothing.
                    log.warning("run event stream ended: database unreachable", extra={"run_id": run_id})
                    return
                while pubsub is not None:  # published around the read: these lines follow events just read
                    got = await _next_batch(pubsub, 0.0)
                    if got is None:
                        pubsub = None
                    if not got:
                        break
                    batches.append(got)
                for earlier in batches:
                    for line in _place_lines(earlier, last_id, lines_after)[0]:
                        yield _sse(line)
                for message in stored:
                    last_id = max(last_id, message["id"])
                    yield _sse(message)
                    for line in lines_after.pop(message["id"], []):
                        yield _sse(line)
                if finished and not stored:
                    return
                if any(m["type"] == "run.finished" for m in stored):
                    return
                newest = max((m["id"] for b in batches for m in b if m.get("id") is not None), default=0)
                next_sync = 0.0 if newest > last_id else time.monotonic() + RESYNC_S  # stored after the read
            if await request.is_disconnected():
                return
            live: Batch = []
            if pubsub is not None:
                live = await _next_batch(pubsub, 0.5)
                if live is None:
                    pubsub = None
            else:
                await asyncio.sleep(0.5)
            now, fresh = _place_lines(live or [], last_id, lines_after)
            for line in now:
                yield _sse(line)
            if fresh:
                next_sync = 0.0  # read what was stored, in id order
    finally:
        await feed.leave(run_id, joined)
