"""`make up` as a user runs it: ready, tokens, Ctrl-C stops everything, data survives a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from server.stack import free_port
from tests.support import REPO, cli, wait_for

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


class Up:
    def __init__(self, home: Path, port: int) -> None:
        self.home, self.port = home, port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOKD_")}
        self.env.update(RUNBOOKD_HOME=str(home), RUNBOOKD_PORT=str(port))
        self.output = home.parent / f"up-{port}.out"

    @contextmanager
    def running(self) -> Iterator[subprocess.Popen[bytes]]:
        with self.output.open("wb") as out:
            proc = subprocess.Popen(["make", "--no-print-directory", "up"], cwd=REPO, env=self.env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: self.ready() or proc.poll() is not None, 180, "make up to be ready", 0.2)
            assert proc.poll() is None, self.output.read_text()
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)

    def ready(self) -> bool:
        # `up` prints the URL and first token only after its own /readyz check passes, so a test
        # that polled /readyz alone could read the output before those lines were written.
        if "Press Ctrl-C to stop." not in self.output.read_text():
            return False
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def pids(self) -> dict[str, int]:
        state = json.loads((self.home / "stack.json").read_text())
        return {**state["children"], "up": state["pid"]}

    def first_token(self) -> str | None:
        """The token from the ready-to-paste `export RUNBOOKD_URL=... RUNBOOKD_TOKEN=rbd_...` line."""
        lines = [ln.strip() for ln in self.output.read_text().splitlines()
                 if ln.strip().startswith(f"export RUNBOOKD_URL={self.url} RUNBOOKD_TOKEN=rbd_")]
        return lines[0].rsplit("RUNBOOKD_TOKEN=", 1)[1] if lines else None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "server.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=60)


def test_make_up_serves_stops_cleanly_and_keeps_its_data(tmp_path):
    up = Up(tmp_path / "home", free_port())
    started = time.monotonic()
    with up.running() as proc:
        cold = time.monotonic() - started
        admin = up.first_token()
        assert admin, up.output.read_text()
        pids = up.pids()
        assert set(pids) == {"api", "worker", "beat", "redis", "up"}
        # Commands against the running stack run in-process (tests.support.cli): `up` itself is the process here.
        created = cli(["token", "create", "--name", "oncall", "--role", "operator"],
                      {"RUNBOOKD_HOME": str(up.home), "RUNBOOKD_PORT": str(up.port)})
        assert created.returncode == 0, created.stderr
        oncall = created.stdout.strip()
        for token in (admin, oncall):
            response = httpx.get(f"{up.url}/api/v1/audit", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200, response.text
        # The CLI finds the server from RUNBOOKD_PORT alone (no RUNBOOKD_URL), as `make up` was started.
        listed = cli(["runs", "list"], {"RUNBOOKD_HOME": str(up.home), "RUNBOOKD_PORT": str(up.port),
                                        "RUNBOOKD_TOKEN": admin, "RUNBOOKD_CONFIG": "/nonexistent"})
        assert listed.returncode == 0, listed.stderr
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        wait_for(lambda: not any(_alive(pid) for pid in pids.values()), 30, "every child and redis to exit")
    assert "stopped." in up.output.read_text()
    assert not (up.home / "stack.json").exists()
    assert list((up.home / "redis").glob("appendonly*")), "the private redis keeps an append-only file"

    started = time.monotonic()
    with up.running():
        warm = time.monotonic() - started
        assert up.first_token() is None, "the admin token is printed on the first start only"
        assert "For another one, in this directory:" in up.output.read_text()
        assert f"RUNBOOKD_HOME={up.home} runbookd token create" in up.output.read_text()
        response = httpx.get(f"{up.url}/api/v1/audit", headers={"Authorization": f"Bearer {oncall}"})
        assert response.status_code == 200
    print(f"\nmake up to ready: cold {cold:.1f}s, warm {warm:.1f}s")


def test_a_dying_child_stops_the_whole_stack_and_says_why(tmp_path):
    up = Up(tmp_path / "home", free_port())
    with up.running() as proc:
        pids = up.pids()
        os.kill(pids["worker"], signal.SIGKILL)
        assert proc.wait(60) != 0
        wait_for(lambda: not any(_alive(pid) for pid in pids.values()), 30, "the rest of the stack to stop")
    output = up.output.read_text()
    assert "worker was killed by SIGKILL; stopping the rest" in output


def test_second_up_on_the_same_home_is_refused(tmp_path):
    up = Up(tmp_path / "home", free_port())
    with up.running():
        again = up.cli("up")
    assert again.returncode == 1
    assert "another `runbookd up` is already running" in again.stderr
