"""Engine and sessions: SessionDep for requests, session_scope() for workers and the CLI."""

from __future__ import annotations

import logging
import select
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlmodel import Session, create_engine

from server import tracing
from server.settings import get_settings

_ASYNC_COMMIT: weakref.WeakSet[Engine] = weakref.WeakSet()


def make_engine(url: str, *, synchronous_commit: bool = True, connect_wait: float = 0.0, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and write-locking transactions.

    synchronous_commit=False (PostgreSQL only) sets it off for every connection of the engine: a commit
    returns before its WAL reaches the disk. Workers use it for run progress (see claims.progress_connection).
    connect_wait (PostgreSQL only): a new connection the server refuses (down, starting up, shutting down) is
    retried for up to this many seconds instead of failing at once: a run's worker rides out a restart.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        if not synchronous_commit:
            kwargs["connect_args"] = {**kwargs.get("connect_args", {}), "options": "-c synchronous_commit=off"}
        engine = tracing.traced_engine(create_engine(url, pool_size=10, max_overflow=20, **kwargs))
        _ping_after_idle(engine)
        if connect_wait > 0:
            _wait_to_connect(engine, connect_wait)
        if not synchronous_commit:
            _ASYNC_COMMIT.add(engine)
        return engine
    if parsed.database and parsed.database != ":memory:":
        from pathlib import Path

        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = tracing.traced_engine(create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                                                 **kwargs))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver level so that the "begin" hook below decides how a transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # BEGIN IMMEDIATE takes the write lock up front: two deferred transactions that read and then
        # write would otherwise deadlock, and the audit chain relies on writers being serialised.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


PING_AFTER_IDLE_S = 1.0


def _ping_after_idle(engine: Engine) -> None:
    """SQLAlchemy's pool_pre_ping, for connections idle longer than PING_AFTER_IDLE_S only (why:
    docs/architecture.md, "Measurements"); a failed ping invalidates the pool, as pool_pre_ping does."""

    @event.listens_for(engine, "connect")
    @event.listens_for(engine, "checkin")
    def _stamp(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        recent = time.monotonic() - record.info.get("idle_since", 0.0) < PING_AFTER_IDLE_S
        if recent and not _closed_by_server(dbapi_connection):
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            if engine.dialect.is_disconnect(exc, dbapi_connection, None):
                raise sa_exc.InvalidatePoolError(str(exc)) from exc
            raise


def _closed_by_server(dbapi_connection: Any) -> bool:
    """Whether an idle connection has something to read: the server sent its termination notice (a restart,
    `pg_ctl stop -m fast`) or closed the socket. An idle connection is otherwise silent, so this poll, with no
    round trip, catches a connection a restart killed even if it was used a moment ago; the ping then fails
    and the pool is invalidated."""
    fileno = getattr(dbapi_connection, "fileno", None)
    if fileno is None:
        return False
    try:
        poller = select.poll()
        poller.register(fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except Exception:  # psycopg raises its own error for a closed connection: dead either way
        return True


CONNECT_RETRY_S = 0.5


def _wait_to_connect(engine: Engine, wait: float) -> None:
    """Retry refused connections for up to `wait` seconds (the documented do_connect hook: returning a
    connection replaces the dialect's own attempt)."""
    log = logging.getLogger("runbookd.db")

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        deadline = time.monotonic() + wait
        while True:
            try:
                return dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError as exc:
                if time.monotonic() >= deadline:
                    raise
                log.warning("database unreachable; retrying", extra={"error": str(exc).strip()[:200]})
                time.sleep(CONNECT_RETRY_S)


def unreachable(exc: BaseException) -> bool:
    """The database could not be reached (refused, shut down, a connection the pool found dead, SQLite busy):
    worth retrying; not an IntegrityError or ProgrammingError, which are conflicts or bugs."""
    if isinstance(exc, sa_exc.DBAPIError):
        return isinstance(exc, sa_exc.OperationalError) or exc.connection_invalidated
    return isinstance(exc, sa_exc.DisconnectionError | sa_exc.TimeoutError)


def engine_of(session: Session) -> Engine:
    """The engine a session is bound to (for work after its commit that needs a session of its own)."""
    bind = session.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def commits_asynchronously(engine: Engine) -> bool:
    """Whether every connection of this engine already has synchronous_commit off."""
    return engine in _ASYNC_COMMIT


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().effective_database_url)


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error, for code outside requests."""
    with Session(engine or get_engine(), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


async def _request_session(request: Request) -> AsyncIterator[Session]:
    """The request's session; async, as opening one does no I/O. Closing one with a transaction still open
    (a rollback) does, so that goes to the thread pool."""
    session = Session(request.app.state.engine, expire_on_commit=False)
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


SessionDep = Annotated[Session, Depends(_request_session)]
