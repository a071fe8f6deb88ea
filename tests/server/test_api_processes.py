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


def _start(settings, log_path):
    """`runbookd api --processes 2` on a free port, once it answers; a port another test took between
    free_port() and the bind is tried again with a new one (several xdist sessions pick ports at once)."""
    for _attempt in range(3):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with log_path.open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "server.cli", "api", "--processes", "2"], cwd=REPO,
                                    env=subprocess_env(settings, RUNBOOKD_PORT=str(port)), stdout=log,
                                    stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: _answers(url) or proc.poll() is not None, 60, "the api to answer")
        except TimeoutError:
            stop_process(proc)
            raise AssertionError(log_path.read_text()[-4000:]) from None
        if proc.poll() is None:
            return proc, port, url
        if "already in use" not in log_path.read_text():
            raise AssertionError(f"the api exited {proc.returncode}:\n{log_path.read_text()[-4000:]}")
    raise AssertionError("no free port after three tries")


def test_api_runs_in_several_processes_on_one_port(settings, tmp_path):
    proc, port, url = _start(settings, tmp_path / "api.log")
    try:
        servers = [child for child in psutil.Process(proc.pid).children()
                   if any(c.laddr.port == port for c in child.net_connections(kind="tcp"))
                   or "spawn" in " ".join(child.cmdline())]
        assert len(servers) == 2, [c.cmdline() for c in psutil.Process(proc.pid).children()]
        assert all(_answers(url) for _ in range(20))
    finally:
        stop_process(proc)
    wait_for(lambda: not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in servers),
             30, "every api process to exit")
