"""Real servers of a test's own, on their own ports: a PostgreSQL cluster, an append-only redis-server, and a
runbookd api, worker and beat pointed at them, each a process the test can stop, kill and start again."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from server.auth import service as auth
from server.auth.models import Actor, Role, Source
from server.db import make_engine, session_scope
from server.migrate import upgrade
from server.stack import die_with_parent, free_port, redis_server_binary
from tests.support import reachable_redis, stop_process, wait_for

RUNBOOKS = Path(__file__).parent / "runbooks"
FINISHED = {"succeeded", "failed", "cancelled", "timed_out"}


def figures(scenario: str, **values: object) -> str:
    """The line each scenario prints for the issue's table (`pytest -s` shows it)."""
    line = f"FIGURES {scenario} " + " ".join(f"{k}={v}" for k, v in values.items())
    print("\n" + line, flush=True)
    return line


# -- PostgreSQL: a private cluster ----------------------------------------------------------------------------
def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class PgCluster:
    """initdb + pg_ctl on a free port, run as the `postgres` user when we are root (initdb refuses root).
    Listens on loopback, or on the addresses given, with trust auth for them and the networks in `trust`."""

    def __init__(self, listen: tuple[str, ...] = ("127.0.0.1",), trust: tuple[str, ...] = ()) -> None:
        self.listen, self.trust = listen, trust
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            pytest.skip("no initdb/pg_ctl: `apt-get install -y postgresql` (tests/debian-packages.txt)")
        self.initdb, self.pg_ctl = initdb, pg_ctl
        self.port = free_port()
        # Not under pytest's tmp_path: that is private to root, and the cluster's owner must reach its directory.
        self.root = Path(tempfile.mkdtemp(prefix="rbd-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                pytest.skip("running as root without runuser: initdb refuses root")
            self._as_user = [runuser, "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres", "postgres")
        self.url_admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._as_user, *argv], capture_output=True, text=True, timeout=timeout,
                              preexec_fn=die_with_parent)

    def init(self) -> None:
        done = self._run(self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                         "-E", "UTF8", timeout=120)
        assert done.returncode == 0, done.stderr
        if self.trust:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.writelines(f"host all all {network} trust\n" for network in self.trust)

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses='{','.join(self.listen)}' -c fsync=off "
                   "-c max_connections=200 -c shared_buffers=32MB")
        done = self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60",
                         "start")
        assert done.returncode == 0, done.stderr + self.log.read_text()

    def stop(self, mode: str = "fast") -> None:
        done = self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        assert done.returncode == 0, done.stderr

    def answers(self) -> bool:
        try:
            with psycopg.connect(self.url_admin, connect_timeout=1):
                return True
        except psycopg.Error:
            return False

    def create_database(self) -> str:
        name = f"rbd_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.url_admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def pg_cluster(listen: tuple[str, ...] = ("127.0.0.1",), trust: tuple[str, ...] = ()) -> Iterator[PgCluster]:
    cluster = PgCluster(listen, trust)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


# -- Redis: a private, append-only redis-server ------------------------------------------------------------------
class PrivateRedis:
    """A redis-server on a free port, on loopback or the addresses given; append-only unless told not to."""

    def __init__(self, where: Path, listen: tuple[str, ...] = ("127.0.0.1",), appendonly: bool = True) -> None:
        self.listen, self.appendonly = listen, appendonly
        self.dir = where
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.dir / "redis.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [str(redis_server_binary()), "--port", str(self.port), "--bind", *self.listen,
                 "--protected-mode", "no", "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                 "--appendfsync", "everysec", "--dir", str(self.dir)],
                stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        wait_for(lambda: reachable_redis(self.url) is None, 15, "the private redis-server to answer")

    def stop(self) -> None:
        """SIGTERM: redis-server flushes its append-only file and exits."""
        if self.proc is not None:
            stop_process(self.proc, grace=15)
            self.proc = None


@contextmanager
def private_redis(where: Path, listen: tuple[str, ...] = ("127.0.0.1",), appendonly: bool = True
                  ) -> Iterator[PrivateRedis]:
    server = PrivateRedis(where, listen, appendonly)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# -- runbookd's processes ---------------------------------------------------------------------------------------
