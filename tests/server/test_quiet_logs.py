"""Quiet logs: a real worker and beat at INFO write nothing for the once-a-second sweeps that find nothing,
and still say so at INFO when a sweep did something (a temporary flag change reverting, in beat's own sweep)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest

from server.auth.models import Role
from server.dispatch_queue import CHAT_FOLLOWUPS_TASK, TRIGGER_SCHEDULES_TASK
from tests.conftest import subprocess_env
from tests.server.flags.conftest import flag_body, new_key
from tests.support import http, stop_process, wait_for

pytestmark = pytest.mark.slow


def test_idle_sweeps_are_quiet_at_info_and_a_sweep_that_acts_is_not(settings, base_url, make_token, tmp_path):
    operator_token = make_token(Role.operator)
    env = subprocess_env(settings, RUNBOOKD_LOG_LEVEL="INFO", RUNBOOKD_LOG_FORMAT="text",
                         RUNBOOKD_DEFAULT_QUEUE=f"quiet-{uuid.uuid4().hex[:8]}")
    logs = {name: tmp_path / f"{name}.log" for name in ("worker", "beat")}
    procs = []
    for name, args in (("worker", ["worker", "--concurrency", "1", "--hostname", f"quiet-{uuid.uuid4().hex[:6]}@%h"]),
                       ("beat", ["beat"])):
        with logs[name].open("wb") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "server.cli", *args], env=env, stdout=out,
                                          stderr=subprocess.STDOUT))
    try:
        wait_for(lambda: b" ready." in logs["worker"].read_bytes(), 60, "the worker to start")
        time.sleep(5)  # about five rounds of each once-a-second sweep
        idle = logs["worker"].read_text() + logs["beat"].read_text()
        # (the start-up banner lists every task once; that is not a log line about a sweep)
        about = [line for line in idle.splitlines() if any(f"{task}[" in line or f"({task})" in line
                                                           for task in (CHAT_FOLLOWUPS_TASK, TRIGGER_SCHEDULES_TASK))
                 or "expiry sweep" in line or ".expire" in line]
        assert about == [], about[:5]

        key = new_key("quiet")
        with http(base_url, operator_token) as api:
            created = api.post("/api/v1/flags", json=flag_body(key, enabled=True, default_variant="on"))
            assert created.status_code == 201
            killed = api.patch(f"/api/v1/flags/{key}", json={"environments": {"production": {"enabled": False}},
                                                             "for": "1s", "reason": "quiet-logs test"})
            assert killed.status_code == 200, killed.text
            wait_for(lambda: api.get(f"/api/v1/flags/{key}").json()["version"] == 3, 15, "the kill to revert")
        # Beat reverted it, in its own thread (no task for a worker), and says so at INFO.
        wait_for(lambda: "expiry sweep applied" in logs["beat"].read_text(), 5, "the acting sweep's line")
        acted = [line for line in logs["beat"].read_text().splitlines() if "expiry sweep applied" in line]
        assert any(" INFO " in line for line in acted), acted
        assert "temporary flag change expired" in logs["beat"].read_text()
    finally:
        for proc in procs:
            stop_process(proc)
