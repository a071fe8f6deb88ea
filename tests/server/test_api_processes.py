"""`runbookd api --processes N`: several uvicorn processes share the port, and all of them stop together."""

from __future__ import annotations

import subprocess
import sys

import httpx
import psutil

from server.stack import free_port
from tests.conftest import subprocess_env
from tests.support import REPO, stop_process, wait_for


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_api_runs_in_several_processes_on_one_port(settings):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "api", "--processes", "2"], cwd=REPO,
                            env=subprocess_env(settings, RUNBOOKD_PORT=str(port)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _answers(url), 60, "the api to answer")
        servers = [child for child in psutil.Process(proc.pid).children()
                   if any(c.laddr.port == port for c in child.net_connections(kind="tcp"))
                   or "spawn" in " ".join(child.cmdline())]
        assert len(servers) == 2, [c.cmdline() for c in psutil.Process(proc.pid).children()]
        assert all(_answers(url) for _ in range(20))
    finally:
        stop_process(proc)
    wait_for(lambda: not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in servers),
             30, "every api process to exit")
