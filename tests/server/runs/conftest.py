"""A live api serving this directory's test runbooks, and a real worker process that executes runs."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from server.app import create_app
from server.auth.models import Role
from tests.conftest import subprocess_env
from tests.support import celery_worker, http, serve

RUNBOOKS = Path(__file__).parent / "runbooks"
OTHER_QUEUE = "rbtest-other"


@pytest.fixture(scope="session")
def runs_settings(settings, tmp_path_factory):
    # A queue of our own: a worker another test module left running on the default queue must not take
    # these runs (it would have other settings), and our worker must not take theirs.
    return settings.model_copy(update={"runbooks_dir": RUNBOOKS, "run_heartbeat_interval": 0.5,
                                       "default_queue": f"rbtest-runs-{uuid.uuid4().hex[:6]}",
                                       "artifacts_dir": tmp_path_factory.mktemp("artifacts")})


@pytest.fixture(scope="session")
def runs_api(runs_settings):
    with serve(create_app(runs_settings)) as url:
        yield url


@pytest.fixture(scope="session")
def operator(runs_api, make_token):
    with http(runs_api, make_token(Role.operator)) as client:
        yield client


@pytest.fixture(scope="session")
def run_worker(runs_settings, tmp_path_factory):
    """One worker process (two pool children) on the default queue and a second queue, for hand-overs."""
    log_path = tmp_path_factory.mktemp("run-worker") / "worker.log"
    env = subprocess_env(runs_settings, RUNBOOKD_RUN_HEARTBEAT_INTERVAL="0.5",
                         RUNBOOKD_ARTIFACTS_DIR=str(runs_settings.artifacts_dir),
                         RUNBOOKD_DEFAULT_QUEUE=runs_settings.default_queue)
    with celery_worker(env, log_path, name="rb", concurrency=2, queues=f"{runs_settings.default_queue},{OTHER_QUEUE}"):
        yield log_path

