"""The core step kinds against real things: a loopback HTTP server, real processes, a real webhook receiver."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from fastapi import FastAPI, Request

from server.auth.models import Actor
from server.runbooks import expressions
from server.runbooks.catalog import CATALOG
from server.settings import Settings
from tests.support import serve
from workers.steps.base import StepCancelled, StepContext, StepFailed, StepTimedOut, load_step_kinds


@pytest.fixture(scope="module")
def target():
    """A small service: /ok, /slow, /json, /fail, and a webhook that records what it receives."""
    app = FastAPI()
    received: list[dict[str, Any]] = []

    @app.get("/ok")
    def ok() -> dict[str, str]:
        return {"status": "ok", "version": "1.2"}

    @app.get("/slow")
    def slow() -> dict[str, str]:
        time.sleep(0.3)
        return {"status": "ok"}

    @app.get("/fail", status_code=503)
    def fail() -> dict[str, str]:
        return {"status": "down"}

    @app.post("/hook")
    async def hook(request: Request) -> dict[str, str]:
        received.append(await request.json())
        return {"ok": "yes"}

    with serve(app) as url:
        yield url, received


def ctx(deadline: float | None = None, **extra_context: Any) -> StepContext:
    lines: list[str] = []
    context = {"params": {}, "steps": {}, "run": {"id": 1}, **extra_context}
    step_ctx = StepContext(run_id=1, step_id="s", attempt=1, actor=Actor.system(), incident_id=None,
                           settings=Settings(), engine=None,  # type: ignore[arg-type]
                           deadline=deadline, emit=lines.append,
                           evaluate=lambda expr, extra=None: expressions.evaluate(expr, {**context, **(extra or {})}))
    step_ctx.lines = lines  # type: ignore[attr-defined]
    return step_ctx


def run(kind: str, inputs: dict[str, Any], context: StepContext | None = None) -> dict[str, Any]:
    implementation = load_step_kinds()[kind]()
    return implementation.run(CATALOG[kind].inputs.model_validate(inputs), context or ctx())


def test_http_request_outputs_and_expectations(target):
    url, _ = target
    out = run("http.request", {"url": f"{url}/ok", "expect": {"status": 200, "body_contains": "ok",
                                                              "json_path_equals": {"version": "1.2"}}})
    assert out["status"] == 200 and out["json"] == {"status": "ok", "version": "1.2"} and out["latency_ms"] > 0
    with pytest.raises(StepFailed) as failed:
        run("http.request", {"url": f"{url}/fail",
                             "expect": {"status": [200, 204], "json_path_equals": {"status": "up"}}})
    assert "status 503, expected 200 or 204" in failed.value.message and "'down', expected 'up'" in failed.value.message
    assert failed.value.outputs["status"] == 503  # kept for the run's record
    with pytest.raises(StepFailed, match="latency"):
        run("http.request", {"url": f"{url}/slow", "expect": {"max_latency_ms": 50}})
    with pytest.raises(StepFailed, match="ConnectError"):
        run("http.request", {"url": "http://127.0.0.1:9/"})


def test_shell_argv_env_exit_codes_and_stderr(tmp_path):
    out = run("shell", {"argv": ["sh", "-c", 'echo "$GREETING $1"; echo oops >&2', "sh", "a b; rm -rf /"],
                        "env": {"GREETING": "hi"}, "cwd": str(tmp_path)})
    assert out == {"exit_code": 0, "stdout": "hi a b; rm -rf /\n", "stderr": "oops\n"}
    with pytest.raises(StepFailed, match="exited with 3: nope"):
        run("shell", {"argv": ["sh", "-c", "echo nope >&2; exit 3"]})
    assert run("shell", {"argv": ["sh", "-c", "exit 3"], "allow_exit_codes": [3]})["exit_code"] == 3
    with pytest.raises(StepFailed, match="cannot start"):
        run("shell", {"argv": ["/no/such/program"]})


def test_shell_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    with pytest.raises(StepTimedOut):
        # The grandchild ignores TERM: only killing the group takes it down.
        run("shell", {"argv": ["sh", "-c", f"(trap '' TERM; sleep 60) & echo $! > {pidfile}; wait"],
                      "timeout": "1s"})
    assert time.monotonic() - started < 4
    pid = int(pidfile.read_text())
    time.sleep(0.2)
    assert not _alive(pid), "the grandchild that ignored TERM must be killed with its group"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            # A killed orphan may linger as a zombie until init reaps it: it is dead all the same.
            return "\nState:\tZ" not in status.read()
    except FileNotFoundError:
        return False


def test_shell_cancel_stops_within_two_seconds():
    context = ctx()
    threading.Timer(0.5, context.cancelled.set).start()
    started = time.monotonic()
    with pytest.raises(StepCancelled):
        run("shell", {"argv": ["sleep", "60"]}, context)
    assert time.monotonic() - started < 2.5


def test_wait_for_a_duration_and_until_a_probe_answers(target):
    url, _ = target
    assert run("wait", {"duration": "200ms"})["waited_s"] >= 0.2
    out = run("wait", {"until": "probe.status == 200 and probe.json.status == 'ok'", "url": f"{url}/ok",
                       "interval": "100ms", "deadline": "5s"})
    assert out["polls"] == 1
    with pytest.raises(StepFailed, match="still false after"):
        run("wait", {"until": "probe.status == 200", "url": f"{url}/fail", "interval": "100ms", "deadline": "500ms"})
    with pytest.raises(StepFailed, match="not true/false"):
        run("wait", {"until": "probe.status", "url": f"{url}/ok", "interval": "100ms", "deadline": "1s"})


def test_assert_needs_a_real_true():
    assert run("assert", {"that": "1 + 1 == 2"}) == {"value": True}
    with pytest.raises(StepFailed, match="custom"):
        run("assert", {"that": "1 > 2", "message": "custom"})
    with pytest.raises(StepFailed, match="not true/false"):
        run("assert", {"that": "'yes'"})


def test_notify_posts_slack_compatible_json(target):
    url, received = target
    assert run("notify", {"url": f"{url}/hook", "text": "run 1 failed", "channel": "#oncall"})["status"] == 200
    assert received[-1] == {"text": "run 1 failed", "channel": "#oncall"}
    with pytest.raises(StepFailed, match="webhook answered 405"):
        run("notify", {"url": f"{url}/ok", "text": "x"})


def test_log_emits_a_line():
    context = ctx()
    assert run("log", {"message": "hello"}, context) == {"message": "hello"}
    assert context.lines == ["hello"]  # type: ignore[attr-defined]
