"""LogLevelAgent in a real separate process: its log output turns verbose when an override is made, and
turns back when the override ends or when the server has been gone longer than the grace period."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from server.auth.models import Role
from tests.server.loglevels.processes import api_process
from tests.support import REPO, http, wait_for

SCRIPT = REPO / "tests" / "server" / "agent_script.py"


class Output:
    """Lines a child process writes, collected by a thread so the test can wait on them."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def join(self) -> None:
        self._thread.join(10)

    def index_of(self, needle: str, start: int = 0) -> int | None:
        return next((i for i, line in enumerate(self.lines[start:], start) if needle in line), None)

    def count(self, prefix: str, start: int = 0) -> int:
        return sum(1 for line in self.lines[start:] if line.startswith(prefix))


@contextmanager
def agent_process(base_url: str, service: str, token: str, grace: float, mode: str) -> Iterator[Output]:
    proc = subprocess.Popen([sys.executable, str(SCRIPT), base_url, service, token, str(grace), mode], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = Output(proc)
    try:
        wait_for(lambda: output.count("INFO app.db tick") >= 3 or proc.poll() is not None, 20,
                 "the service to start logging")
        assert proc.poll() is None, "\n".join(output.lines)
        yield output
    finally:
        proc.terminate()
        proc.wait(10)
        output.join()
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.parametrize("mode", ["poll", "stream"])
def test_debug_lines_appear_while_the_override_lasts_and_stop_after(base_url, make_token, mode):
    service = f"svc-{uuid.uuid4().hex[:8]}"
    with agent_process(base_url, service, make_token(Role.client), grace=30, mode=mode) as out:
        ticks = out.count("INFO app.db tick")
        wait_for(lambda: out.count("INFO app.db tick") >= ticks + 5, 10, "more INFO lines")
        assert out.count("DEBUG app.db tick") == 0  # the service's own level is INFO
        with http(base_url, make_token(Role.operator)) as client:
            created = client.post("/api/v1/loglevels", json={"service": service, "logger": "app.db",
                                                             "level": "DEBUG", "for": "2s", "reason": "test"})
        assert created.status_code == 201, created.text
        wait_for(lambda: out.count("DEBUG app.db tick") > 0, 10, "DEBUG lines to appear")
        wait_for(lambda: out.index_of("restored to NOTSET") is not None, 10, "the agent to restore the level")
        restored = out.index_of("restored to NOTSET")
        wait_for(lambda: out.count("INFO app.db tick", restored) >= 10, 10, "more INFO lines")
        assert out.count("DEBUG app.db tick", restored) == 0, "\n".join(out.lines[restored:])


@pytest.mark.parametrize("mode", ["poll", "stream"])
def test_levels_are_restored_when_the_server_is_gone_longer_than_the_grace(settings, make_token, tmp_path, mode):
    service = f"svc-{uuid.uuid4().hex[:8]}"
    with api_process(settings, tmp_path / "api.log") as (url, api):
        with agent_process(url, service, make_token(Role.client), grace=1.5, mode=mode) as out:
            with http(url, make_token(Role.operator)) as client:
                client.post("/api/v1/loglevels", json={"service": service, "logger": "app.db", "level": "DEBUG",
                                                       "for": "10m"})
            wait_for(lambda: out.count("DEBUG app.db tick") > 0, 10, "DEBUG lines to appear")
            api.terminate()
            api.wait(20)
            wait_for(lambda: out.index_of("runbookd unreachable") is not None, 10, "the agent to notice")
            unreachable = out.index_of("runbookd unreachable")
            wait_for(lambda: out.index_of("restored to NOTSET", unreachable) is not None, 10,
                     "the agent to restore the level after the grace period")
            restored = out.index_of("restored to NOTSET", unreachable)
            wait_for(lambda: out.count("INFO app.db tick", restored) >= 10, 10, "more INFO lines")
            assert out.count("DEBUG app.db tick", restored) == 0