class Stack:
    """api, worker and beat as subprocesses, each restartable; every one stopped by close()."""

    def __init__(self, home: Path, database_url: str, redis_url: str, **env: str) -> None:
        self.home = home
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.queue = f"rbrestart-{uuid.uuid4().hex[:6]}"
        self.prefix = f"rbdrestart-{uuid.uuid4().hex[:8]}:"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOKD_")
                    or k.startswith("RUNBOOKD_TEST_")}
        self.env.update(
            RUNBOOKD_HOME=str(home), RUNBOOKD_DATABASE_URL=database_url, RUNBOOKD_REDIS_URL=redis_url,
            RUNBOOKD_REDIS_PREFIX=self.prefix, RUNBOOKD_DEFAULT_QUEUE=self.queue, RUNBOOKD_PORT=str(self.port),
            RUNBOOKD_RUNBOOKS_DIR=str(RUNBOOKS), RUNBOOKD_LOG_FORMAT="json", RUNBOOKD_RUN_HEARTBEAT_INTERVAL="0.5",
            RUNBOOKD_RUN_RESEND_AFTER="10",  # a run whose api died between commit and send: re-sent soon
            RUNBOOKD_FLAG_CACHE_CHECK_SECONDS="1", RUNBOOKD_MAX_STREAMS_PER_TOKEN="200", PYTHONUNBUFFERED="1",
        )
        self.env.update(env)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def log(self, name: str) -> Path:
        return self.home / f"{name}.log"

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with self.log(name).open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "server.cli", *argv], env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, preexec_fn=die_with_parent, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start(self, *, api: int = 1, worker: int = 4, beat: bool = True) -> None:
        """Start the api (that many processes), a worker (that concurrency) and beat at once, then wait for each:
        on a busy machine their start-ups overlap instead of adding up."""
        waits = []
        if api:
            waits.append(self._spawn_api(api))
        if worker:
            waits.append(self._spawn_worker(worker))
        if beat:
            waits.append(self._spawn_beat())
        for wait in waits:
            wait()

    def start_api(self, processes: int = 1) -> None:
        self._spawn_api(processes)()

    def start_beat(self) -> None:
        self._spawn_beat()()

    def _spawn_api(self, processes: int) -> Any:
        proc = self._spawn("api", ["api", "--processes", str(processes)])

        def wait() -> None:
            wait_for(lambda: self.ready() or proc.poll() is not None, 120, "the api to be ready", 0.2)
            assert proc.poll() is None, self.log("api").read_text()[-3000:]

        return wait

    def _spawn_worker(self, concurrency: int) -> Any:
        log = self.log("worker")
        seen = log.read_bytes().count(b" ready.") if log.exists() else 0
        proc = self._spawn("worker", ["worker", "--concurrency", str(concurrency), "--queues", self.queue,
                                      "--hostname", f"restarts-{uuid.uuid4().hex[:6]}@%h"])

        def wait() -> None:
            wait_for(lambda: log.read_bytes().count(b" ready.") > seen or proc.poll() is not None, 120,
                     "the worker to start", 0.2)
            assert proc.poll() is None, log.read_text()[-3000:]

        return wait

    def _spawn_beat(self) -> Any:
        log = self.log("beat")
        seen = log.read_bytes().count(b"beat: Starting") if log.exists() else 0
        proc = self._spawn("beat", ["beat"])

        def wait() -> None:
            wait_for(lambda: log.read_bytes().count(b"beat: Starting") > seen or proc.poll() is not None, 120,
                     "beat to start", 0.2)
            assert proc.poll() is None, log.read_text()[-3000:]

        return wait

    def kill(self, name: str) -> None:
        """SIGKILL the process and everything it started (uvicorn's or the worker's children)."""
        proc = self.procs.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(20)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def readyz(self) -> int | None:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code
        except httpx.HTTPError:
            return None

    def client(self, token: str, timeout: float = 30) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    def token(self, role: str) -> str:
        """A token of that role, made straight in the database (a CLI process would cost seconds)."""
        engine = make_engine(self.env["RUNBOOKD_DATABASE_URL"])
        try:
            with session_scope(engine) as session:
                _t, raw = auth.create_token(session, name=f"{role}-{uuid.uuid4().hex[:6]}", role=Role(role),
                                            actor=Actor(name="pytest", role=Role.admin, source=Source.cli))
        finally:
            engine.dispose()
        return raw

    def migrate(self) -> None:
        upgrade(self.env["RUNBOOKD_DATABASE_URL"])


@contextmanager
def stack(home: Path, database_url: str, redis_url: str, **env: str) -> Iterator[Stack]:
    running = Stack(home, database_url, redis_url, **env)
    try:
        running.migrate()
        yield running
    finally:
        running.close()


# -- runs and their followers -------------------------------------------------------------------------------
def get_run(client: httpx.Client, run_id: int) -> dict[str, Any] | None:
    """The run, or None while the api cannot say (a backing service is down)."""
    try:
        response = client.get(f"/api/v1/runs/{run_id}")
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def wait_all_finished(client: httpx.Client, run_ids: list[int], timeout: float) -> dict[int, dict[str, Any]]:
    done: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(done) < len(run_ids):
        for run_id in run_ids:
            if run_id not in done:
                run = get_run(client, run_id)
                if run is not None and run["status"] in FINISHED:
                    done[run_id] = run
        time.sleep(0.3)
    return done


class Follower(threading.Thread):
    """An SSE client of one run that reconnects with Last-Event-ID whenever its stream ends early or breaks,
    as an EventSource does; it keeps every event (id, type) it was sent, for counting."""

    def __init__(self, base_url: str, token: str, run_id: int, deadline_s: float = 150) -> None:
        super().__init__(daemon=True, name=f"follower-{run_id}")
        self.base_url, self.token, self.run_id = base_url, token, run_id
        self.events: list[tuple[int, str]] = []
        self.connections = 0
        self.finished = False
        self._deadline = time.monotonic() + deadline_s
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self.finished and not self._halt.is_set() and time.monotonic() < self._deadline:
            headers = {"Authorization": f"Bearer {self.token}"}
            if self.events:
                headers["Last-Event-ID"] = str(self.events[-1][0])
            try:
                with httpx.stream("GET", f"{self.base_url}/api/v1/runs/{self.run_id}/events", headers=headers,
                                  timeout=httpx.Timeout(10, read=20)) as response:
                    if response.status_code != 200:
                        time.sleep(0.5)
                        continue
                    self.connections += 1
                    event_id: int | None = None
                    for line in response.iter_lines():
                        if self._halt.is_set():
                            return
                        if line.startswith("id:"):
                            event_id = int(line.split(":", 1)[1])
                        elif line.startswith("data:") and event_id is not None:
                            kind = json.loads(line.split(":", 1)[1])["type"]
                            self.events.append((event_id, kind))
                            event_id = None
                            if kind == "run.finished":
                                self.finished = True
                                return
                        elif line == "":
                            event_id = None
            except (httpx.HTTPError, ValueError):
                time.sleep(0.5)


def run_event_ids(database_url: str, run_id: int) -> list[tuple[int, str]]:
    """The stored events of a run, straight from the database (what a follower must have seen, in order)."""
    url = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id, type FROM run_events WHERE run_id = %s ORDER BY id", (run_id,)).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]
