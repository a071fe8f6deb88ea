"""Real runbookd processes for the log-level tests: an api replica and a worker, each logging to a file."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from server.settings import Settings
from server.stack import die_with_parent, free_port
from tests.conftest import subprocess_env
from tests.support import wait_for


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def api_process(settings: Settings, log_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`runbookd api` as its own process on a free loopback port."""
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "server.cli", "api"], stdout=log, stderr=subprocess.STDOUT,
                                env=subprocess_env(settings, RUNBOOKD_PORT=str(port)), preexec_fn=die_with_parent)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: _healthy(url) or proc.poll() is not None, 30, "the api process to answer")
            assert proc.poll() is None, log_path.read_text()
            yield url, proc
        finally:
            proc.terminate()
            proc.wait(30)


@contextmanager
def worker_process(settings: Settings, log_path: Path, *, with_beat: bool = False,
                   own_queue: str | None = None) -> Iterator[str]:
    """`runbookd worker` (and optionally `runbookd beat`); yields the worker's Celery hostname.

    own_queue: a queue this worker alone consumes besides the default one, for tasks a test must see
    handled here rather than by another test's worker sharing the default queue.
    """
    hostname = f"ll-{uuid.uuid4().hex[:6]}@test"
    queues = settings.default_queue + (f",{own_queue}" if own_queue else "")
    procs: list[subprocess.Popen[bytes]] = []
    with log_path.open("wb") as log:
        try:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "server.cli", "worker", "--concurrency", "1", "--hostname", hostname,
                 "--queues", queues],
                env=subprocess_env(settings), stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent))
            if with_beat:
                procs.append(subprocess.Popen([sys.executable, "-m", "server.cli", "beat"],
                                              env=subprocess_env(settings), stdout=log, stderr=subprocess.STDOUT,
                                              preexec_fn=die_with_parent))
            wait_for(lambda: b" ready." in log_path.read_bytes() or any(p.poll() is not None for p in procs), 60,
                     "the worker to start")
            assert all(p.poll() is None for p in procs), log_path.read_text()
            yield hostname
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
