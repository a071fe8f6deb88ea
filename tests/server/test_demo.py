"""`runbookd demo` starts the embedded stack and the faulty service, creates the fault flags, says what to try,
restarts the service after the crash fault, and stops everything on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import psutil
import pytest

from server.stack import free_port
from tests.support import wait_for


@pytest.mark.slow
def test_demo_runs_the_service_and_survives_its_crash(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOKD_")}
    env.update(RUNBOOKD_HOME=str(tmp_path / "home"), RUNBOOKD_PORT=str(free_port()), PYTHONUNBUFFERED="1")
    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        demo = subprocess.Popen([sys.executable, "-m", "server.cli", "demo"], env=env, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: b"Press Ctrl-C" in out.read_bytes() or demo.poll() is not None, 90, "the demo to be ready")
        text = out.read_text()
        assert demo.poll() is None, text
        api = re.search(r"runbookd at (http://\S+),", text).group(1)
        service = re.search(r"faulty-service at (http://\S+)", text).group(1)
        token = re.search(r"RUNBOOKD_TOKEN=(rbd_\S+)", text).group(1)
        assert "runbookd run error-spike" in text and "faulty-crash" in text
        first_pid = httpx.get(f"{service}/healthz", timeout=5).json()["pid"]
        with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
            flags = {f["key"] for f in client.get("/api/v1/flags").json()}
            assert {"faulty-slow", "faulty-errors", "faulty-leak", "faulty-cpu", "faulty-crash"} <= flags
            assert client.patch("/api/v1/flags/faulty-crash", json={
                "environments": {"production": {"enabled": True}}, "reason": "test"}).status_code == 200

        def crashed() -> bool:  # the service reads its fault flags every 0.5 s: the first checkouts may succeed
            try:
                httpx.post(f"{service}/api/checkout", json={}, timeout=10)
            except httpx.HTTPError:
                return True
            return False

        wait_for(crashed, 30, "the checkout to crash the service")

        def restarted() -> bool:
            try:
                return httpx.get(f"{service}/healthz", timeout=1).json()["pid"] != first_pid
            except httpx.HTTPError:
                return False

        wait_for(restarted, 30, "the demo to restart the crashed service")
        assert "was killed by SIGSEGV" in out.read_text()
        children = psutil.Process(demo.pid).children(recursive=True)
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(40)
    assert demo.returncode == 0, out.read_text()
    psutil.wait_procs(children, timeout=10)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
