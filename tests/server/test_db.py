"""The engine's connection pool against a real PostgreSQL: dropped connections and the idle ping."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine

from server import db
from tests import support

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_engine(postgres_available: None) -> Iterator[Engine]:
    name, url = support.create_pg_database()
    engine = db.make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()
        support.drop_pg_database(name)


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("select pg_backend_pid()").scalar_one())


def _terminate(pid: int) -> None:
    with psycopg.connect(support.PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute("select pg_terminate_backend(%s)", (pid,))
    support.wait_for(lambda: not _alive(pid), 5, f"backend {pid} to end")


def _alive(pid: int) -> bool:
    with psycopg.connect(support.PG_ADMIN_URL, autocommit=True) as admin:
        return admin.execute("select 1 from pg_stat_activity where pid = %s", (pid,)).fetchone() is not None


def test_a_connection_dropped_while_idle_is_replaced_at_checkout(pg_engine, monkeypatch):
    pid = _backend_pid(pg_engine)
    _terminate(pid)  # what a database restart or an idle timeout does to a pooled connection
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)  # as if it had sat idle past the threshold
    assert _backend_pid(pg_engine) != pid


def test_a_connection_used_a_moment_ago_is_not_pinged(pg_engine, monkeypatch):
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 3600.0)
    pings: list[object] = []
    real = pg_engine.dialect.do_ping
    monkeypatch.setattr(pg_engine.dialect, "do_ping", lambda conn: pings.append(conn) or real(conn))
    pid = _backend_pid(pg_engine)
    assert _backend_pid(pg_engine) == pid and pings == [], "a healthy connection used a moment ago costs no ping"
    # One the server closed a moment ago (a restart's termination notice is waiting on its socket) is
    # caught at checkout without a round trip, pinged, and replaced: the next statement does not fail.
    _terminate(pid)
    assert _backend_pid(pg_engine) != pid
    assert len(pings) == 1
