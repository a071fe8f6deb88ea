"""Run events: stored in run_events (so a late follower gets the history) and published on Redis live."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

import orjson
import redis
from sqlalchemy import Connection, func, insert
from sqlmodel import Session, col, select

from server.aftercommit import on_commit
from server.models_base import as_utc, utcnow
from server.redis_client import key
from server.runs.models import RunEvent
from server.settings import Settings

log = logging.getLogger("runbookd.runs")


def channel(settings: Settings, run_id: int) -> str:
    return key(settings, "runs", str(run_id), "events")


def cancel_key(settings: Settings, run_id: int) -> str:
    return key(settings, "runs", str(run_id), "cancel")


_TABLE = RunEvent.__table__  # type: ignore[attr-defined]
# One statement object, so SQLAlchemy compiles it once; with several rows it becomes one multi-row INSERT.
_INSERT = insert(_TABLE).returning(_TABLE.c.id, sort_by_parameter_order=True)


def record(session: Session | Connection, *, run_id: int, type: str, step_id: str | None = None,
           data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Store an event in the caller's transaction; returns it as the message to publish after the commit."""
    return record_many(session, run_id=run_id, items=[(step_id, type, data)])[-1]


Item = tuple[str | None, str, dict[str, Any] | None]  # (step id or None, type, data)


def record_many(session: Session | Connection, *, run_id: int, items: Sequence[Item]) -> list[dict[str, Any]]:
    """Store several events of one run in one Core statement, in order; returns their messages. The run's row
    must already be in the database (flushed)."""
    now = utcnow()
    rows = [{"run_id": run_id, "ts": now, "type": t, "step_id": s, "data": d} for s, t, d in items]
    conn = session.connection() if isinstance(session, Session) else session  # Core: skip the ORM's execute path
    ids = conn.execute(_INSERT, rows).scalars().all()
    ts = now.isoformat()
    return [{"id": event_id, "run_id": run_id, "ts": ts, "type": row["type"], "step_id": row["step_id"],
             "data": row["data"]} for event_id, row in zip(ids, rows, strict=True)]


def as_message(event: RunEvent) -> dict[str, Any]:
    return {"id": event.id, "run_id": event.run_id, "ts": as_utc(event.ts).isoformat(), "type": event.type,
            "step_id": event.step_id, "data": event.data}


def publish(client: redis.Redis | None, settings: Settings, run_id: int, messages: list[dict[str, Any]]) -> None:
    """Publish these messages, in order, as one Redis message: a JSON array (stream.follow reads it).

    One message per batch, so a follower gets a batch whole: the output lines in it stay in place between
    the stored events around them. Best effort: followers fall back to the stored history, so a Redis
    hiccup loses nothing for good (but output lines, which are live only).
    """
    if client is None or not messages:
        return
    try:
        client.publish(channel(settings, run_id), orjson.dumps(messages))
    except redis.RedisError as exc:
        log.warning("run event not published", extra={"run_id": run_id, "error": str(exc)})


def publish_on_commit(session: Session, client: redis.Redis | None, settings: Settings, *, run_id: int,
                      after_id: int) -> None:
    """Publish the run's events stored after after_id (this transaction's) once the session commits; never
    on a rollback (server/aftercommit.py)."""
    if client is None:
        return
    session.flush()
    messages = [as_message(e) for e in history(session, run_id=run_id, after_id=after_id)]
    if messages:
        on_commit(session, partial(publish, client, settings, run_id, messages))


def history(session: Session, *, run_id: int, after_id: int = 0, limit: int = 1000) -> list[RunEvent]:
    stmt = (select(RunEvent).where(RunEvent.run_id == run_id, col(RunEvent.id) > after_id)
            .order_by(col(RunEvent.id)).limit(limit))
    return list(session.exec(stmt))


def last_id(session: Session, *, run_id: int) -> int:
    return int(session.exec(select(func.max(RunEvent.id)).where(RunEvent.run_id == run_id)).one() or 0)
