"""The shipped runbooks against examples/faulty-service: a live api serving runbooks/, a real worker process,
the service in its own process with its faults behind flags read over OFREP, and its JSON logs on disk."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from server.app import create_app
from server.auth import service as auth
from server.auth.models import Role
from server.db import make_engine, session_scope
from server.migrate import upgrade
from server.settings import SHIPPED_RUNBOOKS_DIR, Settings
from server.stack import die_with_parent, free_port
from tests.conftest import TEST_ACTOR, subprocess_env
from tests.support import REPO, http, serve, start, stop_process, wait_for, wait_run

SERVICE_APP = REPO / "examples" / "faulty-service" / "app.py"
FAULTS = ("slow", "errors", "leak", "cpu", "crash")


@pytest.fixture(scope="package")
def e2e_settings(redis_url: str, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """SQLite only: these tests are about the runbooks, the engine's backends have their own tests. A Redis prefix
    of its own (under the session's, so its keys are removed with the rest): this stack's worker must never take
    the tasks of the other tests' stacks, which share the session's prefix and queue names."""
    home = tmp_path_factory.mktemp("e2e-home")
    url = f"sqlite:///{home / 'runbookd.sqlite3'}"
    upgrade(url)
    return Settings(home=home, database_url=url, redis_url=redis_url, redis_prefix=f"{redis_prefix}e2e:",
                    log_format="json",
                    runbooks_dir=SHIPPED_RUNBOOKS_DIR, artifacts_dir=home / "artifacts", run_heartbeat_interval=0.5)


@dataclass
class Stack:
    url: str
    operator: httpx.Client
    client_token: str
    settings: Settings


@pytest.fixture(scope="package")  # its worker stops when these tests end
def stack(e2e_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    engine = make_engine(e2e_settings.effective_database_url)
    with session_scope(engine) as session:
        _t, operator_token = auth.create_token(session, name=f"e2e-op-{uuid.uuid4().hex[:6]}", role=Role.operator,
                                               actor=TEST_ACTOR)
        _t, client_token = auth.create_token(session, name=f"e2e-svc-{uuid.uuid4().hex[:6]}", role=Role.client,
                                             actor=TEST_ACTOR)
    engine.dispose()
    log_path = tmp_path_factory.mktemp("e2e-worker") / "worker.log"
    env = subprocess_env(e2e_settings, RUNBOOKD_RUN_HEARTBEAT_INTERVAL="0.5",
                         RUNBOOKD_ARTIFACTS_DIR=str(e2e_settings.artifacts_dir),
                         RUNBOOKD_RUNBOOKS_DIR=str(SHIPPED_RUNBOOKS_DIR))
    with serve(create_app(e2e_settings)) as url, log_path.open("wb") as log:
        worker = subprocess.Popen([sys.executable, "-m", "server.cli", "worker", "--concurrency", "2",
                                   "--hostname", f"e2e-{uuid.uuid4().hex[:6]}@%h"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        try:
            wait_for(lambda: b" ready." in log_path.read_bytes() or worker.poll() is not None, 60, "worker to start")
            assert worker.poll() is None, log_path.read_text()
            with http(url, operator_token) as operator:
                for fault in FAULTS:
                    response = operator.post("/api/v1/flags", json={
                        "key": f"faulty-{fault}", "type": "boolean", "variants": {"on": True, "off": False},
                        "default_variant": "off", "description": f"faulty-service: the {fault} fault",
                        "environments": {"production": {"enabled": False,
                                                        "rules": [{"conditions": [], "variant": "on"}]}},
                        "reason": "e2e"})
                    assert response.status_code == 201, response.text
                yield Stack(url, operator, client_token, e2e_settings)
        finally:
            stop_process(worker)


@dataclass
class Service:
    url: str
    home: Path
    log: Path
    pid_file: Path
    process: subprocess.Popen[bytes]


def start_service(stack: Stack, home: Path) -> Service:
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "RUNBOOKD_URL": stack.url, "RUNBOOKD_TOKEN": stack.client_token, "FAULTY_HOME": str(home),
           "FAULTY_LOG": str(home / "faulty-service.jsonl"), "FAULTY_PID_FILE": str(home / "faulty-service.pid")}
    with (home / "stdout.txt").open("ab") as out:
        # Dies with the test process even when pytest is killed outright and no fixture finalizer runs.
        process = subprocess.Popen([sys.executable, str(SERVICE_APP), "--port", str(port)], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, (home / "stdout.txt").read_text()
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        return False

    wait_for(healthy, 30, "faulty-service to answer")
    return Service(url, home, home / "faulty-service.jsonl", home / "faulty-service.pid", process)


def stop_service(service: Service) -> None:
    stop_process(service.process, grace=10)


@pytest.fixture(scope="package")
def service(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    started = start_service(stack, tmp_path_factory.mktemp("faulty-service"))
    yield started
    stop_service(started)


def set_fault(stack: Stack, name: str, on: bool) -> None:
    response = stack.operator.patch(f"/api/v1/flags/faulty-{name}", json={
        "environments": {"production": {"enabled": on}}, "reason": f"e2e: fault {name} {'on' if on else 'off'}"})
    assert response.status_code == 200, response.text


@contextlib.contextmanager
def fault(stack: Stack, name: str) -> Iterator[None]:
    set_fault(stack, name, True)
    try:
        yield
    finally:
        flag = stack.operator.get(f"/api/v1/flags/faulty-{name}").json()
        if flag["spec"]["environments"]["production"]["enabled"]:
            set_fault(stack, name, False)


def run(stack: Stack, runbook: str, params: dict, timeout: float = 60) -> dict:
    """Start a run over the API and wait for it to finish; returns the run with its steps."""
    return wait_run(stack.operator, start(stack.operator, runbook, params)["id"], timeout=timeout)


def explain(done: dict) -> str:
    return f"{done['status']}: {done['error']}; " + "; ".join(
        f"{s['step_id']}={s['status']} {s['error'] or ''}" for s in done["steps"])
