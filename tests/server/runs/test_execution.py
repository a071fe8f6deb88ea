"""Runs executed by a real worker process over real Redis and the database: the engine's promises."""

from __future__ import annotations

import time

import psutil
from sqlmodel import select

from server.audit.models import AuditEvent
from server.db import session_scope
from tests.support import start, steps, wait_for, wait_run, worker_outcomes


def test_trivial_run_succeeds_with_native_outputs(operator, run_worker):
    run = start(operator, "trio", {"who": "pytest", "n": "5"})
    assert run["status"] == "queued"
    done = wait_run(operator, run["id"])
    assert done["status"] == "succeeded", (done["error"], [(s["step_id"], s["error"]) for s in done["steps"]])
    assert [s["status"] for s in done["steps"]] == ["succeeded"] * 3
    assert done["outputs"] == {"n": 5, "greeting": "hello pytest"}  # a whole-string expression stays an int
    assert done["params"]["n"] == 5
    assert all(s["attempts"] == 1 and s["duration_s"] is not None for s in done["steps"])


def test_retry_branching_artifacts_secrets_and_strict_if(operator, run_worker, tmp_path, runs_settings):
    marker = str(tmp_path / "flaky-marker")
    done = wait_run(operator, start(operator, "flaky", {"marker": marker})["id"])
    by_id = steps(done)
    assert by_id["flaky"]["status"] == "succeeded" and by_id["flaky"]["attempts"] == 2
    assert by_id["when-42"]["status"] == "succeeded"
    assert by_id["when-not"]["status"] == "skipped"
    big = by_id["big"]["outputs"]
    assert len(big["stdout"]) == 4096 and big["artifacts"]["stdout"]["size"] == 200001
    download = operator.get(f"/api/v1/runs/{done['id']}/artifacts/{big['artifacts']['stdout']['artifact']}")
    assert download.status_code == 200 and len(download.content) == 200001
    # An if: that is not a real boolean fails loudly instead of counting as true.
    assert by_id["not-a-bool"]["status"] == "failed"
    assert "not true/false" in by_id["not-a-bool"]["error"]
    assert by_id["unreachable"]["status"] == "pending"
    assert done["status"] == "failed" and "not-a-bool" in done["error"]


def test_secret_params_are_masked_in_outputs_api_and_audit(operator, run_worker, engine):
    password = "hunter2-" + str(time.time_ns())
    run = start(operator, "secrets", {"password": password})
    assert run["params"]["password"] == "***"
    done = wait_run(operator, run["id"])
    assert done["status"] == "succeeded", (done["error"], [(s["step_id"], s["error"]) for s in done["steps"]])
    assert steps(done)["leak-attempt"]["outputs"]["stdout"].strip() == "the password is ***"
    assert steps(done)["say-it"]["outputs"]["message"] == "logged: ***"
    assert password not in str(done)
    assert "logged: ***" in run_worker.read_text() and password not in run_worker.read_text()
    with session_scope(engine) as session:
        events = session.exec(select(AuditEvent).where(AuditEvent.target_id == str(run["id"]))).all()
        assert events and password not in str([e.model_dump() for e in events])


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_step_timeout_kills_the_process_and_marks_timed_out(operator, run_worker, tmp_path):
    pid_file = tmp_path / "sleeper.pid"
    started = time.monotonic()
    done = wait_run(operator, start(operator, "timeouts", {"pid_file": str(pid_file)})["id"], timeout=20)
    assert time.monotonic() - started < 10
    sleeper = int(pid_file.read_text())
    wait_for(lambda: _gone(sleeper), 5, f"the timed-out step's process {sleeper} to be gone")
    by_id = steps(done)
    assert by_id["overrun"]["status"] == "timed_out"
    assert done["status"] == "failed"
    assert by_id["after"]["status"] == "pending"


def test_cancel_stops_a_running_shell_step_within_two_seconds(operator, run_worker):
    run = start(operator, "slow-shell", {"seconds": 60})
    wait_for(lambda: steps(operator.get(f"/api/v1/runs/{run['id']}").json())["sleeper"]["status"] == "running",
             20, "the shell step to start")
    asked = time.monotonic()
    response = operator.post(f"/api/v1/runs/{run['id']}/cancel", json={"reason": "pytest"})
    assert response.status_code == 202, response.text
    done = wait_run(operator, run["id"], timeout=10)
    assert time.monotonic() - asked < 2.5
    assert done["status"] == "cancelled", done["error"]
    assert steps(done)["sleeper"]["status"] == "cancelled"
    assert steps(done)["after"]["status"] == "cancelled"
    again = operator.post(f"/api/v1/runs/{run['id']}/cancel", json={})
    assert again.status_code == 409


