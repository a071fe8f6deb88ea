"""A live api (real uvicorn on loopback) serving the shipped runbooks plus tests/ui/runbooks, a real worker
process, and a headless Debian chromium driven by Playwright. Browser tests skip, saying why, without it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.app import create_app
from server.auth.models import Role
from server.settings import SHIPPED_RUNBOOKS_DIR, Settings
from tests.conftest import subprocess_env
from tests.support import celery_worker, processes, serve

CHROMIUM = os.environ.get("RUNBOOKD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
TEST_RUNBOOKS = Path(__file__).parent / "runbooks"


def browser_problem() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no chromium at {CHROMIUM} (Debian: apt-get install chromium; make test installs it as root)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is missing (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="package")
def shots() -> Path:
    # Not under pytest's basetemp: pytest prunes old basetemps, and on a shared machine that can be at once.
    folder = Path(os.environ.get("RUNBOOKD_TEST_SHOTS") or tempfile.mkdtemp(prefix="runbookd-console-shots-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {folder}")
    return folder


@pytest.fixture(scope="package")
def ui_settings(redis_url: str, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """SQLite, and a queue and Redis prefix of its own so no other test's worker takes these runs."""
    from server.migrate import upgrade

    home = tmp_path_factory.mktemp("ui-home")
    runbooks = home / "runbooks"
    shutil.copytree(SHIPPED_RUNBOOKS_DIR, runbooks, ignore=shutil.ignore_patterns("*.md"))
    for path in TEST_RUNBOOKS.glob("*.yaml"):
        shutil.copy(path, runbooks / path.name)
    url = f"sqlite:///{home / 'runbookd.sqlite3'}"
    upgrade(url)
    return Settings(home=home, database_url=url, redis_url=redis_url, redis_prefix=f"{redis_prefix}ui:",
                    log_format="json", runbooks_dir=runbooks, artifacts_dir=home / "artifacts",
                    run_heartbeat_interval=0.5, default_queue=f"rbtest-ui-{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="package")
def ui_url(ui_settings: Settings) -> Iterator[str]:
    with serve(create_app(ui_settings)) as url:
        yield url


@pytest.fixture(scope="package")
def ui_worker(ui_settings: Settings, ui_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    log_path = tmp_path_factory.mktemp("ui-worker") / "worker.log"
    env = subprocess_env(ui_settings, RUNBOOKD_RUN_HEARTBEAT_INTERVAL="0.5",
                         RUNBOOKD_ARTIFACTS_DIR=str(ui_settings.artifacts_dir),
                         RUNBOOKD_RUNBOOKS_DIR=str(ui_settings.runbooks_dir))
    beat_log = log_path.parent / "beat.log"
    with beat_log.open("wb") as blog, processes() as start:
        # beat: timed flag changes come back by themselves (the kill-switch test)
        start([sys.executable, "-m", "server.cli", "beat"], env=env, stdout=blog, stderr=subprocess.STDOUT)
        with celery_worker(env, log_path, name="ui", concurrency=2):
            yield log_path


@pytest.fixture(scope="package")
def ui_token(ui_settings: Settings) -> Callable[..., str]:
    from server.auth import service as auth
    from server.db import make_engine, session_scope
    from tests.conftest import TEST_ACTOR

    engine = make_engine(ui_settings.effective_database_url)

    def make(role: Role, name: str | None = None) -> str:
        with session_scope(engine) as session:
            _t, raw = auth.create_token(session, name=name or f"ui-{role.value}-{uuid.uuid4().hex[:6]}", role=role,
                                        actor=TEST_ACTOR)
        return raw

    yield make
    engine.dispose()


@dataclass
class Browser:
    browser: object
    shots: Path

    def page(self, base_url: str):  # a fresh context: its own cookies
        context = self.browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
        context.set_default_timeout(15_000)
        return context.new_page()


@pytest.fixture(scope="package")
def browser(shots: Path) -> Iterator[Browser]:
    problem = browser_problem()
    if problem:
        print(f"\nbrowser tests skipped: {problem}")
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield Browser(chromium, shots)
        finally:
            chromium.close()


def sign_in(page, token: str) -> None:
    page.goto("/ui/sign-in")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/ui")


def shot(page, shots: Path, name: str) -> None:
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


__all__ = ["Browser", "shot", "sign_in", "subprocess"]