def test_a_quick_steps_result_is_committed_once_the_next_step_outlives_a_poll(operator, run_worker):
    # `before` (log) is side-effect free, so its commit waits for the next save (Execution.save); the
    # slow shell step after it makes that save at its first poll, so followers never wait on it for long.
    run = start(operator, "slow-shell", {"seconds": 60})
    wait_for(lambda: steps(operator.get(f"/api/v1/runs/{run['id']}").json())["sleeper"]["status"] == "running",
             20, "the shell step to be recorded as running")
    before = steps(operator.get(f"/api/v1/runs/{run['id']}").json())["before"]
    assert before["status"] == "succeeded" and before["outputs"] == {"message": "starting"}
    assert operator.post(f"/api/v1/runs/{run['id']}/cancel", json={}).status_code == 202
    assert wait_run(operator, run["id"], timeout=10)["status"] == "cancelled"
    history = operator.get(f"/api/v1/runs/{run['id']}/events").text
    kinds = [line.removeprefix("event: ") for line in history.splitlines() if line.startswith("event: ")]
    assert kinds[:4] == ["run.queued", "run.started", "step.started", "step.finished"], kinds
    assert kinds[4] == "step.started" and kinds[-1] == "run.finished", kinds


def test_approval_parks_the_run_until_an_operator_decides(operator, run_worker, make_token, runs_api):
    from server.auth.models import Role
    from tests.support import http

    run = start(operator, "approval")
    parked = wait_run(operator, run["id"], statuses={"waiting_approval"})
    assert steps(parked)["gated"]["approval"] == "waiting"
    assert steps(parked)["first"]["status"] == "succeeded"
    with http(runs_api, make_token(Role.viewer)) as viewer:
        assert viewer.post(f"/api/v1/runs/{run['id']}/steps/gated/approve", json={}).status_code == 403
    wrong = operator.post(f"/api/v1/runs/{run['id']}/steps/first/approve", json={})
    assert wrong.status_code == 409 and "gated" in wrong.json()["error"]["message"]
    assert operator.post(f"/api/v1/runs/{run['id']}/steps/gated/approve", json={"reason": "ok"}).status_code == 202
    done = wait_run(operator, run["id"])
    assert done["status"] == "succeeded"
    assert steps(done)["gated"]["approval_by"] and steps(done)["gated"]["approval"] == "approved"
    audit = operator.get("/api/v1/audit", params={"action": "run.step.approve", "target_id": str(run["id"])})
    assert len(audit.json()["items"]) == 1


def test_rejection_fails_the_step_with_the_reason(operator, run_worker):
    run = start(operator, "approval")
    wait_run(operator, run["id"], statuses={"waiting_approval"})
    no_reason = operator.post(f"/api/v1/runs/{run['id']}/steps/gated/reject", json={})
    assert no_reason.status_code == 422
    assert operator.post(f"/api/v1/runs/{run['id']}/steps/gated/reject",
                         json={"reason": "not during the sale"}).status_code == 202
    done = wait_run(operator, run["id"])
    assert done["status"] == "failed"
    assert "not during the sale" in steps(done)["gated"]["error"]
    assert steps(done)["last"]["status"] == "pending"


def test_a_step_with_on_runs_on_that_queue_and_comes_back(operator, run_worker):
    done = wait_run(operator, start(operator, "handoff")["id"])
    assert done["status"] == "succeeded", (done["error"], [(s["step_id"], s["error"]) for s in done["steps"]])
    history = operator.get(f"/api/v1/runs/{done['id']}/events").text
    assert history.count("event: run.handed_over") == 2


def test_dry_run_renders_without_running(operator, run_worker):
    done = wait_run(operator, start(operator, "trio", {"who": "dry"}, dry_run=True)["id"])
    assert done["status"] == "succeeded"
    hello = steps(done)["hello"]
    assert hello["status"] == "skipped" and hello["outputs"]["inputs"] == {"message": "hello dry"}


def test_rerun_uses_the_stored_definition_and_params(operator, run_worker):
    first = wait_run(operator, start(operator, "trio", {"who": "again"})["id"])
    response = operator.post(f"/api/v1/runs/{first['id']}/rerun", json={"params": {"n": 7}})
    assert response.status_code == 202, response.text
    second = wait_run(operator, response.json()["id"])
    assert second["outputs"] == {"n": 7, "greeting": "hello again"}
    assert second["rerun_of"] == first["id"] and second["runbook_hash"] == first["runbook_hash"]


def test_concurrency_limit_holds_the_second_run_until_the_first_ends(operator, run_worker):
    first = start(operator, "one-at-a-time")
    wait_run(operator, first["id"], statuses={"running"})
    second = start(operator, "one-at-a-time")
    # Not a fixed sleep: the worker says it held the second run back (and will try it again), then it is queued.
    wait_for(lambda: any("already running" in o for o in worker_outcomes(run_worker, second["id"])), 10,
             "the worker to hold the second run back")
    assert operator.get(f"/api/v1/runs/{second['id']}").json()["status"] == "queued"
    done_first = wait_run(operator, first["id"])
    done_second = wait_run(operator, second["id"])
    assert done_first["status"] == done_second["status"] == "succeeded"
    assert done_second["started_at"] >= done_first["finished_at"]
